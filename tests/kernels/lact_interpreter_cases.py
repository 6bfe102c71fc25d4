"""Our LaCT Triton kernels against the torch reference, on the CPU under TRITON_INTERPRET=1.

Run by test_lact_triton.py in a fresh interpreter-mode process (Triton reads TRITON_INTERPRET
once, when `triton` is first imported). Tiny shapes with sides that are not powers of two (the
masks), float32 on random inputs. The SwiGLU token stage mode by mode against float64 torch
(the backward modes through autograd of the forward expressions); then forward values and every
input's gradient of the whole chunked layer against the torch reference, with momentum off, on,
and Muon, on the whole-sequence Function and the per-chunk ones; half-precision matmul operands
(the GPU's path: operand copies written by the update kernel; float16, as the interpreter's bf16
is wrong); states kept mid-sequence, with a loss on the states alone (chunks whose output gets no
gradient).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from triton.runtime.interpreter import InterpretedFunction

from refine_tasks.kernels.lact import FastWeights, TorchOps, TritonOps, lact_fast_weight
from refine_tasks.kernels.lact.triton_swiglu import (
    APPLY,
    APPLY_BWD,
    STEP,
    STEP_BWD,
    Projections,
    _swiglu_kernel,
    swiglu_tokens,
)

OPS = {"torch": TorchOps, "triton": TritonOps}


@pytest.fixture(autouse=True)
def interpreted() -> None:
    assert isinstance(_swiglu_kernel, InterpretedFunction), (
        "run with TRITON_INTERPRET=1 (see test_lact_triton.py)"
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def step_factors(g, u, e, lrs):
    """STEP's outputs from the projections g, u, e [B, T, H] and lrs [B, 3, T]: [lr0 b | lr2 a], lr1 h."""
    lr0, lr1, lr2 = (r[..., None] for r in lrs.unbind(1))
    sig = torch.sigmoid(g)
    act = g * sig
    dact = sig * (1 + g * (1 - sig))  # silu'(g)
    return torch.cat([lr0 * e * u * dact, lr2 * e * act], -1), lr1 * act * u


def swiglu_reference(mode, x, w02, w1, y=None, lrs=None, g02=None, g1=None):
    """(out_a, out_b, rate_grads) of `swiglu_tokens` in float64 torch; the backward modes as the
    autograd gradients of APPLY's hidden and of STEP's factors (contracted with x G02^T, y G1: the
    step's incoming gradients carried back through its matmuls)."""
    x, w02, w1, y, lrs, g02, g1 = (None if t is None else t.double() for t in (x, w02, w1, y, lrs, g02, g1))
    h = w1.shape[2]
    g, u = (x @ w02.transpose(1, 2)).split(h, -1)
    e = None if y is None else y @ w1
    if mode == APPLY:
        return F.silu(g) * u, None, None
    if mode == STEP:
        return *step_factors(g, u, e, lrs), None
    g, u, e = (t.requires_grad_(True) for t in (g, u, e))
    if mode == APPLY_BWD:
        hidden = F.silu(g) * u
        return hidden, torch.cat(torch.autograd.grad(hidden, (g, u), e), -1), None
    lrs = lrs.requires_grad_(True)
    left02, left1 = step_factors(g, u, e, lrs)
    grads = torch.autograd.grad((left02, left1), (g, u, e, lrs), (x @ g02.transpose(1, 2), y @ g1))
    out_a = torch.cat([grads[0], grads[1], left02], -1)
    return out_a, torch.cat([grads[2], left1], -1), grads[3]


