"""Training's part of `refine warmup`: run the configured micro-steps once, so their GPU kernels
are compiled and autotuned before a run needs them (into the kernel cache the command line points
Triton at; see refine_tasks.pipeline.kernel_cache). Evaluation's part is
refine_tasks.evaluate.runner.warm_generation.

On random tokens, with the given model on train.device and train.dtype: one NTP micro-step and
one ReFINE micro-step (refine.mode; refine.coef, or its default when the configuration trains
NTP only) on [train.batch_size, train.seq_len], positions selected online as the trainer does
(the entropy pass included); an NTP micro-step at the base pretraining's batch
(lifecycle.base_batch_size) when it differs; and the `positions` stage's entropy pass on
[positions.batch_size, train.seq_len]. Nothing is written but what the kernels' caches keep; the
gradients are dropped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial

import torch

from refine_tasks.config import PipelineConfig, RefineConfig
from refine_tasks.models import FastWeightForCausalLM
from refine_tasks.models.continuation import ContinuationGraphs
from refine_tasks.rl.positions import check_sequence_length, sequence_entropy
from refine_tasks.train.positions import PositionSelector
from refine_tasks.train.starting_model import mixed_precision
from refine_tasks.train.step import RolloutBatch, StepOptions, refine_backward


@dataclass
class TrainingWarmup:
    """What ran: the micro-steps' shape [batch, seq_len], the ReFINE mode, each step's loss."""

    shape: tuple[int, int]
    refine_mode: str
    losses: dict[str, float]  # ntp, refine, and "ntp [B, T]" at the base's batch
    entropy_shape: tuple[int, int] = (0, 0)

    def summary_rows(self) -> list[tuple[str, str]]:
        batch, seq_len = self.shape
        return [
            ("training micro-steps", f"NTP, ReFINE ({self.refine_mode}) on [{batch}, {seq_len}]"),
            ("losses", ", ".join(f"{k} {v:.3f}" for k, v in self.losses.items())),
            ("entropy pass (positions)", f"[{self.entropy_shape[0]}, {self.entropy_shape[1]}]"),
        ]


def _refine_config(cfg: RefineConfig) -> RefineConfig:
    """cfg, with ReFINE's default weight when it trains NTP only (coef 0): its kernels run too."""
    return cfg if cfg.coef > 0 else cfg.model_copy(update={"coef": RefineConfig().coef})


def warm_training(cfg: PipelineConfig, model: FastWeightForCausalLM) -> TrainingWarmup:
    """One NTP and one ReFINE micro-step on random tokens, as MidTrainer.micro_step runs them,
    on the model's device."""
    t, refine = cfg.train, _refine_config(cfg.refine)
    check_sequence_length(t.seq_len, cfg.positions.n_chunks, refine.rollout_len, cfg.positions.margin)
    device = model.lm_head.weight.device
    generator = torch.Generator(device).manual_seed(cfg.seed)

    def tokens(batch: int) -> torch.Tensor:
        return torch.randint(
            0, model.config.vocab_size, (batch, t.seq_len), generator=generator, device=device
        )

    ids = tokens(t.batch_size)
    autocast = partial(mixed_precision, device, t.dtype)  # as the trainer's

    def entropy(input_ids: torch.Tensor) -> torch.Tensor:
        with autocast():
            return sequence_entropy(model, input_ids, cfg.positions.entropy_chunk)

    online = cfg.positions.model_copy(update={"policy": "online"})
    selector = PositionSelector(online, refine.rollout_len, cfg.seed, "warmup")
    positions = selector.select(ids, [f"warmup-{i}" for i in range(t.batch_size)], 0, entropy).positions
    ref_model = copy.deepcopy(model).requires_grad_(False) if refine.kl_coef > 0 else None
    graphs = ContinuationGraphs() if refine.graph_branches else None
    ntp = refine.model_copy(update={"coef": 0.0})
    micro_steps = [
        ("ntp", ntp, RolloutBatch(ids)),
        ("refine", refine, RolloutBatch(ids, positions, generator)),
    ]
    base_batch = cfg.lifecycle.base_batch_size
    if cfg.lifecycle.base_checkpoint is None and base_batch not in (None, t.batch_size):
        micro_steps.append((f"ntp [{base_batch}, {t.seq_len}]", ntp, RolloutBatch(tokens(base_batch))))
    losses: dict[str, float] = {}
    try:
        for name, step_cfg, batch in micro_steps:
            with autocast():
                stats = refine_backward(model, batch, StepOptions(step_cfg, 1.0, ref_model, graphs=graphs))
            losses[name] = stats.loss
            model.zero_grad(set_to_none=True)
        if cfg.positions.batch_size != t.batch_size:  # else the selection's pass above was that shape
            with torch.no_grad():
                entropy(tokens(cfg.positions.batch_size))
    finally:
        if graphs is not None:
            graphs.clear()
    return TrainingWarmup(
        (t.batch_size, t.seq_len), refine.mode, losses, (cfg.positions.batch_size, t.seq_len)
    )
