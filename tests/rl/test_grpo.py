"""GRPO functions against a direct float64 re-derivation, element by element, on random inputs."""

from __future__ import annotations

import math

import pytest
import torch

from refine_tasks.rl.grpo import (
    aggregate_loss,
    clipped_policy_loss,
    group_advantages,
    kl_penalty,
    ntp_loss,
    refine_loss,
    token_log_probs,
)

AGG_MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]


def ref_advantages(rewards: torch.Tensor, scale_by_std: bool, eps: float) -> torch.Tensor:
    b, p, r = rewards.shape
    groups: dict[tuple, list[tuple[int, int, int]]] = {}
    for i in range(b):
        for j in range(p):
            for k in range(r):
                groups.setdefault((i,) if r == 1 else (i, j), []).append((i, j, k))
    out = torch.empty(b, p, r, dtype=torch.float64)
    for members in groups.values():
        vals = [float(rewards[m]) for m in members]
        n = len(vals)
        if n == 1:
            out[members[0]] = vals[0]
            continue
        mean = sum(vals) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
        for m, v in zip(members, vals, strict=True):
            out[m] = (v - mean) / (std + eps) if scale_by_std else v - mean
    return out


@pytest.mark.parametrize("shape", [(3, 8, 1), (2, 4, 3), (1, 1, 5), (2, 1, 1)])
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_group_advantages_match_reference(shape, scale_by_std):
    g = torch.Generator().manual_seed(sum(shape))
    rewards = torch.randn(*shape, generator=g, dtype=torch.float64) * 0.7 + 0.3
    got = group_advantages(rewards, scale_by_std=scale_by_std, eps=1e-6)
    want = ref_advantages(rewards, scale_by_std, 1e-6)
    assert got.shape == rewards.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_group_advantages_groups_per_sequence_when_one_rollout():
    rewards = torch.tensor([[[1.0], [3.0]], [[10.0], [30.0]]], dtype=torch.float64)
    adv = group_advantages(rewards, scale_by_std=False)
    # Each sequence is its own group: the second one's larger scale must not leak into the first.
    assert adv[0].flatten().tolist() == [-1.0, 1.0]
    assert adv[1].flatten().tolist() == [-10.0, 10.0]


def test_group_advantages_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\[B, P, R\]"):
        group_advantages(torch.randn(4, 2))


def ref_aggregate(loss: torch.Tensor, mask: torch.Tensor, mode: str) -> float:
    n, length = loss.shape
    if mode == "token-mean":
        num = sum(float(loss[i, t]) for i in range(n) for t in range(length) if mask[i, t])
        den = sum(1 for i in range(n) for t in range(length) if mask[i, t])
        return num / den
    per_seq = []
    for i in range(n):
        kept = [float(loss[i, t]) for t in range(length) if mask[i, t]]
        if kept:
            per_seq.append(sum(kept) / len(kept) if mode == "seq-mean-token-mean" else sum(kept))
    return sum(per_seq) / len(per_seq)


