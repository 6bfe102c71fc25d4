"""One ReFINE micro-step: given positions, rollouts -> rewards -> advantages -> loss, backpropagated.

Three ways to the same loss and gradients (`refine.mode`):
  branched  one no-grad prefill captures the states at the positions and gives the true
            tokens' hidden states; rollouts decode from those states in one batch (their
            hidden states come from the decode); ONE `forward_branched` pass gives the NTP
            logits of the sequence and the policy logits of every rollout, gradients flowing
            through the prefix exactly.
  fused     as branched, but the prefill that captures the states IS the loss pass's main
            half (run with gradients); rollouts decode from its detached states, then the
            branches continue from the captured states themselves (differentiable), so the
            separate no-grad prefill disappears: one main-sequence pass per step in all.
  naive     the reference implementation's way: every prefix re-run on its own to sample,
            prefix + rollout re-run for the reward's hidden states and again, with gradients,
            for the policy loss, beside a separate NTP pass.
Old log-probs are the rollout's own, so the ratio is 1 in value on this first and only epoch;
the clipped form is kept so its gradient and diagnostics are the GRPO ones.

One function per way (`fused_backward`, `branched_backward`, `naive_backward`; `refine_backward`
dispatches on refine.mode), each taking a `RolloutBatch` (what to train on) and `StepOptions`
(how: the config, the gradient scale, the KL reference, the phase timer and the continuation
graphs, whose owner is the caller). They backpropagate `scale * loss` themselves (scale = 1 /
grad_accum): the naive way must call backward per sequence to fit in memory, and all ways share
that interface. A non-finite loss is reported and not backpropagated (under data
parallelism it is: see StepOptions.backward_nonfinite).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from refine_tasks.config import RefineConfig
from refine_tasks.models import FastWeightForCausalLM, PrefillOutput
from refine_tasks.models.continuation import ContinuationGraphs, continue_branches
from refine_tasks.rl.grpo import (
    PolicyLoss,
    aggregate_loss,
    clipped_policy_loss,
    group_advantages,
    kl_penalty,
    ntp_loss,
    refine_loss,
)
from refine_tasks.rl.rewards import get_reward
from refine_tasks.rl.rollout import (
    Rollouts,
    SamplingParams,
    naive_rollout,
    prefix_hidden,
    rollout,
    scaled_log_probs,
    true_continuation,
)

METRIC_REWARDS = ("cosine", "exact", "hybrid")  # always logged, whichever one trains


class PhaseTimer:
    """Names the parts of a step: always a profiler range `refine/<name>`; with `timing`, also
    their wall seconds in `seconds` ({name: seconds}), the device synchronised before and after
    each (so never while training: the syncs stop the host from queueing work ahead of the GPU)."""

    def __init__(self, timing: bool = False) -> None:
        self.timing = timing
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with torch.profiler.record_function(f"refine/{name}"):
            if not self.timing:
                yield
                return
            _synchronize()
            began = time.perf_counter()
            yield
            _synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - began


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@dataclass
class RolloutBatch:
    """What one micro-step trains on: input_ids [B, T]; positions [B, P], the prefix lengths where
    rollouts start (None only for the NTP step); generator: the rollouts' sampling source, on the
    model's device (None: the global one)."""

    input_ids: Tensor
    positions: Tensor | None = None
    generator: torch.Generator | None = None


@dataclass
class StepOptions:
    """How a micro-step runs: the ReFINE config; scale, the loss's weight in the accumulated
    gradient (1 / grad_accum); ref_model, the frozen KL reference (needed when cfg.kl_coef > 0);
    timer, the step's phase names and timings; graphs, the fused way's CUDA-graphed
    continuations (None: launched op by op), owned by the caller, who clears them."""

    cfg: RefineConfig
    scale: float = 1.0
    ref_model: FastWeightForCausalLM | None = None
    timer: PhaseTimer = field(default_factory=PhaseTimer)
    graphs: ContinuationGraphs | None = None
    # Under data parallelism the gradient all-reduce runs inside backward, so a rank that skipped
    # it would leave the others waiting until the process group times out. There a non-finite loss
    # is backpropagated as it is: its NaN reaches every rank's gradient norm, and all skip the step.
    backward_nonfinite: bool = False


@dataclass
class StepStats:
    """Detached figures of one micro-step (floats; NaN when the loss was not finite)."""

    loss: float
    ntp: float
    policy: float = 0.0
    kl: float = 0.0
    clip_frac: float = 0.0
    dual_clip_frac: float = 0.0
    ratio_mean: float = 1.0
    rewards: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (mean, std)
    tokens: int = 0  # tokens run through the model with gradients (sequence + rollouts)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss)


