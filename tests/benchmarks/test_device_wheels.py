"""benchmarks/device_wheels.py: the wheel set a device call carries follows the extras a requirement
names (prefect asks for sqlalchemy[asyncio], whose greenlet the device then lacked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import device_wheels  # noqa: E402


class FakeDist:
    def __init__(self, version: str, requires: list[str]) -> None:
        self.version, self.requires = version, requires


DISTS = {
    "app": FakeDist("1.0", ["lib[async]>=2", "in-image[fast]"]),
    "in-image": FakeDist("6.0", ["image-dep", 'speedup; extra == "fast"']),
    "speedup": FakeDist("7.0", []),
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
    assert found == {"app": "1.0", "lib": "2.0", "helper": "4.0", "core": "3.0", "speedup": "7.0"}


def test_an_image_package_brings_its_own_requirements_but_not_an_extras(fake_metadata: None) -> None:
    found = device_wheels.closure(["in-image[fast]"], image={"in-image", "image-dep"})
    assert found == {"speedup": "7.0"}
    assert device_wheels.closure(["in-image"], image={"in-image", "image-dep"}) == {}


def test_closure_without_extras_leaves_extra_requirements_out(fake_metadata: None) -> None:
    assert device_wheels.closure(["plain"], image=set()) == {"plain": "5.0", "lib": "2.0", "core": "3.0"}


def test_extra_named_after_the_plain_requirement_is_still_followed(fake_metadata: None) -> None:
    # the work list pops from its end: "plain" (lib without extras) comes first, then "app" (lib[async])
    found = device_wheels.closure(["app", "plain"], image={"in-image"})
    assert "helper" in found and "typing-only" not in found


@pytest.mark.skipif(not device_wheels.KINDS.is_file(), reason="the device notes (../.library) are not here")
def test_what_the_device_run_loads_is_in_the_image_or_the_carried_sets() -> None:
    """The check that would have caught greenlet (sqlalchemy[asyncio]) and h2 (httpx[http2]) before a
    device call did; it names greenlet once that is taken out of the carried set, so it can fail."""
    code = (
        "import sys, json; sys.path.insert(0, 'benchmarks'); import device_wheels as d\n"
        "image = d.image_packages()\n"
        "carried = set(d.closure(d.BASE, image)) | set(d.closure(d.EXPERIMENT, image))\n"
        "print(json.dumps([d.unmet(image), d.unmet(image, carried - {'greenlet'})]))"
    )
    root = Path(device_wheels.__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    complete, without_greenlet = json.loads(out.stdout.strip().splitlines()[-1])
    assert complete == {}
    assert list(without_greenlet) == ["greenlet"]
