"""Entropy, smoothing and position selection against float64 references and sampling statistics."""

from __future__ import annotations

import math

import pytest
import torch

from refine_tasks.rl.positions import (
    check_sequence_length,
    chunk_bounds,
    entropy_window,
    select_positions,
    smooth_entropy,
    token_entropy,
    valid_span,
)


def test_entropy_window_is_odd():
    assert [entropy_window(n) for n in (1, 4, 5, 8)] == [1, 5, 5, 9]


def test_token_entropy_matches_reference_and_never_sees_more_than_a_chunk():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 37, 8, generator=g, dtype=torch.float64)
    head = torch.nn.Linear(8, 50, bias=False, dtype=torch.float64)
    torch.nn.init.normal_(head.weight, std=0.8, generator=g)
    seen: list[int] = []
    head.register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[1]))
    got = token_entropy(hidden, head, chunk=5)
    assert max(seen) == 5 and sum(seen) == 37  # chunked over the sequence, every token once
    logits = hidden @ head.weight.detach().T
    for b in range(2):
        for t in range(37):
            row = [float(v) for v in logits[b, t]]
            m = max(row)
            z = sum(math.exp(v - m) for v in row)
            want = -sum(math.exp(v - m) / z * ((v - m) - math.log(z)) for v in row)
            assert math.isclose(float(got[b, t]), want, rel_tol=1e-10)


def test_token_entropy_of_bf16_head_is_float32():
    head = torch.nn.Linear(4, 9).to(torch.bfloat16)
    out = token_entropy(torch.randn(1, 6, 4, dtype=torch.bfloat16), head, chunk=4)
    assert out.dtype == torch.float32 and out.shape == (1, 6)
    assert bool((out >= 0).all()) and bool((out <= math.log(9) + 1e-2).all())


@pytest.mark.parametrize("window", [1, 3, 5, 9])
def test_smooth_entropy_is_a_centred_zero_padded_mean(window):
    g = torch.Generator().manual_seed(window)
    h = torch.rand(3, 23, generator=g, dtype=torch.float64) * 4
    got = smooth_entropy(h, window)
    half = window // 2
    for b in range(3):
        for t in range(23):
            vals = [float(h[b, s]) for s in range(t - half, t + half + 1) if 0 <= s < 23]
            assert math.isclose(float(got[b, t]), sum(vals) / window, rel_tol=1e-12)


def test_smooth_entropy_rejects_even_window():
    with pytest.raises(ValueError, match="odd"):
        smooth_entropy(torch.rand(1, 10), 4)


def test_short_sequence_is_a_clear_error():
    check_sequence_length(360, n_chunks=8, rollout_len=5, margin=20)
    with pytest.raises(ValueError, match=r"sequence length 359 .* = 360: raise train.seq_len"):
        check_sequence_length(359, n_chunks=8, rollout_len=5, margin=20)
    with pytest.raises(ValueError, match="shorter than"):
        select_positions(torch.rand(2, 100), n_chunks=4, rollout_len=5, method="argmax")


def test_chunk_bounds_cover_the_span_in_near_equal_parts():
    bounds = chunk_bounds(20, 120, 7)
    assert bounds[0][0] == 20 and bounds[-1][1] == 121
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("method", ["entropy", "uniform", "argmax", "argmin"])
@pytest.mark.parametrize(("t", "rollout_len", "margin"), [(400, 5, 20), (300, 30, 10)])
def test_positions_respect_bounds_and_chunks(method, t, rollout_len, margin):
    g = torch.Generator().manual_seed(1)
    entropy = torch.rand(5, t, generator=g) * 3
    pos = select_positions(entropy, 6, rollout_len, method, margin, torch.Generator().manual_seed(2))
    lo, hi = valid_span(t, rollout_len, margin)
    assert pos.shape == (5, 6) and pos.dtype == torch.long
    assert int(pos.min()) >= margin and int(pos.max()) <= t - margin and int(pos.max()) + rollout_len <= t
    for j, (start, stop) in enumerate(chunk_bounds(lo, hi, 6)):
        assert bool(((pos[:, j] >= start) & (pos[:, j] < stop)).all())


@pytest.mark.parametrize("method", ["argmax", "argmin"])
def test_argmax_argmin_pick_the_extreme_smoothed_entropy(method):
    g = torch.Generator().manual_seed(3)
    entropy = torch.rand(2, 200, generator=g, dtype=torch.float64) * 5
    pos = select_positions(entropy, 4, 4, method, margin=20)
    smoothed = smooth_entropy(entropy, 5)
    for b in range(2):
        for j, (start, stop) in enumerate(chunk_bounds(*valid_span(200, 4, 20), 4)):
            scores = {p: float(smoothed[b, p - 1]) for p in range(start, stop)}
            best = (max if method == "argmax" else min)(scores, key=scores.get)
            assert int(pos[b, j]) == best


def test_sampling_is_deterministic_under_a_seed():
    entropy = torch.rand(3, 500, generator=torch.Generator().manual_seed(4)) * 2
    draw = [
        select_positions(entropy, 8, 5, "entropy", 20, torch.Generator().manual_seed(s)) for s in (7, 7, 8)
    ]
    assert torch.equal(draw[0], draw[1])
    assert not torch.equal(draw[0], draw[2])


def chi_square_critical(df: int, z: float = 3.719) -> float:
    """Upper 0.9999 quantile of chi-square(df) by the Wilson-Hilferty approximation."""
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + z * math.sqrt(c)) ** 3


@pytest.mark.parametrize("method", ["entropy", "uniform"])
def test_sampled_positions_follow_the_softmax_of_smoothed_entropy(method):
    t, rollout_len, margin, draws = 90, 5, 20, 40_000
    entropy_row = torch.rand(t, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 4
    pos = select_positions(
        entropy_row.expand(draws, t), 2, rollout_len, method, margin, torch.Generator().manual_seed(6)
    )
    smoothed = smooth_entropy(entropy_row.unsqueeze(0), entropy_window(rollout_len))[0]
    for j, (start, stop) in enumerate(chunk_bounds(*valid_span(t, rollout_len, margin), 2)):
        candidates = list(range(start, stop))
        scores = torch.tensor([float(smoothed[p - 1]) for p in candidates], dtype=torch.float64)
        probs = (
            torch.softmax(scores, 0) if method == "entropy" else torch.full_like(scores, 1 / len(candidates))
        )
        counts = torch.tensor([int((pos[:, j] == p).sum()) for p in candidates], dtype=torch.float64)
        assert int(counts.sum()) == draws
        expected = probs * draws
        stat = float(((counts - expected) ** 2 / expected).sum())
        assert stat < chi_square_critical(len(candidates) - 1), (j, stat)
        if method == "entropy":
            # And not uniform: the test must be able to tell the two apart.
            flat = torch.full_like(expected, draws / len(candidates))
            assert float(((counts - flat) ** 2 / flat).sum()) > chi_square_critical(len(candidates) - 1)