def sampling_params(cfg: RefineConfig) -> SamplingParams:
    return SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)


def _backward(loss: Tensor, scale: float, opts: StepOptions) -> bool:
    """Backpropagate scale * loss; returns whether the loss was finite. A non-finite one is
    backpropagated only under data parallelism (StepOptions.backward_nonfinite)."""
    finite = bool(torch.isfinite(loss.detach()))
    if finite or opts.backward_nonfinite:
        (loss * scale).backward()
    return finite


def ntp_backward(model: FastWeightForCausalLM, input_ids: Tensor, opts: StepOptions) -> StepStats:
    """The NTP-SFT baseline step (ReFINE with coef = 0): cross-entropy over input_ids [B, T]."""
    with opts.timer.phase("loss_forward"):
        loss = ntp_loss(model(input_ids).logits, input_ids)
    with opts.timer.phase("backward"):
        _backward(loss, opts.scale, opts)
    value = float(loss.detach())
    return StepStats(loss=value, ntp=value, tokens=input_ids.numel())


def score_rollouts(
    ro: Rollouts, true_tokens: Tensor, true_hidden: Tensor, names: list[str]
) -> dict[str, Tensor]:
    """Each named reward for every rollout: true_tokens [B, P, L], true_hidden [B, P, L, D] -> [B, P, R]."""
    r = ro.tokens.shape[2]
    tt = true_tokens.unsqueeze(2).expand(-1, -1, r, -1)
    th = true_hidden.unsqueeze(2).expand(-1, -1, r, -1, -1)
    return {name: get_reward(name)(ro.tokens, ro.hidden, tt, th).float() for name in names}


@torch.no_grad()
def rollouts_from_states(
    model: FastWeightForCausalLM,
    input_ids: Tensor,
    positions: Tensor,
    prefill: PrefillOutput,
    cfg: RefineConfig,
    generator,
) -> tuple[Rollouts, Tensor, Tensor]:
    """Rollouts from a prefill's captured states (detached here); also the true tokens [B, P, L] and
    their hidden states [B, P, L, D] from the prefill's hidden [B, T, D]."""
    hidden = prefill.hidden.detach()
    ro = rollout(
        model,
        prefill.captured.detach(),
        prefix_hidden(hidden, positions),
        cfg.n_rollouts,
        cfg.rollout_len,
        sampling_params(cfg),
        generator,
    )
    return ro, *true_continuation(input_ids, hidden, positions, cfg.rollout_len)


@torch.no_grad()
def branched_rollouts(
    model: FastWeightForCausalLM, batch: RolloutBatch, cfg: RefineConfig, timer: PhaseTimer
) -> tuple[Rollouts, Tensor, Tensor]:
    """Rollouts from states captured by one no-grad prefill (see `rollouts_from_states`)."""
    with timer.phase("prefill"):
        pre = model.prefill(batch.input_ids, capture=batch.positions, return_logits=False, return_final=False)
    with timer.phase("rollouts"):
        return rollouts_from_states(model, batch.input_ids, batch.positions, pre, cfg, batch.generator)


def _prefixed(input_ids: Tensor, positions: Tensor, tokens: Tensor) -> list[tuple[int, Tensor]]:
    """(p, cat(input_ids[b, :p], rollout)) for every stream, in (b, p, r) order; tokens [B, P, R, L]."""
    return [
        (int(positions[b, j]), torch.cat([input_ids[b, : int(positions[b, j])], tokens[b, j, r]]))
        for b in range(tokens.shape[0])
        for j in range(tokens.shape[1])
        for r in range(tokens.shape[2])
    ]


@torch.no_grad()
def naive_rollouts(
    model: FastWeightForCausalLM, batch: RolloutBatch, cfg: RefineConfig
) -> tuple[Rollouts, Tensor, Tensor]:
    """`branched_rollouts` the reference way: per-prefix prefills, then prefix + rollout re-run."""
    input_ids, positions, generator = batch.input_ids, batch.positions, batch.generator
    ro = naive_rollout(
        model, input_ids, positions, cfg.n_rollouts, cfg.rollout_len, sampling_params(cfg), generator
    )
    length = cfg.rollout_len
    # The reference's reward pass: each prefix + rollout re-run for the rollout's hidden states.
    hidden = [
        model.prefill(seq[None], return_logits=False, return_final=False).hidden[0, p : p + length]
        for p, seq in _prefixed(input_ids, positions, ro.tokens)
    ]
    ro.hidden = torch.stack(hidden).view_as(ro.hidden)
    main = model.prefill(input_ids, return_logits=False, return_final=False).hidden
    return ro, *true_continuation(input_ids, main, positions, length)


