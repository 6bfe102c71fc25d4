"""GRPO for ReFINE as small pure functions over tensors (no model, no config object).

The trainer wires them: rewards -> `group_advantages` -> `clipped_policy_loss` (+ optional
`kl_penalty`) -> `refine_loss(ntp_loss(...), policy, coef)`. Every option is documented at
the function that takes it; defaults are the paper's (eps 0.2 both sides, dual-clip c = 3,
token-mean, no KL, coef 0.2).

Shapes: B sequences, P positions per sequence (`n_chunks`), R rollouts per position
(`n_rollouts`), L rollout tokens, V vocabulary, N = B*P*R rollouts when flattened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]
KLEstimator = Literal["k1", "k3"]

# exp() of a log-ratio beyond this overflows float32/bf16 long before it carries information.
_MAX_LOG_RATIO = 20.0


def group_advantages(rewards: Tensor, scale_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """GRPO advantage A = (r - mean_group) / (std_group + eps), one scalar per rollout.

    rewards: [B, P, R]. The group is every rollout of one sequence when R == 1 (the P
    positions compete with each other), else the R rollouts of one position.
    scale_by_std: divide by the group's std (GRPO); False keeps only the mean baseline
    (Dr.GRPO). std is the unbiased sample std, as in verl and TRL.
    A group of one rollout has no baseline: like verl, its advantage is its raw reward.
    Returns [B, P, R] in float32 (or float64 when the rewards are), detached.
    """
    if rewards.dim() != 3:
        raise ValueError(f"rewards: expected [B, P, R], got shape {tuple(rewards.shape)}")
    b, p, r = rewards.shape
    grouped = rewards.detach().reshape(b, p * r) if r == 1 else rewards.detach()
    if grouped.shape[-1] == 1:
        return rewards.detach().clone()
    mean = grouped.mean(dim=-1, keepdim=True)
    centred = grouped - mean
    if scale_by_std:
        centred = centred / (grouped.std(dim=-1, keepdim=True) + eps)
    return centred.reshape(b, p, r)


def token_log_probs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log pi(token | context) for each token: logits [..., L, V], tokens [..., L] -> [..., L].

    Computed in float32 at least: a bf16 log-softmax loses the small differences that the
    policy ratio is made of.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logp = torch.log_softmax(logits.to(dtype), dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def aggregate_loss(loss: Tensor, mask: Tensor, mode: LossAgg = "token-mean") -> Tensor:
    """Reduce a per-token loss [N, L] under mask [N, L] (1 = counts) to a scalar.

    token-mean: sum over all kept tokens / number of kept tokens (paper, DAPO).
    seq-mean-token-mean: mean over rollouts of each rollout's token mean (original GRPO).
    seq-mean-token-sum: mean over rollouts of each rollout's token sum (Dr.GRPO-like).
    Rollouts with no kept token are left out of the seq-mean modes rather than counted as 0/0.
    """
    mask = mask.to(loss.dtype)
    masked = loss * mask
    if mode == "token-mean":
        return masked.sum() / mask.sum().clamp_min(1.0)
    counts = mask.sum(dim=-1)
    per_seq = masked.sum(dim=-1)
    if mode == "seq-mean-token-mean":
        per_seq = per_seq / counts.clamp_min(1.0)
    elif mode != "seq-mean-token-sum":
        raise ValueError(f"loss_agg={mode!r}: expected token-mean, seq-mean-token-mean or seq-mean-token-sum")
    kept = (counts > 0).to(loss.dtype)
    return (per_seq * kept).sum() / kept.sum().clamp_min(1.0)


@dataclass
class PolicyLoss:
    """The clipped policy-gradient loss and its diagnostics (diagnostics are detached)."""

    loss: Tensor  # scalar, differentiable
    clip_frac: Tensor  # share of kept tokens where the clipped term was the active one
    dual_clip_frac: Tensor  # share of kept tokens held at -A*c by the dual clip (A < 0)
    ratio_mean: Tensor  # mean of pi/pi_old over kept tokens


def clipped_policy_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip_c: float | None = 3.0,
    agg: LossAgg = "token-mean",
) -> PolicyLoss:
    """PPO/GRPO clipped surrogate, negated to a loss.

    log_probs: [N, L] under the current weights (differentiable); old_log_probs: [N, L]
    under the weights that sampled the rollouts; advantages: [N] (one per rollout, placed
    on every token) or [N, L]; mask: [N, L] (None: every token counts).
    Per token, with ratio r = exp(log_probs - old_log_probs):
      loss = max(-A*r, -A*clip(r, 1 - clip_low, 1 + clip_high))   (separate eps, DAPO's clip-higher)
    and for A < 0 the dual clip (Ye et al. 2020) bounds it: loss = min(loss, -A*c), c > 1,
    so one huge ratio on a bad action cannot blow up the step. dual_clip_c=None turns it off.
    agg: how tokens are reduced (see `aggregate_loss`).
    """
    if dual_clip_c is not None and dual_clip_c <= 1.0:
        raise ValueError(f"dual_clip_c={dual_clip_c}: must be > 1 (or None to disable)")
    if mask is None:
        mask = torch.ones_like(log_probs)
    adv = advantages.unsqueeze(-1) if advantages.dim() == log_probs.dim() - 1 else advantages
    log_ratio = (log_probs - old_log_probs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    dual_active = torch.zeros_like(loss, dtype=torch.bool)
    if dual_clip_c is not None:
        bound = -adv * dual_clip_c
        dual_active = (adv < 0) & (loss > bound)
        loss = torch.where(adv < 0, torch.minimum(loss, bound), loss)

    def share(flags: Tensor) -> Tensor:
        return aggregate_loss(flags.to(log_probs.dtype), mask, "token-mean").detach()

    return PolicyLoss(
        loss=aggregate_loss(loss, mask, agg),
        clip_frac=share(clipped > unclipped),
        dual_clip_frac=share(dual_active),
        ratio_mean=aggregate_loss(ratio.detach(), mask, "token-mean"),
    )


def kl_penalty(log_probs: Tensor, ref_log_probs: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi: [N, L] -> [N, L].

    k1: log pi - log pi_ref (unbiased, high variance, can be negative).
    k3: exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1 (Schulman's estimator:
    unbiased, always >= 0, lower variance); used by GRPO.
    Reduce with `aggregate_loss` and add kl_coef times it to the policy loss.
    """
    diff = log_probs - ref_log_probs
    if estimator == "k1":
        return diff
    if estimator == "k3":
        neg = (-diff).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        return torch.exp(neg) - neg - 1.0
    raise ValueError(f"kl_estimator={estimator!r}: expected 'k1' or 'k3'")


def ntp_loss(logits: Tensor, input_ids: Tensor) -> Tensor:
    """Next-token cross-entropy over the whole sequence: logits [B, T, V], input_ids [B, T].

    logits[:, t] predicts input_ids[:, t + 1]; the mean is over the B*(T-1) predictions.
    """
    vocab = logits.shape[-1]
    pred = logits[:, :-1].reshape(-1, vocab)
    dtype = torch.promote_types(pred.dtype, torch.float32)
    return F.cross_entropy(pred.to(dtype), input_ids[:, 1:].reshape(-1))


def refine_loss(ntp: Tensor, policy: Tensor, coef: float = 0.2) -> Tensor:
    """ReFINE's objective L = NTP + coef * L_GRPO (coef 0.2 mid/post-training, 0.4 test-time).

    coef = 0 is the NTP-SFT baseline: the policy term then adds no gradient at all.
    """
    if coef == 0.0:
        return ntp
    return ntp + coef * policy