def random_policy_inputs(seed: int, n: int = 12, length: int = 5):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, length, generator=g, dtype=torch.float64) * 3
    # Log-ratios of scale 1.2 put many tokens outside [0.8, 1.2] and some past the dual bound 3.
    new = old + torch.randn(n, length, generator=g, dtype=torch.float64) * 1.2
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    mask = (torch.rand(n, length, generator=g) > 0.25).to(torch.float64)
    mask[0] = 0.0  # an empty rollout must not turn the seq-mean modes into 0/0
    return new.requires_grad_(True), old, adv, mask


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("clip", [(0.2, 0.2, 3.0), (0.1, 0.28, 2.0), (0.2, 0.2, None)])
def test_clipped_policy_loss_matches_reference(agg, clip):
    lo, hi, c = clip
    new, old, adv, mask = random_policy_inputs(seed=7)
    out = clipped_policy_loss(new, old, adv, mask, clip_low=lo, clip_high=hi, dual_clip_c=c, agg=agg)

    # Reference: the same loss element by element, with its own autograd graph for the gradient.
    new_ref = new.detach().clone().requires_grad_(True)
    n, length = new.shape
    token_losses = torch.stack(
        [
            torch.stack(
                [
                    _ref_token_loss_tensor(new_ref[i, t], float(old[i, t]), float(adv[i]), lo, hi, c)
                    for t in range(length)
                ]
            )
            for i in range(n)
        ]
    )
    want = ref_aggregate(token_losses.detach(), mask, agg)
    assert math.isclose(out.loss.item(), want, rel_tol=1e-12, abs_tol=1e-12)

    _ref_aggregate_tensor(token_losses, mask, agg).backward()
    out.loss.backward()
    torch.testing.assert_close(new.grad, new_ref.grad, rtol=1e-10, atol=1e-12)

    # Diagnostics from first principles.
    ratios = torch.exp(new.detach() - old)
    clipped_flags = [
        [
            -float(adv[i]) * min(max(float(ratios[i, t]), 1 - lo), 1 + hi)
            > -float(adv[i]) * float(ratios[i, t])
            for t in range(length)
        ]
        for i in range(n)
    ]
    assert math.isclose(
        float(out.clip_frac),
        ref_aggregate(torch.tensor(clipped_flags, dtype=torch.float64), mask, "token-mean"),
    )
    # The inputs really exercise the clipped branch, and the dual clip where it is on.
    assert float(out.clip_frac) > 0.1
    assert (float(out.dual_clip_frac) > 0.0) == (c is not None)


def _ref_token_loss_tensor(lp: torch.Tensor, old: float, a: float, lo: float, hi: float, c: float | None):
    ratio = torch.exp(lp - old)
    unclipped = -a * ratio
    clipped = -a * torch.clamp(ratio, 1 - lo, 1 + hi)
    loss = unclipped if unclipped.item() >= clipped.item() else clipped
    if c is not None and a < 0 and loss.item() > -a * c:
        loss = torch.zeros_like(loss) + (-a * c)
    return loss


def _ref_aggregate_tensor(loss: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "token-mean":
        return (loss * mask).sum() / mask.sum()
    rows = [i for i in range(loss.shape[0]) if mask[i].sum() > 0]
    per_seq = [
        (loss[i] * mask[i]).sum() / (mask[i].sum() if mode == "seq-mean-token-mean" else 1.0) for i in rows
    ]
    return torch.stack(per_seq).mean()


def test_dual_clip_bounds_negative_advantage_tokens():
    old = torch.zeros(3, 2, dtype=torch.float64)
    new = torch.log(torch.tensor([[5.0, 0.5], [5.0, 1.1], [2.0, 0.7]], dtype=torch.float64)).requires_grad_(
        True
    )
    adv = torch.tensor([-1.0, 1.0, -2.0], dtype=torch.float64)
    out = clipped_policy_loss(new, old, adv, dual_clip_c=3.0, agg="token-mean")
    # Token by token: ratio 5 with A=-1 is held at 3 (dual clip); 0.5 with A=-1 -> max(0.5, 0.8) = 0.8;
    # A=+1: ratio 5 -> min(5, 1.2) gives -1.2, ratio 1.1 -> -1.1; A=-2: ratio 2 -> 4, ratio 0.7 -> 1.6.
    want = [3.0, 0.8, -1.2, -1.1, 4.0, 1.6]
    assert math.isclose(out.loss.item(), sum(want) / 6, rel_tol=1e-12)
    assert math.isclose(float(out.dual_clip_frac), 1 / 6)
    out.loss.backward()
    assert new.grad[0, 0] == 0.0  # held at the bound: no gradient through the ratio


def test_first_epoch_ratio_is_one_and_loss_is_minus_mean_advantage():
    g = torch.Generator().manual_seed(3)
    lp = -torch.rand(4, 5, generator=g, dtype=torch.float64)
    adv = torch.randn(4, generator=g, dtype=torch.float64)
    new = lp.clone().requires_grad_(True)
    out = clipped_policy_loss(new, lp, adv)
    assert math.isclose(out.loss.item(), -float(adv.mean()), rel_tol=1e-12)
    assert float(out.clip_frac) == 0.0 and float(out.ratio_mean) == 1.0
    out.loss.backward()
    # d/dlp of -A * exp(lp - old) at ratio 1 is -A, spread over the 20 tokens.
    torch.testing.assert_close(new.grad, (-adv / 20).unsqueeze(-1).expand(4, 5))


def test_dual_clip_must_exceed_one():
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="dual_clip_c"):
        clipped_policy_loss(x, x, torch.ones(2), dual_clip_c=0.5)


