"""The ReFINE step: branched == fused == naive (same positions, rollouts, loss and gradients), float64 CPU."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from refine_tasks.config import RefineConfig
from refine_tasks.models import build_model
from refine_tasks.rl.grpo import ntp_loss
from refine_tasks.train.step import (
    PhaseTimer,
    RolloutBatch,
    StepOptions,
    branched_rollouts,
    naive_rollouts,
    ntp_backward,
    refine_backward,
)

VOCAB = 53


def tiny(seed: int = 0, mixer: str = "deltanet"):
    torch.manual_seed(seed)
    model = build_model("tiny", vocab_size=VOCAB, mixer=mixer).double()
    with torch.no_grad():
        # Sharper next-token distributions than the 0.02 init: matches and clipping become likely.
        model.get_output_embeddings().weight.mul_(30.0)
    return model


def batch(model, seed: int, b: int = 2, t: int = 40, p: int = 3, rollout_len: int = 4):
    """Text sampled from the model itself (so rollouts often match it exactly) and random positions."""
    g = torch.Generator().manual_seed(seed)
    token = torch.randint(0, VOCAB, (b,), generator=g)
    state, ids = model.empty_state(b), [token]
    for _ in range(t - 1):
        out = model.decode(state, token)
        state, token = out.state, torch.multinomial(out.logits.softmax(-1), 1, generator=g).squeeze(-1)
        ids.append(token)
    positions = torch.stack(
        [torch.randperm(t - rollout_len - 1, generator=g)[:p].sort().values + 1 for _ in range(b)]
    )
    return torch.stack(ids, dim=1), positions


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def run(model, mode: str, cfg: RefineConfig, ids, positions, seed: int, ref=None, timer=None):
    model.zero_grad(set_to_none=True)
    opts = StepOptions(cfg.model_copy(update={"mode": mode}), 0.5, ref, timer or PhaseTimer())
    stats = refine_backward(model, RolloutBatch(ids, positions, torch.Generator().manual_seed(seed)), opts)
    return stats, grads(model)


CASES = [
    {"n_rollouts": 1},
    {"n_rollouts": 2, "reward": "hybrid", "loss_agg": "seq-mean-token-sum", "temperature": 0.8},
    {
        "n_rollouts": 1,
        "reward": "exact",
        "loss_agg": "seq-mean-token-mean",
        "scale_by_std": False,
        "top_k": 10,
    },
    {"n_rollouts": 2, "kl_coef": 0.3, "kl_estimator": "k3", "dual_clip_c": None, "top_p": 0.9},
    {"n_rollouts": 1, "kl_coef": 0.1, "kl_estimator": "k1", "clip_low": 0.1, "clip_high": 0.3},
]


# Every option combination on DeltaNet; the same step on LaCT (a per-mixer check of the state API use).
MIXER_CASES = [(i, "deltanet") for i in range(len(CASES))] + [(1, "lact"), (3, "lact")]


@pytest.mark.parametrize(("case_index", "mixer"), MIXER_CASES, ids=[f"{m}-{i}" for i, m in MIXER_CASES])
def test_branched_step_equals_naive_step(case_index, mixer):
    case = CASES[case_index]
    cfg = RefineConfig(rollout_len=4, coef=0.5, **case)
    model = tiny(mixer=mixer)
    ids, positions = batch(model, seed=len(case))
    ref = None
    if cfg.kl_coef > 0:
        ref = tiny(seed=1, mixer=mixer)  # a different frozen model: the KL term is far from zero
        ref.requires_grad_(False)

    fast_ro = branched_rollouts(
        model, RolloutBatch(ids, positions, torch.Generator().manual_seed(9)), cfg, PhaseTimer()
    )
    slow_ro = naive_rollouts(model, RolloutBatch(ids, positions, torch.Generator().manual_seed(9)), cfg)
    assert torch.equal(fast_ro[0].tokens, slow_ro[0].tokens)  # same sampled rollouts
    assert torch.equal(fast_ro[1], slow_ro[1])
    for a, b in [
        (fast_ro[0].hidden, slow_ro[0].hidden),
        (fast_ro[0].log_probs, slow_ro[0].log_probs),
        (fast_ro[2], slow_ro[2]),
    ]:
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)

    slow, g_slow = run(copy.deepcopy(model), "naive", cfg, ids, positions, seed=9, ref=ref)
    for mode in ("branched", "fused"):
        fast, g_fast = run(model, mode, cfg, ids, positions, seed=9, ref=ref)
        for name in ("loss", "ntp", "policy", "kl", "clip_frac", "dual_clip_frac", "ratio_mean"):
            assert math.isclose(getattr(fast, name), getattr(slow, name), rel_tol=1e-9, abs_tol=1e-12), (
                mode,
                name,
            )
        assert fast.rewards.keys() == slow.rewards.keys() >= {"cosine", "exact", "hybrid"}
        for name, (mean, std) in fast.rewards.items():
            assert math.isclose(mean, slow.rewards[name][0], rel_tol=1e-9, abs_tol=1e-12), (mode, name)
            assert math.isclose(std, slow.rewards[name][1], rel_tol=1e-9, abs_tol=1e-12), (mode, name)
        assert g_fast.keys() == g_slow.keys() and len(g_fast) == len(list(model.parameters()))
        for name, g in g_fast.items():
            err = float((g - g_slow[name]).norm() / g_slow[name].norm().clamp_min(1e-30))
            assert err < 1e-9, (mode, name, err)
    # First and only epoch: old log-probs are the rollout's own, so the ratio is 1.
    assert abs(fast.ratio_mean - 1.0) < 1e-9
    assert (fast.kl != 0.0) == (cfg.kl_coef > 0)
    assert fast.rewards["exact"][0] > 0  # sampled from the model itself: some rollouts match the text

    # The GRPO term really reaches the gradients (the comparison above is not just NTP == NTP).
    model.zero_grad(set_to_none=True)
    ntp_backward(model, ids, StepOptions(RefineConfig(coef=0.0), 0.5))
    ntp_only = grads(model)
    assert max(float((g_fast[n] - ntp_only[n]).abs().max()) for n in g_fast) > 1e-6


def test_coef_zero_is_the_ntp_baseline():
    cfg = RefineConfig(rollout_len=4, coef=0.0)
    model = tiny()
    ids, positions = batch(model, seed=11)
    stats, g = run(model, "branched", cfg, ids, positions, seed=1)
    model.zero_grad(set_to_none=True)
    (0.5 * ntp_loss(model(ids).logits, ids)).backward()
    assert stats.loss == stats.ntp and stats.rewards == {}
    for n, p in model.named_parameters():
        torch.testing.assert_close(g[n], p.grad, rtol=1e-12, atol=0)


def test_non_finite_loss_is_reported_not_backpropagated():
    model = tiny()
    ids, positions = batch(model, seed=12)
    with torch.no_grad():
        model.get_output_embeddings().weight[3, 0] = float("nan")
    for mode in ("branched", "fused", "naive"):
        stats, g = run(model, mode, RefineConfig(rollout_len=4), ids, positions, seed=2)
        assert not stats.finite and g == {}, mode


def test_kl_without_reference_is_a_clear_error():
    model = tiny()
    ids, positions = batch(model, seed=13)
    with pytest.raises(ValueError, match="kl_coef > 0 needs a frozen reference"):
        refine_backward(
            model, RolloutBatch(ids, positions), StepOptions(RefineConfig(rollout_len=4, kl_coef=0.1))
        )


@pytest.mark.parametrize(
    ("mode", "phases"),
    [
        ("fused", {"prefill", "rollouts", "rewards", "loss_forward", "backward"}),
        ("branched", {"prefill", "rollouts", "rewards", "loss_forward", "backward"}),
        ("naive", {"rollouts", "rewards", "loss_and_backward"}),
    ],
)
def test_phase_timer_times_each_phase_without_changing_the_step(mode, phases):
    cfg = RefineConfig(rollout_len=4, n_rollouts=2)
    model = tiny()
    ids, positions = batch(model, seed=14)
    plain, g_plain = run(model, mode, cfg, ids, positions, seed=3)
    timer = PhaseTimer(timing=True)
    timed, g_timed = run(model, mode, cfg, ids, positions, seed=3, timer=timer)
    seconds = timer.seconds
    assert set(seconds) == phases and all(s > 0 for s in seconds.values())
    assert timed.loss == plain.loss and all(torch.equal(g_timed[n], g) for n, g in g_plain.items())
    fresh = PhaseTimer(timing=True)
    run(model, mode, cfg, ids, positions, seed=3)  # another timer: nothing is collected in this one
    assert fresh.seconds == {} and timer.seconds == seconds
