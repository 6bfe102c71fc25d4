"""Post-training on QA (the paper's second lifecycle stage; DESIGN.md section 7).

Per batch of QA examples:
  inner  (nested variants) on the prompts alone: NTP (nested-sft), or NTP + inner_coef * GRPO
         with the `inner_reward` (nested-refine), through the mid-training step (`refine_backward`,
         rollouts branching from the prompt's own states); one optimizer step per
         `inner_mini_batch` prompts. Its weights are kept (sequential, as the reference).
  outer  cross-entropy on the answer tokens only (`answer_loss`: the prompt's tokens are context,
         not targets); one optimizer step.
`sft` is the outer step alone. Inner and outer share one AdamW (constant posttrain.lr). Each
example runs as its own sequence (prompts differ in length; no padding), its gradient weighted
so the batch's loss is the mean over the batch's prompts (inner) or answer tokens (outer).

`PromptSteps` (the inner step) is also what test-time training runs before a batch is answered.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from refine_tasks.config import PipelineConfig, PositionsConfig, RefineConfig
from refine_tasks.corpus.qa_data import QaExample, read_qa_data
from refine_tasks.errors import RunDirError, SequenceTooShort, writing_to
from refine_tasks.models import FastWeightForCausalLM
from refine_tasks.models.checkpoint import latest_checkpoint
from refine_tasks.rl.positions import min_sequence_length, sequence_entropy
from refine_tasks.train.checkpoint import save_checkpoint
from refine_tasks.train.positions import PositionSelector
from refine_tasks.train.starting_model import make_model, mixed_precision, resolve_device
from refine_tasks.train.step import RolloutBatch, StepOptions, StepStats, refine_backward
from refine_tasks.train.trainer import METRICS_FILE, make_optimizer, step_seed

SUMMARY_FILE = "summary.json"


def answer_loss(logits: Tensor, input_ids: Tensor, prompt_lengths: Tensor) -> Tensor:
    """Mean cross-entropy of the answer tokens: logits [B, T, V] of input_ids [B, T] (prompt then
    answer); token t is a target when t >= prompt_lengths[b] ([B]), i.e. only answer tokens."""
    targets = input_ids[:, 1:]
    is_answer = torch.arange(1, input_ids.shape[1], device=input_ids.device)[None] >= prompt_lengths[:, None]
    pred = logits[:, :-1].flatten(0, 1)
    pred = pred.to(torch.promote_types(pred.dtype, torch.float32))
    nll = F.cross_entropy(pred, targets.flatten(), reduction="none")
    nll = nll.view_as(targets)
    return (nll * is_answer).sum() / is_answer.sum()


def truncate_right(ids: list[int], max_tokens: int) -> list[int]:
    """The reference's prompt truncation: keep the first max_tokens tokens."""
    return ids[:max_tokens]