@dataclass
class ScoredRollouts:
    """Rollouts with what the loss needs of them: rewards {name: [B, P, R]}, advantages [N] and
    old log-probs [N, L] (N = B*P*R streams in (b, p, r) order)."""

    rollouts: Rollouts
    rewards: dict[str, Tensor]
    advantages: Tensor
    old_log_probs: Tensor


def _score(
    ro: Rollouts, true_tokens: Tensor, true_hidden: Tensor, cfg: RefineConfig, timer: PhaseTimer
) -> ScoredRollouts:
    with timer.phase("rewards"):
        names = list(dict.fromkeys([*METRIC_REWARDS, cfg.reward]))
        rewards = score_rollouts(ro, true_tokens, true_hidden, names)
        adv = group_advantages(rewards[cfg.reward], cfg.scale_by_std, cfg.adv_eps).flatten()
    return ScoredRollouts(ro, rewards, adv, ro.log_probs.flatten(0, 2))


def _policy_terms(
    logp: Tensor, ro_log_probs: Tensor, adv: Tensor, cfg: RefineConfig, ref_logp: Tensor | None
) -> tuple[Tensor, Tensor, PolicyLoss]:
    """GRPO loss (policy + kl_coef * KL) over N rollouts: logp, ro_log_probs, ref_logp [N, L]; adv [N]."""
    pl = clipped_policy_loss(
        logp, ro_log_probs, adv, None, cfg.clip_low, cfg.clip_high, cfg.dual_clip_c, cfg.loss_agg
    )
    kl = torch.zeros((), dtype=logp.dtype, device=logp.device)
    if ref_logp is not None:
        kl = aggregate_loss(kl_penalty(logp, ref_logp, cfg.kl_estimator), torch.ones_like(logp), cfg.loss_agg)
    return pl.loss + cfg.kl_coef * kl, kl, pl


def _branch_log_probs(
    model: FastWeightForCausalLM,
    hidden: Tensor,
    branch_logits: Tensor,
    positions: Tensor,
    tokens: Tensor,
    temperature: float,
) -> Tensor:
    """Policy log-probs of branch tokens [B, M, L]: y_0 from the head on hidden [B, T, D] at p-1
    (positions [B, M]), y_i from branch_logits [B, M, L, V] at i-1. The head runs on the M rows
    again rather than gathering them from the main logits: a gather's backward would fill and add
    a [B, T, V] gradient (1 GiB at 16K tokens) for M rows."""
    first = model.get_output_embeddings()(prefix_hidden(hidden, positions))  # [B, M, V]
    policy = torch.cat([first.unsqueeze(2), branch_logits[:, :, :-1]], dim=2)  # [B, M, L, V]
    return scaled_log_probs(policy, temperature).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _check(batch: RolloutBatch, opts: StepOptions) -> None:
    if opts.cfg.kl_coef > 0 and opts.ref_model is None:
        raise ValueError("refine.kl_coef > 0 needs a frozen reference model (StepOptions.ref_model)")
    if batch.positions is None:
        raise ValueError("refine.coef > 0 needs rollout positions [B, P] (see refine_tasks.train.positions)")


def _finish(stats: StepStats, batch: RolloutBatch, scored: ScoredRollouts) -> StepStats:
    stats.rewards = {
        n: (float(r.mean()), float(r.std()) if r.numel() > 1 else 0.0) for n, r in scored.rewards.items()
    }
    stats.tokens = batch.input_ids.numel() + scored.rollouts.tokens.numel()
    return stats


def fused_backward(model: FastWeightForCausalLM, batch: RolloutBatch, opts: StepOptions) -> StepStats:
    """The capturing prefill, with gradients, is the loss pass's main half; rollouts decode from
    its detached states; the branches continue from the captured states themselves."""
    _check(batch, opts)
    cfg, timer = opts.cfg, opts.timer
    with timer.phase("prefill"):
        main = model.prefill(batch.input_ids, capture=batch.positions, return_final=False)
    with timer.phase("rollouts"):
        ro, true_tokens, true_hidden = rollouts_from_states(
            model, batch.input_ids, batch.positions, main, cfg, batch.generator
        )
    scored = _score(ro, true_tokens, true_hidden, cfg, timer)
    b, p, r, length = ro.tokens.shape
    tokens = ro.tokens.reshape(b, p * r, length)
    with timer.phase("loss_forward"):
        state = main.captured.repeat_interleave(r)  # differentiable: gradients reach the prefix
        cont = continue_branches(model, state, tokens.reshape(b * p * r, length), opts.graphs)
        branch_logits = cont.view(b, p * r, length, -1)
    return _finish(
        _branch_loss(model, batch, main.logits, main.hidden, branch_logits, scored, opts), batch, scored
    )