MODES = {APPLY: "apply", STEP: "step", APPLY_BWD: "apply_bwd", STEP_BWD: "step_bwd"}


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES.values()))
def test_swiglu_tokens_match_float64_reference(mode):
    """Every output of every mode, sides not powers of two (masked tiles, several hidden tiles);
    the forward modes hand back their projections, and the backward modes read them back."""
    gen = torch.Generator().manual_seed(mode)
    batch, t, d, h = 2, 37, 24, 40
    x, y = torch.randn(batch, t, d, generator=gen), torch.randn(batch, t, d, generator=gen)
    w02 = torch.randn(batch, 2 * h, d, generator=gen) / d**0.5
    w1 = torch.randn(batch, d, h, generator=gen) / d**0.5
    g02, g1 = torch.randn(batch, 2 * h, d, generator=gen), torch.randn(batch, d, h, generator=gen)
    lrs = torch.rand(batch, 3, t, generator=gen)
    extra = {APPLY: {}, STEP: {"y": y, "lrs": lrs}, APPLY_BWD: {"y": y}}.get(
        mode, {"y": y, "lrs": lrs, "g02": g02, "g1": g1}
    )
    want = swiglu_reference(mode, x, w02, w1, **extra)
    got = swiglu_tokens(mode, x, w02, w1, **extra)
    assert [w is None for w in want] == [g is None for g in got[:3]]
    for g, w in zip(got[:3], want, strict=True):
        if w is not None:
            assert g.shape == w.shape and rel(g, w) < 1e-5
    if mode in (APPLY, STEP):  # what the backward reuses: x [W0; W2]^T and, for STEP, y W1
        assert rel(got.projections.p, x.double() @ w02.double().transpose(1, 2)) < 1e-6
        assert (got.projections.e is None) == (mode == APPLY)
        if mode == STEP:
            assert rel(got.projections.e, y.double() @ w1.double()) < 1e-6
        return
    assert got.projections is None
    # the forward mode's projections of the same tokens, handed to the backward mode: the same
    # outputs; zeroed ones change them, so they are read, not recomputed
    forward = APPLY if mode == APPLY_BWD else STEP
    saved = swiglu_tokens(forward, x, w02, w1, y=y, lrs=lrs).projections
    zeroed = Projections(torch.zeros_like(saved.p), None if saved.e is None else torch.zeros_like(saved.e))
    reused = swiglu_tokens(mode, x, w02, w1, **extra, saved=saved)
    for g, w in zip(reused[:3], want, strict=True):
        if w is not None:
            assert rel(g, w) < 1e-5
    spoiled = swiglu_tokens(mode, x, w02, w1, **extra, saved=zeroed).out_a
    assert rel(spoiled, want[0]) > 0.5
    if mode == STEP_BWD:  # rate gradients written into a given view of a larger tensor
        whole = torch.full((batch, 3, t + 5), float("nan"))
        into = swiglu_tokens(mode, x, w02, w1, **extra, rate_grads=whole[:, :, 5:]).rate_grads
        assert into.data_ptr() == whole[:, :, 5:].data_ptr()
        assert rel(whole[:, :, 5:], want[2]) < 1e-5 and whole[:, :, :5].isnan().all()


def make_inputs(seed: int, batch: int = 2, t: int = 20, d: int = 16, h: int = 24):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, t, d, generator=gen) for _ in range(3))
    lrs = [0.05 + 0.1 * torch.rand(batch, t, generator=gen) for _ in range(3)]
    gate = torch.rand(batch, t, generator=gen)
    w = [
        torch.randn(batch, h, d, generator=gen) / d**0.5,
        torch.randn(batch, d, h, generator=gen) / h**0.5,
        torch.randn(batch, h, d, generator=gen) / d**0.5,
    ]
    return [q, k, v, *lrs, gate, *w]


def run_layer(
    backend: str, inputs: list[torch.Tensor], momentum_on: bool, use_muon: bool, keep: tuple[int, ...] = ()
):
    """Outputs, final state and the gradients of a random functional of both, for one backend;
    `keep` asks for states mid-sequence, which puts the Triton path on its per-chunk Functions."""
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    q, k, v, lr0, lr1, lr2, gate, w0, w1, w2 = leaves
    o, trace = lact_fast_weight(
        q, k, v, lr0, lr1, lr2, FastWeights(w0, w1, w2), chunk_size=8,
        momentum_gate=gate if momentum_on else None, use_muon=use_muon,
        update_last_full_chunk=True, keep=keep, ops=OPS[backend],
    )  # fmt: skip
    gen = torch.Generator().manual_seed(99)
    final = [*trace.final.weights, *(trace.final.momentum or ())]
    loss = (o * torch.randn(o.shape, generator=gen)).sum()
    loss = loss + sum((m * torch.randn(m.shape, generator=gen)).sum() for m in final)
    loss.backward()
    return o.detach(), [m.detach() for m in final], [x.grad for x in leaves]


