"""Our LaCT Triton kernels against the torch reference, on the CPU under TRITON_INTERPRET=1.

Run by test_lact_triton.py in a fresh interpreter-mode process (Triton reads TRITON_INTERPRET
once, when `triton` is first imported). Tiny shapes with sides that are not powers of two (the
masks), float32 on random inputs: forward values and every input's gradient of the whole
chunked layer, with momentum off, on, and Muon; half-precision matmul operands (the GPU's path:
operand copies written by the update kernel; float16, as the interpreter's bf16 dot is wrong); states kept mid-sequence, with a loss on the states alone
(chunks whose output gets no gradient). The split SwiGLU path (GEMMs + element-wise kernel) against
the fused kernel mode by mode, and the whole layer on each combination of the REFINE_LACT_GEMM and
REFINE_LACT_SWIGLU switches.
"""

from __future__ import annotations

import pytest
import torch
from triton.runtime.interpreter import InterpretedFunction

from refine_tasks.kernels.lact import FastWeights, lact_fast_weight
from refine_tasks.kernels.lact.triton_gemm import GEMM_ENV, _bmm_kernel, bmm
from refine_tasks.kernels.lact.triton_sequence import LOOP_ENV
from refine_tasks.kernels.lact.triton_swiglu import (
    APPLY,
    APPLY_BWD,
    MIXED,
    STEP,
    STEP_BWD,
    SWIGLU_ENV,
    Projections,
    swiglu_tokens,
)


