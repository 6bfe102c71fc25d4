"""The GPU kernel cache: Triton's compiled kernels and autotuning results, and torch.compile's
(Inductor's) artifacts, kept under `paths.kernel_cache` so they outlive the process and the node.

A fresh H200 spent over 500 s compiling and autotuning before its first training step, and with
the compiled kernels kept but not the tuning results, 104-107 s (fla's autotuned kernels re-ran
their benchmarks, 8-14 s each). Everything a later process can reuse lives in one folder per GPU
model and Triton version:

    <paths.kernel_cache>/<gpu slug>-triton<version>/triton     TRITON_CACHE_DIR
    <paths.kernel_cache>/<gpu slug>-triton<version>/inductor   TORCHINDUCTOR_CACHE_DIR

e.g. data/cache/kernels/nvidia-h200-triton3.6.0. DVC tracks the folder (the `kernels` stage, which
runs `refine warmup`: the configured shapes compiled ahead of time), so `dvc pull` brings a node
everything another node of the same GPU compiled, at whatever path.

Only the `kernels` stage writes that folder. Every other process (training, evaluation, post-training,
TTT) compiles shapes the warmup does not cover (a LongBench batch, a TTT backward pass), and written
into the tracked folder those would change the stage's output under DVC: `dvc repro` re-ran the
`kernels` stage after a whole lifecycle (H200, 2026-12-04, flow run a62998b7). Those processes work
in a sibling folder, `<paths.kernel_cache>-work/<gpu>-triton<version>`, which first receives every
file of the tracked one it lacks (hard links: Triton and Inductor replace a cache file, never write
into it, so a link is never changed under the other folder). The next `kernels` run takes the work
folder's files into the tracked one the same way, so a rerun of the stage keeps what later stages
compiled.

Autotuning results (Triton 3.6, python/triton/runtime/autotuner.py `check_disk_cache`): an
autotuner created with `cache_results`, or while TRITON_CACHE_AUTOTUNING=1 (knobs.autotuning.cache,
read in Autotuner.__init__, i.e. when the decorated module is imported), writes
`<kernel>.autotune.json` into TRITON_CACHE_DIR under a key of the Triton version, the backend and
target, the kernel's source key, the autotune key's values and the candidate configs; a later
process reads it instead of benchmarking. fla 0.6.0 passes cache_results=True itself (its
FLA_CACHE_RESULTS, default on); the switch covers every other autotuned kernel. fla is imported on
first use (refine_tasks.kernels), after `activate`.

Triton's group files name a kernel's files by absolute path; `RelocatableCacheManager` (set as
TRITON_CACHE_MANAGER) finds them in the group's folder instead, so the folder can move.

This module is the one place that sets these environment variables (they are orchestration: the
command line and `run_stage` call `activate` before anything compiles). A variable the user set
is left alone; torch's own default, which torch writes into the environment on import, is not the
user's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
from triton.runtime.cache import FileCacheManager

from refine_tasks.config import PipelineConfig

TRITON_DIR = "triton"
INDUCTOR_DIR = "inductor"
MANAGER = "refine_tasks.pipeline.kernel_cache:RelocatableCacheManager"  # TRITON_CACHE_MANAGER
TRITON_CACHE_ENV, INDUCTOR_CACHE_ENV = "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR"
WORK_SUFFIX = "-work"  # <paths.kernel_cache>-work: the folder every process but the `kernels` stage writes
_OURS: dict[str, str] = {}  # the variables `activate` set, and to what: ours to move, a user's never


class RelocatableCacheManager(FileCacheManager):
    """Triton's file cache, readable wherever its folder was moved. Triton lists a compiled kernel's
    files (cubin, metadata) in a group file by absolute path, so a cache restored at another path
    (`dvc pull` in another checkout, a copy on a new node) would miss every kernel and compile
    them all again. A group's files live in the group's own folder, so they are found there by name."""

    def get_group(self, filename: str) -> dict[str, str] | None:
        grp = self.get_file(f"__grp__{filename}")
        if grp is None:
            return None
        with open(grp) as f:
            children = json.load(f).get("child_paths")
        if children is None:
            return None
        here = {name: os.path.join(self.cache_dir, os.path.basename(path)) for name, path in children.items()}
        return {name: path for name, path in here.items() if os.path.exists(path)}


@dataclass(frozen=True)
class KernelCache:
    """This machine's kernel cache: `root` (the GPU's folder), the directories in use and the GPU."""

    gpu: str
    root: Path
    triton_dir: Path
    inductor_dir: Path

    def files(self) -> int:
        """Files in the cache directories (what a compile or an autotuning run adds to)."""
        return sum(1 for d in {self.triton_dir, self.inductor_dir} for f in d.rglob("*") if f.is_file())

    def is_cold(self) -> bool:
        """True when nothing was compiled for this GPU yet: the next run compiles and autotunes."""
        return not any(f.is_file() for f in self.triton_dir.rglob("*")) if self.triton_dir.is_dir() else True

    @property
    def kept_in(self) -> Path:
        """The GPU's folder, or Triton's own directory when the user's TRITON_CACHE_DIR moved it."""
        default = self.triton_dir.resolve() == (self.root / TRITON_DIR).resolve()
        return self.root if default else self.triton_dir

    def cold_message(self) -> str:
        return (
            f"compiling GPU kernels for {self.gpu} (first run on this GPU; later runs reuse {self.kept_in})"
        )

    def busy_message(self, others: list[str]) -> str:
        """The warning when kernels are tuned while other processes use the GPU."""
        return (
            f"{len(others)} other process(es) use this GPU ({'; '.join(others)}): the autotuner times "
            f"kernels there and {self.kept_in} keeps its choices for good; compile on an idle GPU "
            "(`refine warmup`), or delete that folder to tune again"
        )