@pytest.mark.parametrize("keep", [(), (1,)], ids=["sequence", "per_chunk"])
@pytest.mark.parametrize(
    "t, momentum_on, use_muon",
    [(20, False, False), (24, True, False), (19, True, True)],
    ids=["plain", "momentum", "muon"],
)
def test_chunked_layer_matches_reference_with_gradients(t, momentum_on, use_muon, keep):
    """plain: a trailing chunk that only applies; momentum: every chunk updates. Without a kept
    state the Triton path runs the whole-sequence Function, with one its per-chunk Functions (Muon
    always runs those)."""
    inputs = make_inputs(seed=t, t=t)
    o_ref, final_ref, grads_ref = run_layer("torch", inputs, momentum_on, use_muon, keep)
    o, final, grads = run_layer("triton", inputs, momentum_on, use_muon, keep)
    assert rel(o, o_ref) < 1e-5
    for got, want in zip(final, final_ref, strict=True):
        assert rel(got, want) < 1e-5
    names = ["q", "k", "v", "lr0", "lr1", "lr2", "gate", "w0", "w1", "w2"]
    for name, got, want in zip(names, grads, grads_ref, strict=True):
        if name == "gate" and not momentum_on:
            assert got is None and want is None
            continue
        assert torch.isfinite(got).all(), name
        assert rel(got, want) < 1e-4, name


def test_half_operands_match_float32_reference():
    inputs = make_inputs(seed=3, t=26)
    inputs[:3] = [x.half() for x in inputs[:3]]  # q, k, v: the matmuls then run in float16
    o_ref, final_ref, grads_ref = run_layer("torch", [x.float() for x in inputs], True, False)
    o, final, grads = run_layer("triton", inputs, True, False)
    assert o.dtype == torch.float16
    assert rel(o, o_ref) < 5e-3
    for got, want in zip(final, final_ref, strict=True):
        assert got.dtype == torch.float32 and rel(got, want) < 5e-3
    for name, got, want in zip(
        ["q", "k", "v", "lr0", "lr1", "lr2", "gate", "w0", "w1", "w2"], grads, grads_ref, strict=True
    ):
        assert rel(got, want) < 5e-3, name


def kept_states(backend: str, inputs: list[torch.Tensor]):
    """States after 1 and 2 of 3 updates and the final momentum, and gradients of a random functional
    of those states only."""
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    q, k, v, lr0, lr1, lr2, gate, w0, w1, w2 = leaves
    _, trace = lact_fast_weight(
        q, k, v, lr0, lr1, lr2, FastWeights(w0, w1, w2), chunk_size=8, momentum_gate=gate,
        update_last_full_chunk=True, keep=(1, 2), ops=OPS[backend],
    )  # fmt: skip
    states = [m for c in (1, 2) for m in (*trace.at[c].weights, *trace.at[c].momentum)]
    states += list(trace.final.momentum)  # the last update's weights get no gradient, its momentum does
    gen = torch.Generator().manual_seed(7)
    sum((m * torch.randn(m.shape, generator=gen)).sum() for m in states).backward()
    return [m.detach() for m in states], [x.grad for x in leaves]


def test_kept_states_and_their_gradients_match_reference():
    inputs = make_inputs(seed=4, t=24)
    states_ref, grads_ref = kept_states("torch", inputs)
    states, grads = kept_states("triton", inputs)
    for got, want in zip(states, states_ref, strict=True):
        assert rel(got, want) < 1e-5
    assert grads[0] is None and grads_ref[0] is None  # q only reaches the outputs
    for name, got, want in zip(
        ["k", "v", "lr0", "lr1", "lr2", "gate", "w0", "w1", "w2"], grads[1:], grads_ref[1:], strict=True
    ):
        assert rel(got, want) < 1e-4, name


def test_final_state_alone_gets_gradients():
    """A loss on the final weights and momentum only (the outputs get no gradient, so q gets none):
    22 tokens in chunks of 8, the last full chunk not updating."""
    inputs = make_inputs(seed=6, t=22)
    results = []
    for backend in ("torch", "triton"):
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        q, k, v, lr0, lr1, lr2, gate, w0, w1, w2 = leaves
        _, trace = lact_fast_weight(
            q, k, v, lr0, lr1, lr2, FastWeights(w0, w1, w2), chunk_size=8, momentum_gate=gate,
            ops=OPS[backend],
        )  # fmt: skip
        final = [*trace.final.weights, *trace.final.momentum]
        gen = torch.Generator().manual_seed(8)
        sum((m * torch.randn(m.shape, generator=gen)).sum() for m in final).backward()
        results.append(([m.detach() for m in final], [x.grad for x in leaves]))
    (final_ref, grads_ref), (final, grads) = results
    for got, want in zip(final, final_ref, strict=True):
        assert rel(got, want) < 1e-5
    assert grads[0] is None and grads_ref[0] is None
    for got, want in zip(grads[1:], grads_ref[1:], strict=True):
        assert rel(got, want) < 1e-4
