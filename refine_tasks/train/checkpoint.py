"""Training checkpoints: a Hugging Face model directory plus everything `--resume` needs.

Layout of `<out_dir>/checkpoints/step-<N>/`:
  config.json, model*.safetensors the model (AutoModelForCausalLM.from_pretrained works)
  tokenizer files                 copied from the tokenizer directory, when there is one
  trainer/optimizer.safetensors   optimizer tensors and the torch RNG states
  trainer/state.json              step, optimizer groups, scheduler, data cursor, counters,
                                  and the SHA-256 of every other file (checked on load)
(The trainer's files sit in a subfolder: model loaders read every top-level *.safetensors.)
A run of several processes (refine_tasks.train.distributed) writes, instead of
optimizer.safetensors, `trainer/dcp/`: model and optimizer state as torch.distributed.checkpoint
saved them, each rank its shards (keys are parameter names, so any world size loads it, one
process included; `load_checkpoint` reads either kind). Nothing is pickled. A checkpoint is written under a temporary name (`step-<N>.tmp-<pid>`) and
renamed into place, then `<out_dir>/checkpoints/latest` (one line: the directory name) is
replaced atomically, so a kill at any moment leaves the previous checkpoint as `latest`. A write
that fails removes its temporary folder; one that was killed leaves it for `remove_temporaries`,
which the trainer calls when it starts.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from transformers.utils import logging as hf_logging

from refine_tasks.corpus.shards import file_sha256
from refine_tasks.errors import TrainCheckpointError
from refine_tasks.models.checkpoint import LATEST
from refine_tasks.store.catalog import process_alive
from refine_tasks.store.scratch import marked_pid, remove_path

STATE_FILE = "trainer/state.json"
TENSOR_FILE = "trainer/optimizer.safetensors"
DCP_DIR = "trainer/dcp"
TMP_MARK = ".tmp-"


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state_dict -> (tensors by 'state/<param>/<name>', JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{index}/{name}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(index), {})[name] = value
    return tensors, {"plain": plain, "param_groups": state["param_groups"]}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["plain"].items()}
    for key, value in tensors.items():
        if key.startswith("state/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    root: Path,
    step: int,
    model,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    trainer: dict[str, Any],
    tokenizer_dir: Path | None = None,
) -> Path:
    """Write checkpoint `step` under `root` (…/checkpoints) atomically and point `latest` at it."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = temporary_dir(root, step, os.getpid())
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        write_model(tmp, model, None, tokenizer_dir)
        tensors, optim_meta = _split_optimizer(optimizer.state_dict())
        tensors["rng/cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng/cuda"] = torch.cuda.get_rng_state()
        (tmp / TENSOR_FILE).parent.mkdir()
        save_file(tensors, str(tmp / TENSOR_FILE))
        state = {
            "step": step,
            "optimizer": optim_meta,
            "scheduler": scheduler.state_dict(),
            "trainer": trainer,
        }
        return publish(tmp, root, step, state)
    except BaseException:  # a full disk, a Ctrl-C: the half-written model must not keep the space
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def temporary_dir(root: Path, step: int, pid: int) -> Path:
    """Where checkpoint `step` is written before `publish` renames it (`pid`: the writer's)."""
    return root / f"step-{step:07d}{TMP_MARK}{pid}"


def write_model(
    tmp: Path, model, weights: dict[str, torch.Tensor] | None, tokenizer_dir: Path | None
) -> None:
    """The Hugging Face directory: config, `weights` (None: the model's own) as safetensors, tokenizer."""
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a shard-writing bar per checkpoint would bury the trainer's own
    try:
        model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    if tokenizer_dir is not None and Path(tokenizer_dir).is_dir():
        for f in Path(tokenizer_dir).iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)


