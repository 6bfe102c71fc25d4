"""Mid-training with ReFINE (or its NTP-SFT baseline, refine.coef = 0) on long documents.

One optimizer step = `grad_accum` micro-batches, each: positions (entropy -> selection, or the
DuckDB cache) -> `refine_backward` (rollouts, rewards, advantages, one branched loss pass).
Then grad-clip, AdamW, warm-up + cosine/constant schedule. Per step, one JSON line in
`<out_dir>/metrics.jsonl` and the same scalars in TensorBoard (`<out_dir>/tensorboard`);
every `checkpoint_every` steps and at the end an atomic checkpoint (see train_checkpoint).
`resume=True` restores the latest checkpoint and continues exactly: same batches, same
positions and rollouts (every random draw is seeded by (seed, step, micro-batch)), same
optimizer state. With `train.val_every` > 0, held-out sequences (never trained on) give
`val/loss` and `val/accuracy` every val_every steps and at the end. `refine.protocol=reference`
takes the reference code's update steps instead (refine_tasks.train.protocol); a step is then a
rollout batch, and the scheduler moves once per batch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from refine_tasks.config import PipelineConfig
from refine_tasks.corpus import CorpusError
from refine_tasks.corpus.loader import LongDocumentLoader
from refine_tasks.errors import OutputError, RunDirError, TrainingDiverged, writing_to
from refine_tasks.models.checkpoint import latest_checkpoint
from refine_tasks.models.continuation import ContinuationGraphs
from refine_tasks.rl.positions import check_sequence_length, sequence_entropy
from refine_tasks.store.catalog import CatalogLocked, writer_lock
from refine_tasks.store.position_cache import PositionCache, weights_fingerprint
from refine_tasks.store.runs import register_run, update_run
from refine_tasks.train.checkpoint import load_checkpoint, remove_temporaries, save_checkpoint
from refine_tasks.train.positions import PositionSelector
from refine_tasks.train.recall_probe import base_probe
from refine_tasks.train.starting_model import make_model, mixed_precision, resolve_device
from refine_tasks.train.step import (
    PhaseTimer,
    RolloutBatch,
    StepOptions,
    StepStats,
    refine_backward,
    sample_scored,
    scored_backward,
)
from refine_tasks.train.validation import validate

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainResult:
    run_id: str
    out_dir: Path
    steps: int  # optimizer steps done, including any before a resume
    skipped: int  # steps skipped for a non-finite loss or gradient
    last_loss: float | None
    checkpoint: Path | None
    tokens_per_s: float
    history: list[dict] = field(default_factory=list)  # this call's metric lines
    passes: float | None = None  # passes over the training sequences at the end (see loader.passes)

    def summary_rows(self) -> list[tuple[str, str]]:
        speed = ("tokens/s", f"{self.tokens_per_s:,.0f}")
        if not self.history:  # a resumed run that had already finished: it trained nothing now
            speed = ("already finished", f"at step {self.steps:,}; raise train.max_steps to train on")
        return [
            ("run", self.run_id),
            ("steps", f"{self.steps:,}"),
            *([("passes over the data", f"{self.passes:.2f}")] if self.passes is not None else []),
            ("skipped (non-finite)", f"{self.skipped:,}"),
            ("last loss", "-" if self.last_loss is None else f"{self.last_loss:.4f}"),
            speed,
            ("metrics", str(self.out_dir / METRICS_FILE)),
            ("checkpoint", str(self.checkpoint)),
        ]


def lr_lambda(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of train.lr at `step`: linear warm-up, then cosine down to min_ratio (or constant)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: PipelineConfig) -> torch.optim.AdamW:
    # Norm gains and biases (1-D) are not decayed: decay would pull them toward 0, not toward a prior.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.train.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2))


def step_seed(seed: int, step: int, micro: int) -> int:
    digest = hashlib.sha256(f"{seed}|{step}|{micro}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def lock_run_dir(out_dir: Path) -> ExitStack:
    """Hold `<out_dir>.lock` (beside the folder, as ingest locks the corpus folder) until the returned
    stack closes; while another process (or trainer) holds it, fail at once naming its PID."""
    stack = ExitStack()
    try:
        lock = out_dir.with_name(out_dir.name + ".lock")
        stack.enter_context(writer_lock(lock, f"run directory {out_dir}"))
    except CatalogLocked as e:
        raise RunDirError(f"{e}; or set train.out_dir to another folder") from None
    return stack


def _read_run(out_dir: Path, resume: bool) -> tuple[str, Path | None]:
    """The run id (kept in out_dir/run.json across resumes) and the checkpoint to resume from."""
    run_file = out_dir / RUN_FILE
    ckpt = latest_checkpoint(out_dir / "checkpoints")
    if resume and ckpt is None:
        raise RunDirError(f"{out_dir}: no checkpoint to resume from; run without --resume")
    if not resume and ckpt is not None:
        raise RunDirError(
            f"{out_dir} already holds checkpoints ({ckpt.name}): pass --resume to continue that run, "
            "or set train.out_dir to a new directory"
        )
    if run_file.exists():  # resuming, or restarting a run that died before its first checkpoint
        return json.loads(run_file.read_text())["run_id"], ckpt
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"{out_dir.name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    run_file.write_text(json.dumps({"run_id": run_id}) + "\n")
    return run_id, ckpt


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines a killed run wrote after its last checkpoint: the resumed run redoes them."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in keep))


def _check_vocab(input_ids: torch.Tensor, vocab: int, cfg: PipelineConfig) -> None:
    top = int(input_ids.max())
    if top >= vocab:
        raise CorpusError(
            f"{cfg.paths.corpus_dir}: token id {top} is outside the model's vocabulary ({vocab} ids); "
            f"the corpus was tokenised with another tokenizer than {cfg.paths.tokenizer_dir} / "
            f"{cfg.model.init_from or 'model.preset'}: run `refine ingest` again with this tokenizer"
        )


def _metrics_line(step: int, micro: list[StepStats], extra: dict) -> dict:
    n = len(micro)
    line = {"step": step}
    for key in ("loss", "ntp", "policy", "kl", "clip_frac", "dual_clip_frac", "ratio_mean"):
        line[key] = sum(getattr(s, key) for s in micro) / n
    for name in micro[0].rewards:
        line[f"reward/{name}_mean"] = sum(s.rewards[name][0] for s in micro) / n
        line[f"reward/{name}_std"] = sum(s.rewards[name][1] for s in micro) / n
    line["tokens"] = sum(s.tokens for s in micro)
    return {**line, **extra}


class MidTrainer:
    """Holds a run's model, optimizer, data cursor and position selector; `run` trains it. From
    construction until `run` ends it holds the run folder's lock: a second trainer into the same
    folder would interleave its metrics and checkpoints with this one's.

    `rank` of `world` processes: a data-parallel rank (refine_tasks.train.distributed subclasses
    this); it reads its own rows of each global batch and seeds micro-batch m's random draws as
    global micro-batch m * world + rank, so world ranks of batch B draw what one process draws
    over `world` micro-batches of B."""

    rank, world = 0, 1

    def __init__(self, cfg: PipelineConfig, resume: bool = False) -> None:
        self.run_lock = lock_run_dir(Path(cfg.train.out_dir))
        try:
            self._prepare(cfg, resume)
        except BaseException:
            self.run_lock.close()
            raise

    def _prepare(self, cfg: PipelineConfig, resume: bool) -> None:
        t = self.t = cfg.train
        self.cfg = cfg
        self.device = resolve_device(t.device)
        self.autocast = lambda: mixed_precision(self.device, t.dtype)
        if cfg.refine.coef > 0:
            check_sequence_length(
                t.seq_len, cfg.positions.n_chunks, cfg.refine.rollout_len, cfg.positions.margin
            )
        self.reference = cfg.refine.protocol == "reference" and cfg.refine.coef > 0
        if self.reference and t.grad_accum % cfg.refine.mini_batches:
            raise ValueError(
                f"refine.protocol=reference: refine.mini_batches={cfg.refine.mini_batches} must divide "
                f"train.grad_accum={t.grad_accum} (the micro-batches of one rollout batch)"
            )
        self.out_dir = Path(t.out_dir)
        held_out = t.val_sequences if t.val_every else 0
        self.loader = LongDocumentLoader(
            cfg.paths.corpus_dir,
            t.seq_len,
            t.batch_size,
            t.packing,
            cfg.seed,
            self.rank,
            self.world,
            held_out=held_out,
            synthetic=t.synthetic_docs,
            midtrain_share=cfg.corpus.midtrain_share,
            synthetic_windows=t.synthetic_windows,
        )
        self.val_batches = self.loader.held_out_batches()
        self.recall = base_probe(cfg, t.val_recall_docs) if t.val_every and t.val_recall_docs else None
        self.total = t.max_steps or max(1, self.loader.batches_per_epoch() // t.grad_accum)
        remove_temporaries(self.out_dir / "checkpoints")  # killed writes, fresh run or resume alike
        with writing_to(self.out_dir, "train.out_dir", "run `refine train` again"):
            self.run_id, ckpt = _read_run(self.out_dir, resume)
        self.model = make_model(cfg, self.device)
        self.base_id = weights_fingerprint(self.model)
        # KL reference: the starting weights, frozen (rebuilt identically on resume).
        self.ref_model = copy.deepcopy(self.model).requires_grad_(False) if cfg.refine.kl_coef > 0 else None
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, t.warmup_steps, self.total, t.schedule, t.min_lr_ratio)
        )
        self.step, self.skipped, self.bad_in_a_row = 0, 0, 0
        self.last_ckpt, self.last_loss = ckpt, None
        if ckpt is not None:
            self.restore(ckpt)
        # The fused way's CUDA-graphed continuations: this trainer owns them (cleared when `run` ends).
        graphs = ContinuationGraphs() if cfg.refine.graph_branches else None
        timer = PhaseTimer(timing=t.phase_timing)
        self.step_options = StepOptions(
            cfg.refine, 1.0 / t.grad_accum, self.ref_model, timer, graphs, backward_nonfinite=self.world > 1
        )
        cache = PositionCache(cfg.paths.catalog) if cfg.positions.policy == "precomputed" else None
        self.selector = PositionSelector(
            cfg.positions, cfg.refine.rollout_len, cfg.seed, self.base_id, self.run_id, cache
        )

    def restore(self, ckpt: Path) -> None:
        """Weights, optimizer, scheduler, counters and data cursor from checkpoint `ckpt`."""
        restored = load_checkpoint(ckpt, self.model, self.optimizer, self.scheduler)
        state = restored["trainer"]
        self.step, self.skipped = restored["step"], state["skipped"]
        self.base_id, self.last_loss = state["base_checkpoint"], state["last_loss"]
        self.loader.load_state_dict(state["data"])
        self.last_ckpt = ckpt

    def gradient_sync(self, last: bool) -> AbstractContextManager:
        """Around a micro-batch: data parallelism synchronises gradients on the `last` one only."""
        return nullcontext()

    def clip_gradients(self) -> float:
        """Clip the gradients' global norm to train.grad_clip; returns the norm before clipping."""
        return float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.t.grad_clip))

    def entropy(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Next-token entropy [B, T] under the current weights (the positions' model pass)."""
        with self.autocast():
            return sequence_entropy(self.model, input_ids, self.cfg.positions.entropy_chunk)

    def micro_batch(self, step: int, micro: int) -> tuple[RolloutBatch, float, int]:
        """One micro-batch: its tokens, rollout positions (ReFINE) and sampling generator; also the
        positions' mean entropy and cache hits."""
        timer = self.step_options.timer
        with timer.phase("data"):
            batch = self.loader.next_batch()
            _check_vocab(batch.input_ids, self.model.config.vocab_size, self.cfg)
            ids = batch.input_ids.to(self.device)
        positions, entropy, hits = None, 0.0, 0
        if self.cfg.refine.coef > 0:
            with timer.phase("positions"):
                chosen = self.selector.select(ids, batch.doc_ids, step - 1, self.entropy)
            positions, entropy, hits = chosen.positions, chosen.entropy_mean, chosen.cache_hits
        seed = step_seed(self.cfg.seed, step, micro * self.world + self.rank)
        generator = torch.Generator(self.device).manual_seed(seed)
        return RolloutBatch(ids, positions, generator), entropy, hits

    def micro_step(self, step: int, micro: int) -> tuple[StepStats, float, int]:
        """One micro-batch's loss, backpropagated; returns its stats, mean entropy and cache hits."""
        batch, entropy, hits = self.micro_batch(step, micro)
        with self.autocast():
            stats = refine_backward(self.model, batch, self.step_options)
        return stats, entropy, hits

    def apply_gradients(self, micro: list[StepStats]) -> tuple[float, bool]:
        """Clip and take the optimizer step on the accumulated gradients, or skip a non-finite step;
        returns (grad_norm, finite)."""
        grad_norm, finite = float("nan"), all(s.finite for s in micro)
        with self.step_options.timer.phase("optimizer"):
            if finite or self.world > 1:  # a rank's non-finite gradient reaches every rank's norm
                grad_norm = self.clip_gradients()
                finite = finite and math.isfinite(grad_norm)
            if finite:
                self.optimizer.step()
                self.bad_in_a_row = 0
            else:
                self.skipped, self.bad_in_a_row = self.skipped + 1, self.bad_in_a_row + 1
            self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, finite

    def optimizer_step(self, step: int) -> dict:
        """Accumulate, clip, step (or skip a non-finite step); returns the step's metric line."""
        self.step_options.timer.seconds.clear()
        began = time.perf_counter()
        micro, entropy, hits = [], 0.0, 0
        for m in range(self.t.grad_accum):
            with self.gradient_sync(last=m == self.t.grad_accum - 1):
                stats, h, n = self.micro_step(step, m)
            micro.append(stats)
            entropy, hits = entropy + h / self.t.grad_accum, hits + n
            if not stats.finite and self.world == 1:  # ranks must all run every micro-batch's collectives
                break
        grad_norm, finite = self.apply_gradients(micro)
        extra = {"entropy": entropy, "cache_hits": hits, "grad_norm": grad_norm}
        return self._line(step, micro, extra, finite, began)

    def reference_step(self, step: int) -> dict:
        """The reference code's update protocol on one rollout batch (grad_accum micro-batches):
        rollouts, rewards, advantages and old log-probs for all of it under the batch's starting
        weights, then one optimizer step per mini-batch (refine.mini_batches of them); from the
        second on the weights have moved, so the ratio departs from 1 and the clip can bind. With
        one mini-batch it is `optimizer_step` (refine.mode=branched) up to rounding: the old log-probs
        are the loss pass's own forward (sample_scored), not the decode's."""
        self.step_options.timer.seconds.clear()
        began = time.perf_counter()
        n, k = self.t.grad_accum, self.cfg.refine.mini_batches
        sampled, entropy, hits = [], 0.0, 0
        for m in range(n):
            batch, h, c = self.micro_batch(step, m)
            with torch.no_grad(), self.autocast():
                sampled.append((batch, sample_scored(self.model, batch, self.step_options)))
            entropy, hits = entropy + h / n, hits + c
        options = replace(self.step_options, scale=k / n)
        micro, norms, finite = [], [], True
        for j in range(k):
            mini = []
            for batch, scored in sampled[j * n // k : (j + 1) * n // k]:
                with self.autocast():
                    mini.append(scored_backward(self.model, batch, scored, options))
                if not mini[-1].finite:
                    break
            grad_norm, ok = self.apply_gradients(mini)
            micro, norms, finite = micro + mini, norms + [grad_norm], finite and ok
        extra = {"entropy": entropy, "cache_hits": hits, "grad_norm": sum(norms) / k, "optimizer_steps": k}
        return self._line(step, micro, extra, finite, began)

    def _line(self, step: int, micro: list[StepStats], extra: dict, finite: bool, began: float) -> dict:
        """The step's metric line; moves the scheduler on by one step."""
        extra["lr"] = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        elapsed = time.perf_counter() - began
        line = _metrics_line(step, micro, {**extra, "skipped": not finite, "skipped_total": self.skipped})
        line.update(step_s=elapsed, tokens_per_s=line["tokens"] / elapsed)
        line.update({f"phase/{name}": seconds for name, seconds in self.step_options.timer.seconds.items()})
        if finite:
            self.last_loss = line["loss"]
        return line

    def batch_step(self, step: int) -> dict:
        """One step of the configured protocol, then validation when it is due."""
        line = self.reference_step(step) if self.reference else self.optimizer_step(step)
        if self.t.val_every and (step % self.t.val_every == 0 or step == self.total):
            with self.autocast():
                line.update(validate(self.model, self.val_batches, self.device))
                if self.recall is not None:
                    probe = self.recall(self.model)
                    for key, value in (
                        ("val/recall_use", probe["use_exact"]),
                        ("val/retrieval_gain", probe["gain"]),
                    ):
                        if value is not None:
                            line[key] = value
        return line

    def checkpoint(self, step: int) -> None:
        state = {
            "skipped": self.skipped,
            "base_checkpoint": self.base_id,
            "data": self.loader.state_dict(),
            "run_id": self.run_id,
            "last_loss": self.last_loss,
        }
        then = (
            f"`refine train --resume` continues from {self.last_ckpt.name}"
            if self.last_ckpt
            else "run `refine train` again (no checkpoint was completed)"
        )
        with writing_to(self.out_dir / "checkpoints", "train.out_dir", then):
            self.last_ckpt = self.write_checkpoint(step, state)
        update_run(self.cfg.paths.catalog, self.run_id, "running", step, self.last_loss)

    def write_checkpoint(self, step: int, state: dict) -> Path:
        """Checkpoint `step` with the trainer's `state` under out_dir/checkpoints; returns its folder."""
        return save_checkpoint(
            self.out_dir / "checkpoints",
            step,
            self.model,
            self.optimizer,
            self.scheduler,
            state,
            self.cfg.paths.tokenizer_dir,
        )

    def run(self, on_step: Callable[[dict], None] | None = None) -> TrainResult:
        catalog = self.cfg.paths.catalog
        register_run(
            catalog, self.run_id, "midtrain", self.out_dir, self.base_id, self.cfg.model_dump(mode="json")
        )
        metrics_path = self.out_dir / METRICS_FILE
        _truncate_metrics(metrics_path, self.step)
        writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.step + 1)
        history: list[dict] = []
        try:
            for step in range(self.step + 1, self.total + 1):
                line = self.batch_step(step)
                self.step = step
                with writing_to(self.out_dir, "train.out_dir", "run `refine train --resume`"):
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(line) + "\n")
                for key, value in line.items():
                    if isinstance(value, float | int) and not isinstance(value, bool) and key != "step":
                        writer.add_scalar(key, value, step)
                history.append(line)
                if on_step is not None:
                    on_step(line)
                if self.bad_in_a_row >= self.t.max_bad_steps:
                    raise TrainingDiverged(
                        f"run {self.run_id}: {self.bad_in_a_row} steps in a row (up to step {step}) had a "
                        f"non-finite loss or gradient (train.max_bad_steps={self.t.max_bad_steps}); lower "
                        f"train.lr, or resume from {self.last_ckpt or 'a checkpoint'} with other settings"
                    )
                if step % self.t.checkpoint_every == 0 or step == self.total:
                    self.checkpoint(step)
        except (TrainingDiverged, OutputError) as e:
            update_run(catalog, self.run_id, "failed", self.step, self.last_loss, str(e))
            raise
        except KeyboardInterrupt:
            update_run(
                catalog, self.run_id, "stopped", self.step, self.last_loss, "interrupted: --resume continues"
            )
            raise
        finally:
            writer.close()
            self.run_lock.close()
            if self.step_options.graphs is not None:
                self.step_options.graphs.clear()  # their gradient buffers: ~5 GiB at 1.3B
        update_run(catalog, self.run_id, "finished", self.step, self.last_loss)
        seconds = sum(h["step_s"] for h in history)
        return TrainResult(
            run_id=self.run_id,
            out_dir=self.out_dir,
            steps=self.step,
            skipped=self.skipped,
            last_loss=self.last_loss,
            checkpoint=self.last_ckpt,
            tokens_per_s=sum(h["tokens"] for h in history) / seconds if seconds else 0.0,
            history=history,
            passes=self.loader.passes(),
        )


def train(
    cfg: PipelineConfig, resume: bool = False, on_step: Callable[[dict], None] | None = None
) -> TrainResult:
    """Run (or, with resume, continue) mid-training as configured; see the module docstring."""
    return MidTrainer(cfg, resume).run(on_step)
