"""Training processes: one (the default), or `torchrun` with N processes per node.

A training stage (refine_tasks.lifecycle) trains in its own process when N = 1. With N > 1
(lifecycle.nproc_per_node, or REFINE_NPROC_PER_NODE set by the GPU work pool's job template) it
starts `torchrun --standalone --nproc_per_node N -m refine_tasks.launch STAGE PARAMS`, and each
of those processes trains with `DistributedMidTrainer`: the same starting weights everywhere
(the model is built from the same seed), its own shuffle of the data (seed + rank), gradients
averaged across processes after every micro-batch (gloo on CPU, NCCL on GPUs), and rank 0 alone
writing the run directory and the catalog (the others write to a scratch directory).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from refine_tasks.config import PipelineConfig, load_config
from refine_tasks.position_cache import weights_fingerprint
from refine_tasks.train import MidTrainer, TrainResult

NPROC_ENV = "REFINE_NPROC_PER_NODE"


class LaunchError(RuntimeError):
    """torchrun failed; the message names the stage and the exit status."""


def nproc_per_node(cfg: PipelineConfig) -> int:
    """Training processes per node: REFINE_NPROC_PER_NODE (a work pool's job setting) wins."""
    return int(os.environ.get(NPROC_ENV) or cfg.lifecycle.nproc_per_node)


def in_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def torchrun_command(stage: str, params: Path, nproc: int) -> list[str]:
    """The command line of a training stage under torchrun on one node."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "refine_tasks.launch",
        stage,
        str(params),
    ]


def launch_training(stage: str, cfg: PipelineConfig, nproc: int) -> None:
    """Run lifecycle stage `stage` (a training stage) under torchrun with `nproc` processes."""
    with tempfile.TemporaryDirectory(prefix="refine-launch-") as tmp:
        params = Path(tmp) / "params.yaml"  # the exact configuration, overrides included
        params.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        env = {**os.environ, NPROC_ENV: str(nproc)}
        status = subprocess.run(torchrun_command(stage, params, nproc), env=env).returncode
    if status != 0:
        raise LaunchError(f"{stage}: torchrun with {nproc} processes exited with status {status}")


class DistributedMidTrainer(MidTrainer):
    """MidTrainer inside a torchrun process group: gradients and the finite flag are averaged (and
    agreed) across ranks after every micro-batch, so every rank takes the same optimizer step."""

    def __init__(self, cfg: PipelineConfig, rank: int, world: int) -> None:
        super().__init__(cfg, resume=False)
        from refine_tasks.data_loader import LongDocumentLoader

        self.world = world
        t = cfg.train
        self.loader = LongDocumentLoader(
            cfg.paths.corpus_dir, t.seq_len, t.batch_size, t.packing, cfg.seed + rank
        )

    def micro_step(self, step: int, micro: int):
        import torch.distributed as dist

        stats, entropy, hits = super().micro_step(step, micro)
        for p in self.model.parameters():
            if p.requires_grad:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= self.world
        finite = torch.tensor([1.0 if stats.finite else 0.0], device=p.grad.device)
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if stats.finite and not finite.item():  # another rank's loss was not finite: all skip the step
            stats = dataclasses.replace(stats, loss=float("nan"))
        return stats, entropy, hits


def train_here(cfg: PipelineConfig, on_step: Callable[[dict], None] | None) -> TrainResult | None:
    """Train in this process: plainly, or as one rank of torchrun (None on ranks other than 0)."""
    if not in_torchrun():
        return MidTrainer(cfg, resume=False).run(on_step)
    import torch.distributed as dist

    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    cuda = torch.cuda.is_available() and cfg.train.device != "cpu"
    dist.init_process_group("nccl" if cuda else "gloo")
    scratch = Path(tempfile.mkdtemp(prefix=f"refine-rank{rank}-")) if rank > 0 else None
    data = cfg.model_dump()
    if cuda:
        torch.cuda.set_device(local)
        data["train"]["device"] = f"cuda:{local}"
    if scratch is not None:
        data["train"]["out_dir"] = scratch / "run"
        data["paths"]["catalog"] = scratch / "catalog.duckdb"
    try:
        trainer = DistributedMidTrainer(PipelineConfig.model_validate(data), rank, world)
        result = trainer.run(on_step if rank == 0 else None)
        weights = weights_fingerprint(trainer.model)
        print(f"rank {rank}: final weights {weights}", file=sys.stderr, flush=True)
    finally:
        dist.destroy_process_group()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return result if rank == 0 else None


if __name__ == "__main__":  # one torchrun process: python -m refine_tasks.launch STAGE PARAMS
    from refine_tasks.lifecycle import train_stage

    train_stage(sys.argv[1], load_config(sys.argv[2]))
