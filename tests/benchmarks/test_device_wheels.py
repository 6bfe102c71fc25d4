"""benchmarks/device_wheels.py: the wheel set a device call carries follows the extras a requirement
names (prefect asks for sqlalchemy[asyncio], whose greenlet the device then lacked)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import device_wheels  # noqa: E402


class FakeDist:
    def __init__(self, version: str, requires: list[str]) -> None:
        self.version, self.requires = version, requires


DISTS = {
    "app": FakeDist("1.0", ["lib[async]>=2", "in-image"]),
    "lib": FakeDist("2.0", ['helper; extra == "async"', 'typing-only; extra == "mypy"', "core"]),
    "core": FakeDist("3.0", []),
    "helper": FakeDist("4.0", ['never; sys_platform == "win32"']),
    "plain": FakeDist("5.0", ["lib"]),
}


@pytest.fixture
def fake_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    def distribution(name: str) -> FakeDist:
        try:
            return DISTS[device_wheels.norm(name)]
        except KeyError:
            raise device_wheels.md.PackageNotFoundError(name) from None

    monkeypatch.setattr(device_wheels.md, "distribution", distribution)


def test_closure_follows_named_extras_only(fake_metadata: None) -> None:
    found = device_wheels.closure(["app"], image={"in-image"})
    assert found == {"app": "1.0", "lib": "2.0", "helper": "4.0", "core": "3.0"}


def test_closure_without_extras_leaves_extra_requirements_out(fake_metadata: None) -> None:
    assert device_wheels.closure(["plain"], image=set()) == {"plain": "5.0", "lib": "2.0", "core": "3.0"}


def test_extra_named_after_the_plain_requirement_is_still_followed(fake_metadata: None) -> None:
    # the work list pops from its end: "plain" (lib without extras) comes first, then "app" (lib[async])
    found = device_wheels.closure(["app", "plain"], image={"in-image"})
    assert "helper" in found and "typing-only" not in found