@pytest.mark.parametrize("agg", AGG_MODES)
def test_aggregate_loss_matches_reference(agg):
    g = torch.Generator().manual_seed(11)
    loss = torch.randn(6, 7, generator=g, dtype=torch.float64)
    mask = (torch.rand(6, 7, generator=g) > 0.4).to(torch.float64)
    mask[2] = 0.0
    assert math.isclose(float(aggregate_loss(loss, mask, agg)), ref_aggregate(loss, mask, agg), rel_tol=1e-12)


def test_aggregate_loss_rejects_unknown_mode():
    with pytest.raises(ValueError, match="loss_agg='sum'"):
        aggregate_loss(torch.ones(2, 2), torch.ones(2, 2), "sum")


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_penalty_matches_formula_and_estimates_kl(estimator):
    g = torch.Generator().manual_seed(5)
    lp = -torch.rand(5, 4, generator=g, dtype=torch.float64) * 2
    ref = -torch.rand(5, 4, generator=g, dtype=torch.float64) * 2
    got = kl_penalty(lp, ref, estimator)
    for i in range(5):
        for t in range(4):
            d = float(ref[i, t]) - float(lp[i, t])
            want = -d if estimator == "k1" else math.exp(d) - d - 1
            assert math.isclose(float(got[i, t]), want, rel_tol=1e-12, abs_tol=1e-15)

    # Averaged over samples from pi, both estimators approach the true KL(pi || pi_ref).
    logits_p = torch.randn(6, generator=g, dtype=torch.float64)
    logits_q = torch.randn(6, generator=g, dtype=torch.float64)
    p, q = torch.softmax(logits_p, -1), torch.softmax(logits_q, -1)
    true_kl = float((p * (p.log() - q.log())).sum())
    draws = torch.multinomial(p, 200_000, replacement=True, generator=g)
    est = kl_penalty(p.log()[draws], q.log()[draws], estimator).mean()
    assert abs(float(est) - true_kl) < 0.02 * max(true_kl, 0.1) + 5e-3
    if estimator == "k3":
        assert float(got.min()) >= 0.0


def test_kl_penalty_rejects_unknown_estimator():
    with pytest.raises(ValueError, match="k2"):
        kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k2")


def test_token_log_probs_and_ntp_loss_match_reference():
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 6, 11, generator=g, dtype=torch.float64) * 2
    ids = torch.randint(0, 11, (2, 6), generator=g)

    def ref_logp(row: torch.Tensor, tok: int) -> float:
        m = max(float(v) for v in row)
        return float(row[tok]) - (m + math.log(sum(math.exp(float(v) - m) for v in row)))

    lp = token_log_probs(logits, ids)
    for b in range(2):
        for t in range(6):
            assert math.isclose(float(lp[b, t]), ref_logp(logits[b, t], int(ids[b, t])), rel_tol=1e-12)
    want = -sum(ref_logp(logits[b, t], int(ids[b, t + 1])) for b in range(2) for t in range(5)) / 10
    assert math.isclose(float(ntp_loss(logits, ids)), want, rel_tol=1e-12)
    # bf16 logits are scored in float32, not in bf16.
    assert token_log_probs(logits.to(torch.bfloat16), ids).dtype == torch.float32


def test_refine_loss_combines_and_baseline_ignores_policy():
    ntp = torch.tensor(2.5, dtype=torch.float64)
    pol = torch.tensor(-0.75, dtype=torch.float64)
    assert float(refine_loss(ntp, pol, 0.2)) == pytest.approx(2.5 - 0.15, rel=1e-12)
    # c = 0 is the NTP-SFT baseline: a NaN policy term must not reach the loss.
    assert float(refine_loss(ntp, torch.tensor(float("nan")), 0.0)) == 2.5