def _clip_and_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float) -> float:
    """Clip, step (skipped when the gradient is not finite), zero; returns the gradient norm."""
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    if math.isfinite(norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


@dataclass
class PromptSteps:
    """Optimizer steps on prompts alone: NTP + refine.coef * GRPO (coef 0: NTP only), one step per
    `mini_batch` prompts. Positions are chosen online from the prompt's entropy (positions.*);
    every random draw is seeded by (seed, salt, prompt), so a batch's steps do not depend on what
    ran before it."""

    refine: RefineConfig
    positions: PositionsConfig
    grad_clip: float
    seed: int
    mini_batch: int
    autocast: Callable[[], AbstractContextManager] = nullcontext  # mixed precision on a GPU

    def __post_init__(self) -> None:
        online = self.positions.model_copy(update={"policy": "online"})
        self.selector = PositionSelector(online, self.refine.rollout_len, self.seed, "prompt")

    def _positions(
        self, model: FastWeightForCausalLM, ids: Tensor, key: str, salt: int | str
    ) -> Tensor | None:
        if self.refine.coef == 0:
            return None
        p = self.positions
        if ids.shape[1] < min_sequence_length(p.n_chunks, self.refine.rollout_len, p.margin):
            raise SequenceTooShort(
                f"a prompt of {ids.shape[1]} tokens cannot hold positions.n_chunks={p.n_chunks} rollouts "
                f"(refine.rollout_len={self.refine.rollout_len}) with positions.margin={p.margin} on both "
                "sides: lower those, or take NTP-only inner steps (posttrain.variant=nested-sft, ttt.objective=sft)"
            )

        def entropy(x: Tensor) -> Tensor:
            with torch.no_grad(), self.autocast():
                return sequence_entropy(model, x, self.positions.entropy_chunk)

        return self.selector.select(ids, [key], salt, entropy).positions

    def run(
        self,
        model: FastWeightForCausalLM,
        optimizer: torch.optim.Optimizer,
        prompts: list[list[int]],
        salt: int | str,
    ) -> list[StepStats]:
        """Steps on `prompts` (token ids); returns the stats of each prompt's loss."""
        device = next(model.parameters()).device
        stats = []
        for start in range(0, len(prompts), self.mini_batch):
            part = prompts[start : start + self.mini_batch]
            opts = StepOptions(self.refine, scale=1.0 / len(part))
            for i, prompt in enumerate(part):
                ids = torch.tensor([prompt], device=device)
                key = f"{salt}:{start + i}"
                positions = self._positions(model, ids, key, salt)
                generator = torch.Generator(device).manual_seed(step_seed(self.seed, salt, start + i))
                with self.autocast():
                    stats.append(refine_backward(model, RolloutBatch(ids, positions, generator), opts))
            _clip_and_step(model, optimizer, self.grad_clip)
        return stats


def outer_step(
    model: FastWeightForCausalLM,
    optimizer: torch.optim.Optimizer,
    examples: list[tuple[list[int], list[int]]],
    grad_clip: float,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> float:
    """One optimizer step on the answers' cross-entropy of (prompt ids, answer ids) pairs: the mean
    over all the batch's answer tokens. Returns that loss."""
    device = next(model.parameters()).device
    total = sum(len(a) for _, a in examples)
    loss_sum = 0.0
    for prompt, answer in examples:
        ids = torch.tensor([prompt + answer], device=device)
        with autocast():
            loss = answer_loss(model(ids).logits, ids, torch.tensor([len(prompt)], device=device))
        (loss * (len(answer) / total)).backward()
        loss_sum += float(loss.detach()) * len(answer) / total
    _clip_and_step(model, optimizer, grad_clip)
    return loss_sum


def nested_step(
    model: FastWeightForCausalLM,
    optimizer: torch.optim.Optimizer,
    batch: list[tuple[list[int], list[int]]],
    inner: PromptSteps | None,
    grad_clip: float,
    salt: int,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> dict:
    """One post-training batch: the inner steps on its prompts (None: sft), then the outer step."""
    line: dict = {}
    if inner is not None:
        stats = inner.run(model, optimizer, [p for p, _ in batch], salt)
        line["inner_loss"] = sum(s.loss for s in stats) / len(stats)
        line["inner_ntp"] = sum(s.ntp for s in stats) / len(stats)
    line["answer_loss"] = outer_step(model, optimizer, batch, grad_clip, autocast)
    return line


def resolve_start(cfg: PipelineConfig) -> Path:
    """The checkpoint post-training starts from: posttrain.init_from, else model.init_from (a
    model directory, or a training run / its checkpoints folder: its latest checkpoint)."""
    start = cfg.posttrain.init_from or cfg.model.init_from
    if start is None:
        raise RunDirError(
            "posttrain.init_from: name the mid-trained checkpoint to start from (or model.init_from)"
        )
    path = Path(start)
    for candidate in (path, path / "checkpoints"):
        if (candidate / "config.json").is_file():
            return candidate
        found = latest_checkpoint(candidate) if candidate.is_dir() else None
        if found is not None:
            return found
    raise RunDirError(f"posttrain.init_from = {start!r}: no model directory or completed checkpoint there")


def inner_steps(cfg: PipelineConfig, device: torch.device) -> PromptSteps | None:
    """The inner step of posttrain.variant (None for sft)."""
    pt = cfg.posttrain
    if pt.variant == "sft":
        return None
    coef = pt.inner_coef if pt.variant == "nested-refine" else 0.0
    refine = cfg.refine.model_copy(update={"coef": coef, "reward": pt.inner_reward})
    return PromptSteps(
        refine, cfg.positions, cfg.train.grad_clip, cfg.seed, pt.inner_mini_batch,
        lambda: mixed_precision(device, cfg.train.dtype),
    )  # fmt: skip


@dataclass
class PosttrainResult:
    out_dir: Path
    steps: int
    checkpoint: Path
    last_answer_loss: float | None
    seconds: float
    history: list[dict]

    def summary_rows(self) -> list[tuple[str, str]]:
        loss = "-" if self.last_answer_loss is None else f"{self.last_answer_loss:.4f}"
        return [
            ("steps", f"{self.steps:,}"),
            ("last answer loss", loss),
            ("seconds", f"{self.seconds:.1f}"),
            ("metrics", str(self.out_dir / METRICS_FILE)),
            ("checkpoint", str(self.checkpoint)),
        ]


def batches_of(examples: list[QaExample], cfg: PipelineConfig) -> list[list[tuple[list[int], list[int]]]]:
    """The epoch's batches: examples in a seeded order, prompts right-truncated, answers cut."""
    pt = cfg.posttrain
    order = list(range(len(examples)))
    random.Random(f"posttrain:{cfg.seed}").shuffle(order)
    pairs = [
        (
            truncate_right(examples[i].prompt_ids, pt.max_prompt_tokens),
            examples[i].answer_ids[: pt.max_answer_tokens],
        )
        for i in order
    ]
    batches = [pairs[s : s + pt.batch_size] for s in range(0, len(pairs), pt.batch_size)]
    return batches[: pt.max_steps] if pt.max_steps is not None else batches


def posttrain(cfg: PipelineConfig, on_step: Callable[[dict], None] | None = None) -> PosttrainResult:
    """Post-train the checkpoint `resolve_start` names on the QA data in qa_data.out_dir, as
    posttrain.variant says; metrics to <out_dir>/metrics.jsonl, the final checkpoint to
    <out_dir>/checkpoints."""
    pt = cfg.posttrain
    out_dir = Path(pt.out_dir)
    if latest_checkpoint(out_dir / "checkpoints") is not None:
        raise RunDirError(
            f"{out_dir} already holds a post-training checkpoint; set posttrain.out_dir to a new folder"
        )
    start = resolve_start(cfg)
    device = resolve_device(cfg.train.device)
    model = make_model(
        cfg.model_copy(update={"model": cfg.model.model_copy(update={"init_from": str(start)})}), device
    )
    vocab = model.config.vocab_size
    batches = batches_of(read_qa_data(cfg.qa_data.out_dir), cfg)
    top = max((max(p + a) for b in batches for p, a in b), default=0)
    if top >= vocab:
        raise RunDirError(
            f"{cfg.qa_data.out_dir}: token id {top} is outside the model's vocabulary ({vocab}); build the QA "
            f"data with the tokenizer of {start} (`refine stage qa_data`)"
        )
    optimizer = make_optimizer(model, cfg)
    for group in optimizer.param_groups:
        group["lr"] = pt.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    inner = inner_steps(cfg, device)
    autocast = lambda: mixed_precision(device, cfg.train.dtype)  # noqa: E731
    began, history = time.perf_counter(), []
    with writing_to(out_dir, "posttrain.out_dir", "run `refine posttrain` again"):
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / METRICS_FILE).open("w") as f:
            for step, batch in enumerate(batches, start=1):
                t0 = time.perf_counter()
                result = nested_step(model, optimizer, batch, inner, cfg.train.grad_clip, step, autocast)
                line = {"step": step, **result}
                line["step_s"] = time.perf_counter() - t0
                f.write(json.dumps(line) + "\n")
                history.append(line)
                if on_step is not None:
                    on_step(line)
        tokenizer_dir = start if (start / "tokenizer.json").is_file() else cfg.paths.tokenizer_dir
        state = {"variant": pt.variant, "started_from": str(start), "qa_data": str(cfg.qa_data.out_dir)}
        ckpt = save_checkpoint(
            out_dir / "checkpoints", len(history), model, optimizer, scheduler, state, tokenizer_dir
        )
        last = history[-1]["answer_loss"] if history else None
        summary = {"variant": pt.variant, "steps": len(history), "last_answer_loss": last}
        (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return PosttrainResult(out_dir, len(history), ckpt, last, time.perf_counter() - began, history)