def branched_backward(model: FastWeightForCausalLM, batch: RolloutBatch, opts: StepOptions) -> StepStats:
    """A no-grad capturing prefill for the rollouts, then ONE `forward_branched` loss pass."""
    _check(batch, opts)
    ro, true_tokens, true_hidden = branched_rollouts(model, batch, opts.cfg, opts.timer)
    return scored_backward(model, batch, _score(ro, true_tokens, true_hidden, opts.cfg, opts.timer), opts)


@torch.no_grad()
def sample_scored(model: FastWeightForCausalLM, batch: RolloutBatch, opts: StepOptions) -> ScoredRollouts:
    """The rollouts of a batch with their rewards, advantages and old log-probs, without gradients:
    what the reference's update protocol computes once per rollout batch before its optimizer
    steps (MidTrainer.reference_step). As the reference does, the old log-probs are recomputed by
    the loss pass's own forward (`forward_branched`) under the sampling weights, not taken from the
    decode, so that on the batch's first step the ratio is 1 in the loss pass's own numerics."""
    _check(batch, opts)
    ro, true_tokens, true_hidden = branched_rollouts(model, batch, opts.cfg, opts.timer)
    scored = _score(ro, true_tokens, true_hidden, opts.cfg, opts.timer)
    b, p, r, length = ro.tokens.shape
    branch_at = batch.positions.repeat_interleave(r, dim=1)
    tokens = ro.tokens.reshape(b, p * r, length)
    with opts.timer.phase("old_log_probs"):
        out = model.forward_branched(batch.input_ids, branch_at, tokens)
        old = _branch_log_probs(model, out.hidden, out.branch_logits, branch_at, tokens, opts.cfg.temperature)
    scored.old_log_probs = old.flatten(0, 1).to(torch.promote_types(old.dtype, torch.float32))
    return scored


def scored_backward(
    model: FastWeightForCausalLM, batch: RolloutBatch, scored: ScoredRollouts, opts: StepOptions
) -> StepStats:
    """ONE `forward_branched` loss pass over rollouts sampled before (`sample_scored`), under the
    current weights, backpropagated: once the weights moved, the ratio departs from 1."""
    ro = scored.rollouts
    b, p, r, length = ro.tokens.shape
    branch_at = batch.positions.repeat_interleave(r, dim=1)
    with opts.timer.phase("loss_forward"):
        out = model.forward_branched(batch.input_ids, branch_at, ro.tokens.reshape(b, p * r, length))
    return _finish(
        _branch_loss(model, batch, out.logits, out.hidden, out.branch_logits, scored, opts), batch, scored
    )


def _branch_loss(
    model: FastWeightForCausalLM,
    batch: RolloutBatch,
    logits: Tensor,
    hidden: Tensor,
    branch_logits: Tensor,
    scored: ScoredRollouts,
    opts: StepOptions,
) -> StepStats:
    """NTP over the sequence + coef * GRPO over the branches, backpropagated: logits [B, T, V] and
    hidden [B, T, D] of the main sequence, branch_logits [B, P*R, L, V]."""
    cfg, ro = opts.cfg, scored.rollouts
    b, p, r, length = ro.tokens.shape
    branch_at = batch.positions.repeat_interleave(r, dim=1)  # [B, P*R], stream (p, r) -> branch p*R + r
    tokens = ro.tokens.reshape(b, p * r, length)
    with opts.timer.phase("loss_forward"):
        ntp = ntp_loss(logits, batch.input_ids)
        logp = _branch_log_probs(model, hidden, branch_logits, branch_at, tokens, cfg.temperature).flatten(
            0, 1
        )
        ref_logp = None
        if opts.ref_model is not None and cfg.kl_coef > 0:
            with torch.no_grad():
                ref = opts.ref_model.forward_branched(batch.input_ids, branch_at, tokens)
                ref_logp = _branch_log_probs(
                    opts.ref_model, ref.hidden, ref.branch_logits, branch_at, tokens, cfg.temperature
                ).flatten(0, 1)
        grpo, kl, pl = _policy_terms(logp, scored.old_log_probs, scored.advantages, cfg, ref_logp)
        loss = refine_loss(ntp, grpo, cfg.coef)
    with opts.timer.phase("backward"):
        _backward(loss, opts.scale, opts)
    return StepStats(
        loss=float(loss.detach()),
        ntp=float(ntp.detach()),
        policy=float(pl.loss.detach()),
        kl=float(kl.detach()),
        clip_frac=float(pl.clip_frac),
        dual_clip_frac=float(pl.dual_clip_frac),
        ratio_mean=float(pl.ratio_mean),
    )