@pytest.fixture(autouse=True)
def interpreted() -> None:
    assert isinstance(_bmm_kernel, InterpretedFunction), (
        "run with TRITON_INTERPRET=1 (see test_lact_triton.py)"
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_bmm_sums_two_products_of_strided_views():
    gen = torch.Generator().manual_seed(0)
    a1 = torch.randn(2, 40, 19, generator=gen).transpose(1, 2)  # [2, 19, 40], column-major
    b1 = torch.randn(2, 40, 23, generator=gen)
    a2 = torch.randn(2, 19, 70, generator=gen)[..., 10:47]  # a slice: row stride != width
    b2 = torch.randn(2, 23, 37, generator=gen).transpose(1, 2)
    out = torch.full((2, 19, 23), float("nan"))
    bmm(a1, b1, out, a2, b2)
    want = a1.double() @ b1.double() + a2.double() @ b2.double()
    assert rel(out, want) < 1e-6
    assert rel(bmm(a1, b1, torch.empty(2, 19, 23)), a1.double() @ b1.double()) < 1e-6


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


def run_layer(backend: str, inputs: list[torch.Tensor], momentum_on: bool, use_muon: bool):
    """Outputs, final state and the gradients of a random functional of both, for one backend."""
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    q, k, v, lr0, lr1, lr2, gate, w0, w1, w2 = leaves
    o, trace = lact_fast_weight(
        q, k, v, lr0, lr1, lr2, FastWeights(w0, w1, w2), chunk_size=8,
        momentum_gate=gate if momentum_on else None, use_muon=use_muon,
        update_last_full_chunk=True, backend=backend,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(99)
    final = [*trace.final.weights, *(trace.final.momentum or ())]
    loss = (o * torch.randn(o.shape, generator=gen)).sum()
    loss = loss + sum((m * torch.randn(m.shape, generator=gen)).sum() for m in final)
    loss.backward()
    return o.detach(), [m.detach() for m in final], [x.grad for x in leaves]


@pytest.mark.parametrize(
    "mode", [APPLY, STEP, APPLY_BWD, STEP_BWD], ids=["apply", "step", "apply_bwd", "step_bwd"]
)
@pytest.mark.parametrize("gemm", ["triton", "cublas"])
def test_split_swiglu_equals_fused_kernel(mode, gemm, monkeypatch):
    """Every output of every mode, sides not powers of two (masked tiles, several hidden tiles)."""
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
    monkeypatch.setenv(SWIGLU_ENV, "fused")
    want = swiglu_tokens(mode, x, w02, w1, **extra)
    monkeypatch.setenv(SWIGLU_ENV, "split")
    monkeypatch.setenv(GEMM_ENV, gemm)
    got = swiglu_tokens(mode, x, w02, w1, **extra)
    assert [w is None for w in want[:3]] == [g is None for g in got[:3]]
    assert want.projections is None  # not asked to keep them: the fused kernel's stay in registers
    if mode in (APPLY, STEP):  # the split path hands back what the backward may reuse
        assert got.projections is not None and got.projections.p.shape == (batch, t, 2 * h)
    for g, w in zip(got[:3], want[:3], strict=True):
        if w is not None:
            assert g.shape == w.shape and rel(g, w) < 1e-5
    if mode in (APPLY, STEP):
        # keeping them pays only for a split backward mode: under `fused` nothing is kept; under
        # `mixed` the fused forward kernel stores the same projections as the split path
        monkeypatch.setenv(SWIGLU_ENV, "fused")
        assert swiglu_tokens(mode, x, w02, w1, **extra, keep=True).projections is None
        monkeypatch.setenv(SWIGLU_ENV, "mixed")
        assert MIXED[mode] == "fused"
        kept = swiglu_tokens(mode, x, w02, w1, **extra, keep=True)
        assert rel(kept.out_a, want.out_a) < 1e-6
        assert rel(kept.projections.p, got.projections.p) < 1e-5
        assert (kept.projections.e is None) == (mode == APPLY)
        if mode == STEP:
            assert rel(kept.projections.e, got.projections.e) < 1e-5
    if mode in (APPLY_BWD, STEP_BWD):
        # the forward mode's projections of the same tokens (kept by the fused kernel), handed to
        # the backward mode on each path: the same outputs; zeroed ones change them, so they are
        # read, not recomputed
        forward = APPLY if mode == APPLY_BWD else STEP
        monkeypatch.setenv(SWIGLU_ENV, "mixed")
        saved = swiglu_tokens(forward, x, w02, w1, y=y, lrs=lrs, keep=True).projections
        zeroed = Projections(
            torch.zeros_like(saved.p), None if saved.e is None else torch.zeros_like(saved.e)
        )
        for path in ("split", "fused"):
            monkeypatch.setenv(SWIGLU_ENV, path)
            reused = swiglu_tokens(mode, x, w02, w1, **extra, saved=saved)
            for g, w in zip(reused[:3], want[:3], strict=True):
                if w is not None:
                    assert rel(g, w) < 1e-5, path
            spoiled = swiglu_tokens(mode, x, w02, w1, **extra, saved=zeroed).out_a
            assert rel(spoiled, want.out_a) > 0.5, path
        if mode == STEP_BWD:  # rate gradients written into a given view of a larger tensor
            whole = torch.full((batch, 3, t + 5), float("nan"))
            into = swiglu_tokens(mode, x, w02, w1, **extra, rate_grads=whole[:, :, 5:]).rate_grads
            assert into.data_ptr() == whole[:, :, 5:].data_ptr()
            assert rel(whole[:, :, 5:], want.rate_grads) < 1e-5 and whole[:, :, :5].isnan().all()


@pytest.mark.parametrize(
    "gemm, swiglu, loop, use_muon",
    [
        ("cublas", "fused", "sequence", False),
        ("cublas", "split", "sequence", False),
        ("triton", "split", "sequence", False),
        ("cublas", "mixed", "sequence", False),
        ("cublas", "split", "chunks", False),
        ("cublas", "split", "chunks", True),
    ],
)
def test_every_kernel_variant_matches_reference(gemm, swiglu, loop, use_muon, monkeypatch):
    """Outputs, final state and all ten input gradients, momentum on, for each switch setting
    (the default triton/fused pair is covered by the tests below). The split path's saved
    projections pass through the whole-sequence Function, the per-chunk one and Muon's."""
    inputs = make_inputs(seed=11, t=26)
    o_ref, final_ref, grads_ref = run_layer("torch", inputs, True, use_muon)
    monkeypatch.setenv(GEMM_ENV, gemm)
    monkeypatch.setenv(SWIGLU_ENV, swiglu)
    monkeypatch.setenv(LOOP_ENV, loop)
    o, final, grads = run_layer("triton", inputs, True, use_muon)
    assert rel(o, o_ref) < 1e-5
    for got, want in zip([*final, *grads], [*final_ref, *grads_ref], strict=True):
        assert rel(got, want) < 1e-4


@pytest.mark.parametrize("loop", ["sequence", "chunks"])
@pytest.mark.parametrize(
    "t, momentum_on, use_muon",
    [(20, False, False), (24, True, False), (19, True, True)],
    ids=["plain", "momentum", "muon"],
)
def test_chunked_layer_matches_reference_with_gradients(t, momentum_on, use_muon, loop, monkeypatch):
    """plain: a trailing chunk that only applies; momentum: every chunk updates (Muon always runs
    the per-chunk Functions: the loop switch does not reach it)."""
    monkeypatch.setenv(LOOP_ENV, loop)
    inputs = make_inputs(seed=t, t=t)
    o_ref, final_ref, grads_ref = run_layer("torch", inputs, momentum_on, use_muon)
    o, final, grads = run_layer("triton", inputs, momentum_on, use_muon)
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
        update_last_full_chunk=True, keep=(1, 2), backend=backend,
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


@pytest.mark.parametrize("loop", ["sequence", "chunks"])
def test_final_state_alone_gets_gradients(loop, monkeypatch):
    """A loss on the final weights and momentum only (the outputs get no gradient, so q gets none):
    22 tokens in chunks of 8, the last full chunk not updating."""
    monkeypatch.setenv(LOOP_ENV, loop)
    inputs = make_inputs(seed=6, t=22)
    results = []
    for backend in ("torch", "triton"):
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        q, k, v, lr0, lr1, lr2, gate, w0, w1, w2 = leaves
        _, trace = lact_fast_weight(
            q, k, v, lr0, lr1, lr2, FastWeights(w0, w1, w2), chunk_size=8, momentum_gate=gate, backend=backend
        )
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
