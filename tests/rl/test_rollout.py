"""Rollouts: sampling filters, indexing against full-sequence forwards, and branched == naive."""

from __future__ import annotations

import math

import pytest
import torch

from refine_tasks.models import build_model
from refine_tasks.rl.rollout import (
    SamplingParams,
    filter_logits,
    naive_rollout,
    prefix_hidden,
    rollout,
    sample_tokens,
    scaled_log_probs,
    true_continuation,
)

VOCAB = 61


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model("tiny", vocab_size=VOCAB).double().eval()
    with torch.no_grad():
        m.get_output_embeddings().weight.mul_(40.0)  # peaked next-token distributions: indexing shows
    return m


def test_filter_logits_matches_reference():
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(5, 12, generator=g, dtype=torch.float64) * 2, -1)
    for top_k, top_p in [(3, 1.0), (0, 0.6), (5, 0.8), (0, 0.0001)]:
        got = filter_logits(logp, top_k, top_p)
        for i in range(5):
            row = sorted(((float(v), t) for t, v in enumerate(logp[i])), reverse=True)
            row = row[:top_k] if top_k else row
            # Like Hugging Face's warpers: the nucleus is taken on the top-k distribution renormalised.
            total = sum(math.exp(v) for v, _ in row)
            keep, mass = set(), 0.0
            for v, t in row:
                if mass >= top_p:
                    break
                keep.add(t)
                mass += math.exp(v) / total
            kept = {t for t in range(12) if math.isfinite(float(got[i, t]))}
            assert kept == keep, (top_k, top_p, i)


def test_sample_tokens_follow_the_tempered_filtered_distribution():
    logits = torch.randn(1, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.5
    params = SamplingParams(temperature=0.7, top_k=6, top_p=0.95)
    n = 50_000
    tokens, lps = sample_tokens(logits.expand(n, 8), params, torch.Generator().manual_seed(2))
    logp = torch.log_softmax(logits[0] / 0.7, -1)
    torch.testing.assert_close(lps, logp[tokens], rtol=1e-12, atol=0)  # the full tempered policy
    probs = filter_logits(logp[None], 6, 0.95)[0].softmax(-1)
    support = [t for t in range(8) if probs[t] > 0]
    assert set(tokens.unique().tolist()) <= set(support) and len(support) < 8
    counts = torch.bincount(tokens, minlength=8).double()[support]
    expected = probs[support] * n
    stat = float(((counts - expected) ** 2 / expected).sum())
    df = len(support) - 1
    c = 2.0 / (9.0 * df)
    assert stat < df * (1.0 - c + 3.719 * math.sqrt(c)) ** 3  # chi-square upper 0.9999 quantile


def random_case(seed: int, b: int = 2, t: int = 48, p: int = 3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    positions = torch.stack([torch.randperm(t - 8, generator=g)[:p].sort().values + 1 for _ in range(b)])
    return ids, positions


def rollout_at(model, ids, positions, n_rollouts: int, length: int, params: SamplingParams, seed: int):
    """The prefill capturing at `positions` and `rollout` from its states."""
    pre = model.prefill(ids, capture=positions)
    g = torch.Generator().manual_seed(seed)
    return pre, rollout(
        model, pre.captured, prefix_hidden(pre.hidden, positions), n_rollouts, length, params, g
    )


@pytest.mark.parametrize("n_rollouts", [1, 3])
def test_rollout_matches_full_sequence_forwards(model, n_rollouts):
    ids, positions = random_case(seed=n_rollouts)
    length = 4
    _, ro = rollout_at(model, ids, positions, n_rollouts, length, SamplingParams(temperature=0.9), seed=3)
    b, p = positions.shape
    assert ro.tokens.shape == (b, p, n_rollouts, length) and ro.hidden.shape == (b, p, n_rollouts, length, 64)
    for i in range(b):
        for j in range(p):
            pos = int(positions[i, j])
            for r in range(n_rollouts):
                y = ro.tokens[i, j, r]
                # Stream (b, p, r) is exactly the sequence x[:p] followed by its own tokens.
                out = model(torch.cat([ids[i, :pos], y])[None])
                logits = out.logits[0].detach()
                hidden = model.prefill(torch.cat([ids[i, :pos], y])[None], return_logits=False).hidden[0]
                torch.testing.assert_close(
                    ro.hidden[i, j, r], hidden[pos : pos + length], rtol=1e-9, atol=1e-12
                )
                want_lp = scaled_log_probs(logits[pos - 1 : pos - 1 + length], 0.9).gather(-1, y[:, None])[
                    :, 0
                ]
                torch.testing.assert_close(ro.log_probs[i, j, r], want_lp, rtol=1e-9, atol=1e-12)
    if n_rollouts > 1:
        assert not torch.equal(ro.tokens[..., 0, :], ro.tokens[..., 1, :])  # independent streams


def test_first_token_is_drawn_after_the_prefix(model):
    """y_0 ~ softmax(logits[p-1]): thousands of one-token rollouts from one position."""
    ids, _ = random_case(seed=5, b=1)
    positions = torch.tensor([[20]])
    n = 4000
    pre, ro = rollout_at(model, ids, positions, n, 1, SamplingParams(), seed=4)
    counts = torch.bincount(ro.tokens.flatten(), minlength=VOCAB).double()
    want = pre.logits[0, 19].softmax(-1)
    wrong = pre.logits[0, 20].softmax(-1)  # one token too late
    assert (counts / n - want).abs().sum() < 0.12
    assert (want - wrong).abs().sum() > 0.5  # the model is peaked enough to tell the two apart


def test_naive_rollout_samples_the_same_tokens(model):
    ids, positions = random_case(seed=6)
    params = SamplingParams(temperature=1.0, top_k=20)
    _, fast = rollout_at(model, ids, positions, 2, 5, params, seed=7)
    slow = naive_rollout(model, ids, positions, 2, 5, params, torch.Generator().manual_seed(7))
    assert torch.equal(fast.tokens, slow.tokens)
    torch.testing.assert_close(fast.log_probs, slow.log_probs, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(fast.hidden, slow.hidden, rtol=1e-9, atol=1e-12)


def test_true_continuation_gathers_the_next_tokens():
    g = torch.Generator().manual_seed(8)
    ids = torch.randint(0, 100, (2, 30), generator=g)
    hidden = torch.randn(2, 30, 5, generator=g)
    positions = torch.tensor([[3, 10], [25, 7]])
    tokens, true_hidden = true_continuation(ids, hidden, positions, 4)
    for i in range(2):
        for j in range(2):
            p = int(positions[i, j])
            assert torch.equal(tokens[i, j], ids[i, p : p + 4])
            assert torch.equal(true_hidden[i, j], hidden[i, p : p + 4])
    assert torch.equal(prefix_hidden(hidden, positions)[1, 0], hidden[1, 24])
