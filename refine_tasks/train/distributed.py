"""One rank of data-parallel training under torchrun (refine_tasks.pipeline.launch starts them).

`DistributedMidTrainer` is the MidTrainer with PyTorch's own engines, by `train.parallel`:
  ddp   DistributedDataParallel: the model replicated, gradients all-reduced in buckets while
        the backward pass runs.
  fsdp  FSDP2 (`fully_shard` on every block, then on the whole model): parameters, gradients
        and optimizer state sharded; a block's parameters are gathered for its forward and
        its gradients reduce-scattered in the backward pass. `train.fsdp_mixed_precision`
        gathers them in bfloat16.
Gradients are synchronised once per optimizer step: the micro-batches before the last
accumulate locally (DDP's `no_sync`, FSDP2's `set_requires_gradient_sync(False)`).

The step (refine_tasks.train.step) calls the model's own methods (`prefill`, `decode`,
`forward_branched`, `forward`), not only `forward`:
  - FSDP2 gathers parameters in forward hooks, so those methods (and each block's `step`, the
    decoding path) are registered with `register_fsdp_forward_method`.
  - DDP prepares its reducer for the backward pass in its own forward; the step's graph is
    built by the model's methods, so each synchronising micro-batch enters DDP's forward once
    first (`_SyncPoint`, a module whose forward does nothing), after which the backward pass's
    gradient hooks feed DDP's buckets as usual.
  - The fused step's CUDA-graphed continuation (refine.graph_branches) captures the addresses of
    the weights; FSDP2 frees each block's gathered parameters after its forward and gathers them
    into new memory at the next, so under fsdp the continuation runs eagerly (same numbers; see
    `GRAPHS_UNDER_FSDP`). Under ddp the weights stay in place and the graphs are kept.
  - refine.mode=naive backpropagates several losses per micro-batch; DDP's reducer takes one
    backward pass per forward, so naive runs under fsdp only.

Each rank reads its own rows of every global batch (refine_tasks.corpus.loader) and keeps its
sequences' positions, rollouts, rewards and GRPO groups; the step's metrics are averaged across
ranks (token and cache-hit counts summed). Rank 0 alone writes the run directory and the
catalog (the others write to a scratch directory); checkpoints are written by all ranks
together (torch.distributed.checkpoint, refine_tasks.train.checkpoint), with rank 0 adding the
Hugging Face export, so a run resumes on any world size, one process included.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed._composable import checkpoint as activation_checkpoint
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from refine_tasks.config import ConfigError, PipelineConfig
from refine_tasks.models.checkpoint import latest_checkpoint
from refine_tasks.store.position_cache import PositionCache, state_fingerprint
from refine_tasks.train.checkpoint import DCP_DIR, publish, sharded_state, temporary_dir, write_model
from refine_tasks.train.trainer import MidTrainer, TrainResult, lr_lambda, make_optimizer

GRAPHS_UNDER_FSDP = (
    "refine.graph_branches is off under train.parallel=fsdp: FSDP2 gathers each block's parameters "
    "into new memory at every forward, and a CUDA graph replays the addresses it captured"
)
MODEL_METHODS = ("prefill", "decode", "decode_stream", "forward_branched")  # beside forward
SUMMED = ("tokens", "cache_hits", "tokens_per_s")  # metrics that add up across ranks; others average


def in_torchrun() -> bool:
    """This process is a rank started by torchrun (which sets LOCAL_RANK and WORLD_SIZE)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


