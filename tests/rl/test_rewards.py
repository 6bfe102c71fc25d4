"""Rewards against a float64 re-derivation token by token; the registry and its errors."""

from __future__ import annotations

import math

import pytest
import torch

from refine_tasks.rl.rewards import REWARDS, exact_reward, get_reward, register_reward


def random_rollouts(seed: int, n: int = 6, length: int = 5, dim: int = 8, vocab: int = 4):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n, length), generator=g)
    true_tokens = torch.randint(0, vocab, (n, length), generator=g)
    hidden = torch.randn(n, length, dim, generator=g, dtype=torch.float64)
    true_hidden = torch.randn(n, length, dim, generator=g, dtype=torch.float64)
    return tokens, hidden, true_tokens, true_hidden


def ref_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    dot = sum(float(x) * float(y) for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(float(x) ** 2 for x in a)) * math.sqrt(sum(float(y) ** 2 for y in b)))


def ref_reward(name: str, tokens, hidden, true_tokens, true_hidden) -> list[float]:
    out = []
    for i in range(tokens.shape[0]):
        per_token = []
        for t in range(tokens.shape[1]):
            cos = ref_cos(hidden[i, t], true_hidden[i, t])
            match = 1.0 if int(tokens[i, t]) == int(true_tokens[i, t]) else 0.0
            per_token.append({"cosine": cos, "exact": match, "hybrid": cos + match}[name])
        out.append(sum(per_token) / len(per_token))
    return out


@pytest.mark.parametrize("name", ["cosine", "exact", "hybrid"])
def test_rewards_match_reference(name):
    args = random_rollouts(seed=len(name))
    got = get_reward(name)(*args)
    want = ref_reward(name, *args)
    assert got.shape == (6,) and got.dtype == torch.float64
    for g, w in zip(got.tolist(), want, strict=True):
        assert math.isclose(g, w, rel_tol=1e-12, abs_tol=1e-12)
    # A small vocabulary makes matches common: the exact part must not be trivially zero.
    assert name == "cosine" or max(want) > 0


def test_rewards_keep_leading_dims_and_score_bf16_in_float32():
    tokens, hidden, true_tokens, true_hidden = random_rollouts(seed=1, n=6)
    shaped = [x.reshape(2, 3, *x.shape[1:]) for x in (tokens, hidden, true_tokens, true_hidden)]
    got = get_reward("hybrid")(*shaped)
    assert got.shape == (2, 3)
    torch.testing.assert_close(got.flatten(), get_reward("hybrid")(tokens, hidden, true_tokens, true_hidden))
    bf16 = get_reward("cosine")(tokens, hidden.bfloat16(), true_tokens, true_hidden.bfloat16())
    assert bf16.dtype == torch.float32


def test_identical_rollout_gets_the_maximum():
    tokens, hidden, _, _ = random_rollouts(seed=2)
    assert torch.allclose(
        get_reward("hybrid")(tokens, hidden, tokens, hidden), torch.full((6,), 2.0).double()
    )


def test_registry_resolves_new_names_and_import_paths():
    @register_reward("test_negated_exact")
    def negated(tokens, hidden, true_tokens, true_hidden):
        return -exact_reward(tokens, hidden, true_tokens, true_hidden)

    try:
        args = random_rollouts(seed=3)
        torch.testing.assert_close(get_reward("test_negated_exact")(*args), -exact_reward(*args))
        assert get_reward("refine_tasks.rl.rewards:exact_reward") is exact_reward
        with pytest.raises(ValueError, match="already registered"):
            register_reward("test_negated_exact")(exact_reward)
    finally:
        REWARDS.pop("test_negated_exact")


@pytest.mark.parametrize(
    ("name", "message"),
    [("cosin", r"unknown: choose one of \['cosine', 'exact', 'hybrid'"), ("no_such_mod:fn", "cannot import")],
)
def test_unknown_reward_is_a_clear_error(name, message):
    with pytest.raises(ValueError, match=message):
        get_reward(name)
