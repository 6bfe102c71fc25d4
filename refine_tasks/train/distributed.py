"""One rank of data-parallel training under torchrun (refine_tasks.pipeline.launch starts them).

Each process trains with `DistributedMidTrainer`: the same starting weights everywhere (the
model is built from the same seed), its own shuffle of the data (seed + rank), gradients
averaged across processes after every micro-batch (gloo on CPU, NCCL on GPUs), and rank 0 alone
writing the run directory and the catalog (the others write to a scratch directory).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from refine_tasks.config import PipelineConfig
from refine_tasks.corpus.loader import LongDocumentLoader
from refine_tasks.store.position_cache import weights_fingerprint
from refine_tasks.train.trainer import MidTrainer, TrainResult


def in_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class DistributedMidTrainer(MidTrainer):
    """MidTrainer inside a torchrun process group: gradients and the finite flag are averaged (and
    agreed) across ranks after every micro-batch, so every rank takes the same optimizer step."""

    def __init__(self, cfg: PipelineConfig, rank: int, world: int) -> None:
        super().__init__(cfg, resume=False)
        if self.reference:  # its mini-batch steps call scored_backward, which no all-reduce wraps
            self.run_lock.close()
            raise ValueError(
                "refine.protocol=reference runs in one process (lifecycle.nproc_per_node: 1) for now"
            )
        self.world = world
        t = cfg.train
        self.loader = LongDocumentLoader(
            cfg.paths.corpus_dir,
            t.seq_len,
            t.batch_size,
            t.packing,
            cfg.seed + rank,
            t.val_sequences if t.val_every else 0,
            t.synthetic_docs,
        )

    def micro_step(self, step: int, micro: int):
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