class _SyncPoint(nn.Module):
    """DDP's entry for a synchronising micro-batch: holds the model, its forward does nothing; DDP's
    forward around it prepares the reducer for the backward pass the step runs next."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self) -> None:
        return None


def shard_model(model: nn.Module, cfg: PipelineConfig, world: int, device: torch.device) -> None:
    """FSDP2 in place: every block, then the whole model (embeddings, final norm, head)."""
    mesh = init_device_mesh(device.type, (world,))
    policy = MixedPrecisionPolicy()
    if cfg.train.fsdp_mixed_precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.model.layers:
        fully_shard(block, mesh=mesh, mp_policy=policy)
        register_fsdp_forward_method(block, "step")  # decoding: one token through the block
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for name in MODEL_METHODS:
        register_fsdp_forward_method(model, name)


class DistributedMidTrainer(MidTrainer):
    """MidTrainer as rank `rank` of `world` under torchrun; see the module docstring. `shared` is
    rank 0's configuration: its run directory is the one every rank checkpoints into, its catalog
    the one every rank's position cache reads."""

    def __init__(
        self, cfg: PipelineConfig, resume: bool, rank: int, world: int, shared: PipelineConfig
    ) -> None:
        self.rank, self.world = rank, world
        self.checkpoints = Path(shared.train.out_dir) / "checkpoints"
        self.ddp: DistributedDataParallel | None = None
        if cfg.refine.mode == "naive" and cfg.refine.coef > 0 and cfg.train.parallel == "ddp":
            raise ConfigError(
                "refine.mode=naive backpropagates several losses per micro-batch, which DDP cannot "
                "synchronise: use train.parallel=fsdp, or refine.mode=fused / branched"
            )
        super().__init__(cfg, resume=resume and rank == 0)  # other ranks' out_dir is a scratch folder
        if self.reference:  # its mini-batch steps call scored_backward, outside any gradient sync
            self.run_lock.close()
            raise ConfigError(
                "refine.protocol=reference runs in one process (lifecycle.nproc_per_node: 1) for now"
            )
        if resume and rank > 0:
            ckpt = latest_checkpoint(self.checkpoints)
            if ckpt is None:
                raise ConfigError(f"{self.checkpoints}: no checkpoint to resume from; run without --resume")
            self.restore(ckpt)
        if self.selector.cache is not None:
            self.selector.cache = PositionCache(shared.paths.catalog)
        self._parallelize(cfg)

    def _parallelize(self, cfg: PipelineConfig) -> None:
        """Wrap the (restored) model; under FSDP2 the optimizer is rebuilt over the sharded
        parameters and given the restored state."""
        if cfg.train.activation_checkpointing:
            for block in self.model.model.layers:
                activation_checkpoint(block)
        if cfg.train.parallel == "ddp":
            self.ddp = DistributedDataParallel(_SyncPoint(self.model))  # broadcasts rank 0's weights
            return
        full = StateDictOptions(full_state_dict=True)
        restored = (
            get_optimizer_state_dict(self.model, self.optimizer, options=full)
            if self.optimizer.state
            else None
        )
        scheduler_state = self.scheduler.state_dict()
        shard_model(self.model, cfg, self.world, self.device)
        self.optimizer = make_optimizer(self.model, cfg)
        t = cfg.train
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, t.warmup_steps, self.total, t.schedule, t.min_lr_ratio)
        )
        if restored is not None:
            set_optimizer_state_dict(self.model, self.optimizer, restored, options=full)
        self.scheduler.load_state_dict(scheduler_state)
        if self.step_options.graphs is not None:
            print(f"rank {self.rank}: {GRAPHS_UNDER_FSDP}", file=sys.stderr, flush=True)
            self.step_options = dataclasses.replace(self.step_options, graphs=None)

    def gradient_sync(self, last: bool) -> AbstractContextManager:
        if self.ddp is not None:
            if not last:
                return self.ddp.no_sync()
            self.ddp()  # prepares the reducer: this micro-batch's backward all-reduces
            return nullcontext()
        self.model.set_requires_gradient_sync(last)
        return nullcontext()

    def clip_gradients(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.t.grad_clip)
        return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)

    def optimizer_step(self, step: int) -> dict:
        """The step, its metrics reduced across ranks (the loss: the mean of the ranks' losses)."""
        line = super().optimizer_step(step)
        keys = [
            k
            for k, v in line.items()
            if isinstance(v, float | int) and not isinstance(v, bool) and k != "step"
        ]
        # on the trainer's device: NCCL reduces CUDA tensors only (2026-12-04, H200: "No backend type
        # associated with device type cpu" at the first FSDP2 step of benchmarks/gpu_fsdp.py)
        values = torch.tensor([float(line[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        for k, v in zip(keys, values.tolist(), strict=True):
            line[k] = v if k in SUMMED else v / self.world
        for k in ("tokens", "cache_hits", "skipped_total"):
            line[k] = round(line[k])
        if not line["skipped"]:
            self.last_loss = line["loss"]
        return line

    def write_checkpoint(self, step: int, state: dict) -> Path:
        """All ranks write their shards (torch.distributed.checkpoint); rank 0 the Hugging Face
        export, trainer/state.json, and the rename into place."""
        pid = [os.getpid()]
        dist.broadcast_object_list(pid, src=0)  # one temporary folder for all ranks: rank 0's
        tmp = temporary_dir(self.checkpoints, step, pid[0])
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        weights = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        try:
            dcp.save(sharded_state(self.model, self.optimizer), checkpoint_id=str(tmp / DCP_DIR))
            final = self.checkpoints / f"step-{step:07d}"
            if self.rank == 0:
                write_model(tmp, self.model, weights, self.cfg.paths.tokenizer_dir)
                final = publish(
                    tmp,
                    self.checkpoints,
                    step,
                    {"step": step, "scheduler": self.scheduler.state_dict(), "trainer": state},
                )
        except BaseException:
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        dist.barrier()  # no rank runs ahead of a checkpoint that is not in place yet
        return final


def _rank_config(cfg: PipelineConfig, rank: int, local: int, scratch: Path | None) -> PipelineConfig:
    data = cfg.model_dump()
    if torch.cuda.is_available() and cfg.train.device != "cpu":
        torch.cuda.set_device(local)
        data["train"]["device"] = f"cuda:{local}"
    if scratch is not None:
        data["train"]["out_dir"] = scratch / "run"
        data["paths"]["catalog"] = scratch / "catalog.duckdb"
    return PipelineConfig.model_validate(data)


def train_here(
    cfg: PipelineConfig, on_step: Callable[[dict], None] | None, resume: bool = False
) -> TrainResult | None:
    """Train in this process: plainly, or as one rank of torchrun (None on ranks other than 0)."""
    if not in_torchrun():
        return MidTrainer(cfg, resume=resume).run(on_step)
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    cuda = torch.cuda.is_available() and cfg.train.device != "cpu"
    dist.init_process_group("nccl" if cuda else "gloo")
    scratch = Path(tempfile.mkdtemp(prefix=f"refine-rank{rank}-")) if rank > 0 else None
    try:
        trainer = DistributedMidTrainer(_rank_config(cfg, rank, local, scratch), resume, rank, world, cfg)
        result = trainer.run(on_step if rank == 0 else None)
        weights = state_fingerprint(
            get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True))
        )
        print(f"rank {rank}: final weights {weights}", file=sys.stderr, flush=True)
    finally:
        dist.destroy_process_group()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return result if rank == 0 else None
