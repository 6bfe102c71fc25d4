"""The LaCT torch reference: the hand-derived step against autograd, the chunk schedule against a
token-by-token recurrence, and the state trace (all float64 on random inputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refine_tasks.kernels.lact import (
    FastWeights,
    FastWeightState,
    fast_weight_update,
    lact_fast_weight,
    newton_schulz,
    renormalised_update,
    row_norms,
    swiglu_apply,
    swiglu_fast_weight_grad,
)

DT = torch.float64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def random_weights(b: int, h: int, d: int, gen: torch.Generator) -> FastWeights:
    return FastWeights(
        torch.randn(b, h, d, generator=gen, dtype=DT) / d**0.5,
        torch.randn(b, d, h, generator=gen, dtype=DT) / h**0.5,
        torch.randn(b, h, d, generator=gen, dtype=DT) / d**0.5,
    )


def random_inputs(b: int, t: int, d: int, gen: torch.Generator):
    q, k, v = (torch.randn(b, t, d, generator=gen, dtype=DT) for _ in range(3))
    lrs = [0.05 + 0.1 * torch.rand(b, t, generator=gen, dtype=DT) for _ in range(3)]
    gate = torch.rand(b, t, generator=gen, dtype=DT)
    return q, k, v, lrs, gate


def test_hand_derived_step_equals_autograd():
    gen = torch.Generator().manual_seed(0)
    w = random_weights(3, 12, 8, gen)
    _, k, v, lrs, _ = random_inputs(3, 17, 8, gen)
    step = swiglu_fast_weight_grad(w, k, v, *lrs)
    for i in range(3):
        params = [m.clone().requires_grad_(j == i) for j, m in enumerate(w)]
        w0, w1, w2 = params
        f_k = (F.silu(k @ w0.transpose(1, 2)) * (k @ w2.transpose(1, 2))) @ w1.transpose(1, 2)
        loss = -(lrs[i] * (f_k * v).sum(-1)).sum()  # per-token dot-product loss, rate of weight i
        (grad,) = torch.autograd.grad(loss, [params[i]])
        assert rel(step[i], -grad) < 1e-12, f"w{i}"


def test_renormalised_update_restores_row_norms():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(2, 5, 7, generator=gen, dtype=DT)
    step = torch.randn(2, 5, 7, generator=gen, dtype=DT)
    norm0 = torch.rand(2, 5, generator=gen, dtype=DT) + 0.5
    new = renormalised_update(w, step, norm0)
    length = (w + step).norm(dim=-1)
    assert torch.allclose(new.norm(dim=-1), norm0 * length / (length + 1e-5), rtol=1e-12)
    cos = F.cosine_similarity(new, w + step, dim=-1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 6, 9), (2, 9, 6)])
def test_newton_schulz_orthogonalises(shape):
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(*shape, generator=gen, dtype=DT)
    x = newton_schulz(g)
    s = torch.linalg.svdvals(x)
    assert s.min() > 0.6 and s.max() < 1.25, s  # the quintic iteration's band around 1
    assert rel(newton_schulz(g.transpose(1, 2)), x.transpose(1, 2)) < 1e-12


def token_by_token(q, k, v, lrs, gate, w, chunk, use_muon, momentum_on):
    """The recurrent definition: apply to each token, buffer it, update once the buffer is full."""
    norms = row_norms(w)
    state = FastWeightState(w, FastWeights(*(torch.zeros_like(m) for m in w)) if momentum_on else None)
    outs, start = [], 0
    for t in range(q.shape[1]):
        outs.append(swiglu_apply(state.weights, q[:, t : t + 1]))
        if t + 1 - start == chunk:
            span = slice(start, t + 1)
            step = swiglu_fast_weight_grad(state.weights, k[:, span], v[:, span], *(x[:, span] for x in lrs))
            g = gate[:, span].mean(1) if momentum_on else None
            state = fast_weight_update(state, step, norms, g, use_muon)
            start = t + 1
    return torch.cat(outs, 1), state


@pytest.mark.parametrize("use_muon", [False, True])
@pytest.mark.parametrize("momentum_on", [False, True])
@pytest.mark.parametrize("t", [15, 16, 17])
def test_chunk_schedule_matches_recurrence(t, momentum_on, use_muon):
    gen = torch.Generator().manual_seed(3)
    w = random_weights(2, 6, 5, gen)
    q, k, v, lrs, gate = random_inputs(2, t, 5, gen)
    expect, expect_state = token_by_token(q, k, v, lrs, gate, w, 4, use_muon, momentum_on)
    o, trace = lact_fast_weight(
        q, k, v, *lrs, w, chunk_size=4, momentum_gate=gate if momentum_on else None,
        use_muon=use_muon, update_last_full_chunk=True,
    )  # fmt: skip
    assert trace.updates == t // 4
    assert rel(o, expect) < 1e-12
    for got, want in zip(trace.final.weights, expect_state.weights, strict=True):
        assert rel(got, want) < 1e-12
    assert (trace.final.momentum is None) == (not momentum_on)
    if momentum_on:
        assert rel(trace.final.momentum.w1, expect_state.momentum.w1) < 1e-12
    o_apply_only, trace_apply_only = lact_fast_weight(
        q, k, v, *lrs, w, chunk_size=4, momentum_gate=gate if momentum_on else None, use_muon=use_muon
    )
    assert trace_apply_only.updates == (t - 1) // 4
    assert rel(o_apply_only, expect) < 1e-12


def test_continuing_from_a_kept_state_is_exact():
    gen = torch.Generator().manual_seed(4)
    w = random_weights(2, 6, 5, gen)
    q, k, v, lrs, gate = random_inputs(2, 22, 5, gen)
    o, trace = lact_fast_weight(q, k, v, *lrs, w, chunk_size=4, momentum_gate=gate, keep=(2, 3))
    assert sorted(trace.at) == [2, 3]
    state = trace.at[3]
    tail = slice(12, None)
    o_tail, _ = lact_fast_weight(
        q[:, tail], k[:, tail], v[:, tail], *(x[:, tail] for x in lrs), state.weights, chunk_size=4,
        momentum_gate=gate[:, tail], norms=row_norms(w), momentum=state.momentum,
    )  # fmt: skip
    assert rel(o_tail, o[:, tail]) < 1e-12


def test_bad_shapes_are_named():
    gen = torch.Generator().manual_seed(5)
    w = random_weights(2, 6, 5, gen)
    q, k, v, lrs, _ = random_inputs(2, 8, 5, gen)
    with pytest.raises(ValueError, match="lr1"):
        lact_fast_weight(q, k, v, lrs[0], lrs[1][:, :3], lrs[2], w, chunk_size=4)
    with pytest.raises(ValueError, match="w1"):
        lact_fast_weight(q, k, v, *lrs, w._replace(w1=w.w0), chunk_size=4)