def naive_backward(model: FastWeightForCausalLM, batch: RolloutBatch, opts: StepOptions) -> StepStats:
    """The reference implementation's way: every prefix re-run to sample, prefix + rollout re-run
    for the reward's hidden states and again, with gradients, for the policy loss."""
    _check(batch, opts)
    with opts.timer.phase("rollouts"):
        ro, true_tokens, true_hidden = naive_rollouts(model, batch, opts.cfg)
    scored = _score(ro, true_tokens, true_hidden, opts.cfg, opts.timer)
    with opts.timer.phase("loss_and_backward"):
        stats = _naive_loss(model, batch, scored, opts)
    return _finish(stats, batch, scored)


MODES: dict[str, Callable[[FastWeightForCausalLM, RolloutBatch, StepOptions], StepStats]] = {
    "fused": fused_backward,
    "branched": branched_backward,
    "naive": naive_backward,
}


def refine_backward(model: FastWeightForCausalLM, batch: RolloutBatch, opts: StepOptions) -> StepStats:
    """ReFINE loss L = NTP + coef * GRPO on the batch, the way refine.mode names; coef = 0 runs the
    plain NTP step (positions unused, may be None)."""
    if opts.cfg.coef == 0.0:
        return ntp_backward(model, batch.input_ids, opts)
    return MODES[opts.cfg.mode](model, batch, opts)


def _stream_log_probs(m, seq: Tensor, p: int, length: int, temperature: float) -> Tensor:
    """Policy log-probs [1, L] of the last `length` tokens of seq [p + L], from a full forward."""
    logits = m(seq[None]).logits[:, p - 1 : p - 1 + length]
    return scaled_log_probs(logits, temperature).gather(-1, seq[None, p:, None]).squeeze(-1)


def _naive_loss(
    model: FastWeightForCausalLM, batch: RolloutBatch, scored: ScoredRollouts, opts: StepOptions
) -> StepStats:
    cfg, scale, ref_model = opts.cfg, opts.scale, opts.ref_model
    input_ids, positions, ro = batch.input_ids, batch.positions, scored.rollouts
    adv, old = scored.advantages, scored.old_log_probs
    ntp = ntp_loss(model(input_ids).logits, input_ids)
    ok = _backward(ntp, scale, opts)
    streams = _prefixed(input_ids, positions, ro.tokens)
    n = len(streams)
    # With every rollout the same length, each aggregation mode is the mean over rollouts of
    # that rollout's own aggregate, so the loss splits exactly into per-sequence backwards.
    totals = torch.zeros(6, dtype=torch.float64)
    for i, (p, seq) in enumerate(streams):
        ref_logp = None
        if ref_model is not None and cfg.kl_coef > 0:
            with torch.no_grad():
                ref_logp = _stream_log_probs(ref_model, seq, p, cfg.rollout_len, cfg.temperature)
        logp = _stream_log_probs(model, seq, p, cfg.rollout_len, cfg.temperature)
        grpo, kl, pl = _policy_terms(logp, old[i : i + 1], adv[i : i + 1], cfg, ref_logp)
        ok = _backward(grpo, scale * cfg.coef / n, opts) and ok  # every rank, every backward
        parts = [grpo, pl.loss, kl, pl.clip_frac, pl.dual_clip_frac, pl.ratio_mean]
        totals += torch.tensor([float(x.detach()) for x in parts], dtype=torch.float64) / n
    grpo_mean, policy, kl, clip, dual, ratio = totals.tolist()
    loss = float(ntp.detach()) + cfg.coef * grpo_mean if ok else float("nan")
    return StepStats(
        loss=loss,
        ntp=float(ntp.detach()),
        policy=policy,
        kl=kl,
        clip_frac=clip,
        dual_clip_frac=dual,
        ratio_mean=ratio,
    )
