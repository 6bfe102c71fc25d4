"""`refine warmup`: run the configured shapes once, so their GPU kernels are compiled and autotuned
before a run needs them (into the kernel cache the command line points Triton at; see
refine_tasks.pipeline.kernel_cache).

On random tokens, with the configured model (model.*) on train.device and train.dtype:
  training    one NTP micro-step and one ReFINE micro-step (refine.mode; refine.coef, or its
              default when the configuration trains NTP only) on [train.batch_size, train.seq_len],
              positions selected online as the trainer does (the entropy pass included);
  evaluation  greedy generation on evaluate.device/dtype for evaluate.batch_size prompts whose
              prefill pieces are every sequence-length bucket up to evaluate.max_prompt_tokens
              (refine_tasks.evaluate.generate.prefill_pieces), the decode batch shrinking
              through its sizes as streams finish.
Nothing is written but what the kernels' caches keep; the weights are thrown away.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from functools import partial

import torch

from refine_tasks.config import PipelineConfig, RefineConfig
from refine_tasks.corpus.tokenizer import load_tokenizer
from refine_tasks.evaluate.generate import GenerationRequest, greedy_generate, prefill_pieces
from refine_tasks.evaluate.runner import eval_device, eval_dtype
from refine_tasks.models import FastWeightForCausalLM
from refine_tasks.models.continuation import ContinuationGraphs
from refine_tasks.rl.positions import check_sequence_length, sequence_entropy
from refine_tasks.train.positions import PositionSelector
from refine_tasks.train.starting_model import make_model, mixed_precision, resolve_device
from refine_tasks.train.step import RolloutBatch, StepOptions, StepStats, refine_backward


@dataclass
class WarmupReport:
    """What ran: the training micro-steps' losses and shape, the prefill lengths, the seconds."""

    train_shape: tuple[int, int] | None = None  # [batch, seq_len] of the micro-steps
    refine_mode: str | None = None
    losses: dict[str, float] | None = None  # ntp, refine
    prefill_lengths: list[int] | None = None  # the sequence-length buckets prefilled
    decode_streams: int | None = None  # streams of the first decode batch
    generated_tokens: int = 0
    seconds: float = 0.0

    def summary_rows(self) -> list[tuple[str, str]]:
        rows = []
        if self.train_shape is not None and self.losses is not None:
            batch, seq_len = self.train_shape
            rows += [
                ("training micro-steps", f"NTP, ReFINE ({self.refine_mode}) on [{batch}, {seq_len}]"),
                ("losses", ", ".join(f"{k} {v:.3f}" for k, v in self.losses.items())),
            ]
        if self.prefill_lengths is not None:
            rows += [
                ("prefill lengths", ", ".join(str(n) for n in self.prefill_lengths)),
                ("decode streams", f"{self.decode_streams} down to 1"),
            ]
        return [*rows, ("seconds", f"{self.seconds:.1f}")]


def warm_up(cfg: PipelineConfig, training: bool = True, evaluation: bool = True) -> WarmupReport:
    """Run the training micro-steps and/or the evaluation generation of the configuration once."""
    began = time.perf_counter()
    report = WarmupReport()
    device = resolve_device(cfg.train.device)
    model = make_model(cfg, device)
    if training:
        warm_training(cfg, model, device, report)
    if evaluation:
        warm_evaluation(cfg, model, report)
    report.seconds = time.perf_counter() - began
    return report


def _refine_config(cfg: RefineConfig) -> RefineConfig:
    """cfg, with ReFINE's default weight when it trains NTP only (coef 0): its kernels run too."""
    return cfg if cfg.coef > 0 else cfg.model_copy(update={"coef": RefineConfig().coef})


def warm_training(
    cfg: PipelineConfig, model: FastWeightForCausalLM, device: torch.device, report: WarmupReport
) -> None:
    """One NTP and one ReFINE micro-step on random tokens, as MidTrainer.micro_step runs them."""
    t, refine = cfg.train, _refine_config(cfg.refine)
    check_sequence_length(t.seq_len, cfg.positions.n_chunks, refine.rollout_len, cfg.positions.margin)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    ids = torch.randint(
        0, model.config.vocab_size, (t.batch_size, t.seq_len), generator=generator, device=device
    )
    autocast = partial(mixed_precision, device, t.dtype)  # as the trainer's

    def entropy(input_ids: torch.Tensor) -> torch.Tensor:
        with autocast():
            return sequence_entropy(model, input_ids, cfg.positions.entropy_chunk)

    online = cfg.positions.model_copy(update={"policy": "online"})
    selector = PositionSelector(online, refine.rollout_len, cfg.seed, "warmup")
    positions = selector.select(ids, [f"warmup-{i}" for i in range(t.batch_size)], 0, entropy).positions
    ref_model = copy.deepcopy(model).requires_grad_(False) if refine.kl_coef > 0 else None
    graphs = ContinuationGraphs() if refine.graph_branches else None
    losses: dict[str, StepStats] = {}
    try:
        for name, step_cfg, batch in (
            ("ntp", refine.model_copy(update={"coef": 0.0}), RolloutBatch(ids)),
            ("refine", refine, RolloutBatch(ids, positions, generator)),
        ):
            with autocast():
                losses[name] = refine_backward(
                    model, batch, StepOptions(step_cfg, 1.0, ref_model, graphs=graphs)
                )
            model.zero_grad(set_to_none=True)
    finally:
        if graphs is not None:
            graphs.clear()
    report.train_shape, report.refine_mode = (t.batch_size, t.seq_len), refine.mode
    report.losses = {name: stats.loss for name, stats in losses.items()}


def warmup_prompt_lengths(max_prompt_tokens: int) -> list[int]:
    """Two prompt lengths whose prefill pieces are every bucket up to max_prompt_tokens: the
    largest power of two that fits, and one less (all the smaller powers)."""
    top = 1 << (max_prompt_tokens.bit_length() - 1)
    return [top, top - 1] if top > 1 else [1]


def warm_evaluation(cfg: PipelineConfig, model: FastWeightForCausalLM, report: WarmupReport) -> None:
    """Greedy generation as `refine evaluate` runs it: evaluate.batch_size prompts covering every
    prefill bucket; stream j stops after j + 1 tokens, so the decode batch runs at each size it
    compacts to."""
    ev = cfg.evaluate
    device = eval_device(ev.device)
    model = model.to(device=device, dtype=eval_dtype(ev.dtype, device)).eval()
    lengths = warmup_prompt_lengths(ev.max_prompt_tokens)
    generator = torch.Generator().manual_seed(cfg.seed)
    requests = []
    for j in range(ev.batch_size):
        n = lengths[j % len(lengths)]
        prompt = torch.randint(0, model.config.vocab_size, (n,), generator=generator).tolist()
        requests.append(GenerationRequest(prompt, max_new_tokens=j + 1))
    tokenizer = load_tokenizer(cfg.paths.tokenizer_dir)
    outputs = greedy_generate(model, requests, tokenizer, batch_size=ev.batch_size)
    report.prefill_lengths = sorted({p for n in lengths[: ev.batch_size] for p in prefill_pieces(n)})
    report.decode_streams = len(requests)
    report.generated_tokens = sum(len(o) for o in outputs)