def other_gpu_processes(run=subprocess.run) -> list[str]:
    """The compute processes on this machine's GPUs other than this one (`nvidia-smi`'s
    "pid, name" lines); [] where nvidia-smi is missing or fails. Autotuning beside them times its
    candidates on a loaded GPU, and the kernel cache keeps the winners for good."""
    try:
        done = run(
            ["nvidia-smi", "--query-compute-apps=pid,process_name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if done.returncode != 0:
        return []
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return [line for line in lines if line.split(",")[0].strip() != str(os.getpid())]


def slug(name: str) -> str:
    """'NVIDIA H200' -> 'nvidia-h200': a folder name from a device name."""
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def machine_folder(gpu: str, triton: str) -> str:
    return f"{slug(gpu)}-triton{triton}"


def work_folder(tracked: Path) -> Path:
    """The folder processes other than the `kernels` stage compile into: data/cache/kernels-work."""
    return tracked.with_name(tracked.name + WORK_SUFFIX)


def kernel_cache(cfg: PipelineConfig, *, tracked: bool = False) -> KernelCache | None:
    """This machine's kernel cache, or None without a CUDA device or Triton (nothing to compile):
    the DVC-tracked folder with `tracked` (the `kernels` stage), else its work folder.

    The GPU is the current CUDA device's (every rank of a node has the same model)."""
    version = triton_version()
    if not torch.cuda.is_available() or version is None:
        return None
    gpu = torch.cuda.get_device_name()
    base = Path(cfg.paths.kernel_cache)
    root = (base if tracked else work_folder(base)) / machine_folder(gpu, version)
    triton_dir = Path(_users(TRITON_CACHE_ENV) or root / TRITON_DIR)
    inductor_dir = Path(_users(INDUCTOR_CACHE_ENV) or root / INDUCTOR_DIR)
    return KernelCache(gpu, root, triton_dir, inductor_dir)


def _users(name: str) -> str | None:
    """The variable's value when the user set it (not `activate`, not torch), else None."""
    value = os.environ.get(name)
    if value is None or _OURS.get(name) == value or _torch_default(value):
        return None
    return value


def _torch_default(value: str) -> bool:
    """Whether `value` is torch's default Inductor folder or a folder in it, which torch writes into
    the environment itself: importing torch._dynamo.package sets TORCHINDUCTOR_CACHE_DIR to
    /tmp/torchinductor_<user> (torch 2.11, `cache_dir()`), and Inductor's autotuner sets
    TRITON_CACHE_DIR to its triton/<device> folder where none is set. Taken for the user's, it kept
    the work folder empty and Inductor's files in /tmp: on an H200 (2026-12-04) a second process's
    positions, SFT and ReFINE each compiled for 140-300 s before their first step."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    default = os.path.abspath(default_cache_dir())
    value = os.path.abspath(value)
    return value == default or value.startswith(default + os.sep)


def _set(name: str, value: str) -> None:
    """Set a variable unless the user set it; ours are moved (one process runs several stages)."""
    if _users(name) is None:
        os.environ[name] = _OURS[name] = value


def link_missing(src: Path, dest: Path) -> int:
    """Hard-link into dest every file under src that dest lacks (a copy where links fail: another
    file system); Triton's unfinished writes (tmp.* folders) are left. Returns the files added."""
    if not src.is_dir():
        return 0
    added = 0
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if not path.is_file() or any(part.startswith("tmp.") for part in rel.parts):
            continue
        target = dest / rel
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except FileExistsError:  # another rank linked it first
            continue
        except OSError:
            part = target.with_name(f".{target.name}.{os.getpid()}.part")
            shutil.copy2(path, part)
            os.replace(part, target)
        added += 1
    return added


def activate(cfg: PipelineConfig, *, tracked: bool = False) -> KernelCache | None:
    """Point Triton and Inductor at this machine's kernel cache and keep autotuning results there;
    call before any kernel compiles. None (and nothing set) on a machine without a CUDA device.

    `tracked` (the `kernels` stage): the DVC-tracked folder, after taking in what the work folder has
    that it lacks. Otherwise the work folder, after taking in what the tracked one has that it lacks
    (see the module's docstring)."""
    cache = kernel_cache(cfg, tracked=tracked)
    if cache is None:
        return None
    if _users(TRITON_CACHE_ENV) is None and _users(INDUCTOR_CACHE_ENV) is None:
        base = Path(cfg.paths.kernel_cache)
        ours, other = (base, work_folder(base)) if tracked else (work_folder(base), base)
        link_missing(other / cache.root.name, ours / cache.root.name)
    _set(TRITON_CACHE_ENV, str(cache.triton_dir.resolve()))
    _set(INDUCTOR_CACHE_ENV, str(cache.inductor_dir.resolve()))
    os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
    os.environ.setdefault("TRITON_CACHE_MANAGER", MANAGER)
    return cache