def publish(tmp: Path, root: Path, step: int, state: dict[str, Any]) -> Path:
    """Record every file's SHA-256 with `state` in trainer/state.json, fsync, rename `tmp` into
    place and point `latest` at it. On failure `tmp` is left to the caller to remove."""
    name = f"step-{step:07d}"
    final = root / name
    latest_tmp = root / f"{LATEST}{TMP_MARK}{os.getpid()}"
    files = {f.relative_to(tmp).as_posix(): file_sha256(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
    (tmp / STATE_FILE).parent.mkdir(exist_ok=True)
    (tmp / STATE_FILE).write_text(json.dumps({**state, "files": files}, indent=1))
    _fsync_dir_files(tmp)
    try:
        if final.exists():  # a rerun of the same step after a resume: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        latest_tmp.write_text(name + "\n")
        os.replace(latest_tmp, root / LATEST)
    except BaseException:
        latest_tmp.unlink(missing_ok=True)
        raise
    return final


def remove_temporaries(root: Path) -> int:
    """Delete what interrupted writes left in `root` (…/checkpoints): `step-N.tmp-PID` folders and
    `latest.tmp-PID` files of processes that no longer run. Such a folder holds a whole model, so
    on a full disk it kept the disk full. Returns how many were removed."""
    pids = {path: marked_pid(path, TMP_MARK) for path in root.glob(f"*{TMP_MARK}*")} if root.is_dir() else {}
    stale = [path for path, pid in pids.items() if pid is not None and not process_alive(pid)]
    for path in stale:
        remove_path(path)
    return len(stale)


def _fsync_dir_files(directory: Path) -> None:
    for f in directory.rglob("*"):
        if f.is_file():
            with f.open("rb") as handle:
                os.fsync(handle.fileno())


def load_checkpoint(
    path: Path,
    model,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG from `path`; returns {'step', 'trainer'}.

    Every file is checked against the SHA-256 recorded when it was written first.
    """
    advice = (
        f"delete {path} and point {path.parent / LATEST} at an earlier checkpoint, or train without --resume"
    )
    try:
        state = json.loads((path / STATE_FILE).read_text())
        files = state["files"]
    except (OSError, ValueError, KeyError) as e:
        raise TrainCheckpointError(
            f"checkpoint {path} is corrupt: {STATE_FILE} unreadable ({e}); {advice}"
        ) from None
    for name, digest in files.items():
        f = path / name
        if not f.is_file() or file_sha256(f) != digest:
            problem = "missing" if not f.is_file() else "does not match its recorded SHA-256"
            raise TrainCheckpointError(f"checkpoint {path} is corrupt: {name} {problem}; {advice}")
    if (path / DCP_DIR).is_dir():
        _load_sharded(path, model, optimizer, advice)
        scheduler.load_state_dict(state["scheduler"])
        return {"step": state["step"], "trainer": state["trainer"]}
    try:
        device = str(next(model.parameters()).device)
        weights: dict[str, torch.Tensor] = {}
        for shard in sorted(path.glob("model*.safetensors")):  # one file, or save_pretrained's shards
            weights.update(load_file(str(shard), device=device))
        tensors = load_file(str(path / TENSOR_FILE))
        model.load_state_dict(weights, strict=True)
    except (SafetensorError, RuntimeError, OSError) as e:
        raise TrainCheckpointError(f"checkpoint {path} cannot be loaded: {e}; {advice}") from None
    optimizer.load_state_dict(_join_optimizer(tensors, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng/cpu"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])
    return {"step": state["step"], "trainer": state["trainer"]}


def sharded_state(model, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """{'model', 'optim'} keyed by parameter names, as torch.distributed.checkpoint saves and loads
    them (shards of DTensors under FSDP2, whole tensors otherwise)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optim": optim_state}


def _load_sharded(path: Path, model, optimizer: torch.optim.Optimizer, advice: str) -> None:
    """Whole tensors into this process's unsharded `model` and `optimizer`, read without any
    collective (no_dist): each process of any world size reads what it needs on its own."""
    state = sharded_state(model, optimizer)
    try:
        dcp.load(state, checkpoint_id=str(path / DCP_DIR), no_dist=True)
    except (CheckpointException, RuntimeError, OSError, ValueError) as e:
        raise TrainCheckpointError(f"checkpoint {path} cannot be loaded: {e}; {advice}") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
