"""The SwiGLU token stage of the fast-weight layer: tokens projected onto the hidden layer, then
an element-wise SwiGLU expression, writing only what the following matmuls (`gemm.bmm`) consume.

Every stage of the layer starts by projecting tokens onto the hidden layer (g = x W0^T,
u = x W2^T, and for the step e = y W1). Modes:

- APPLY: x = q. Writes silu(g) u, the hidden of f(q).
- STEP: x = k, y = v. Writes [lr0 b | lr2 a] and lr1 h, the left factors of the update step
  (h = silu(g) u, a = e silu(g), b = e u silu'(g)).
- APPLY_BWD: x = q, y = dO (so e is the hidden's gradient). Writes silu(g) u and the gradients
  w.r.t. g and u.
- STEP_BWD: x = k, y = v, plus the step's incoming gradients G0, G2 [H, D], G1 [D, H]. Writes
  [g_bar | u_bar | lr0 b | lr2 a], [e_bar | lr1 h] and the learning rates' gradients.

The projections are plain batched GEMMs over the whole chunk (`gemm.bmm`, cuBLAS on CUDA):
P = x [W0; W2]^T [B, T, 2H], E = y W1 [B, T, H] and, for STEP_BWD, Q = x [G0; G2]^T [B, T, 2H],
R = y G1 [B, T, H], written in x's dtype; one element-wise kernel then reads them back tile by
tile. APPLY and STEP hand P (and E) back, and the matching backward mode reads them instead of
recomputing them. A fused kernel that kept the projections in registers was slower on an H100
(benchmarks/RESULTS.md, 2026-11-26, the layer's fwd+bwd from a CUDA graph: 0.300 of the bf16
matmul rate against 0.319 here): STEP_BWD's six float32 accumulators per tile held its tiles
small and its tensor-core rate well below cuBLAS's.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from refine_tasks.kernels.lact.gemm import bmm
from refine_tasks.kernels.lact.triton_launch import cdiv, interpreting, pow2_block

APPLY, STEP, APPLY_BWD, STEP_BWD = 0, 1, 2, 3
# (hidden columns written to out_a, to out_b) per mode, in units of H
OUT_WIDTHS = {APPLY: (1, 0), STEP: (2, 1), APPLY_BWD: (1, 2), STEP_BWD: (4, 2)}
# (BLOCK_T, BLOCK_H, num_warps) of the element-wise kernel per mode on the GPU: rows of 128
# hidden units keep loads and stores in full 256-byte lines; benchmarks/gpu_lact.py sweeps them.
CONFIGS: dict[int, tuple[int, int, int]] = {mode: (32, 128, 4) for mode in range(STEP_BWD)} | {
    STEP_BWD: (16, 128, 4)
}


class Projections(NamedTuple):
    """Raw projections a forward mode made ([B, T, *] in x's dtype) that the matching backward
    mode reuses instead of recomputing: p = x [W0; W2]^T [B, T, 2H] and, for STEP, e = v W1
    [B, T, H]. APPLY_BWD reuses APPLY's p (its own e comes from dO); STEP_BWD reuses STEP's both."""

    p: Tensor
    e: Tensor | None


class TokenOutputs(NamedTuple):
    """out_a [B, T, a*H]; out_b [B, T, b*H] or None; the learning rates' gradients [B, 3, T]
    (STEP_BWD) or None; APPLY's and STEP's projections, else None."""

    out_a: Tensor
    out_b: Tensor | None
    rate_grads: Tensor | None
    projections: Projections | None


@triton.jit
def _load(ptr, rt, rh, row_stride, col0, T, H):
    """Columns [col0, col0 + H) of a row-major [T, *] matrix, this tile's part, as float32."""
    return tl.load(
        ptr + rt[:, None] * row_stride + col0 + rh[None, :],
        mask=(rt[:, None] < T) & (rh[None, :] < H),
        other=0.0,
    ).to(tl.float32)


@triton.jit
def _store(ptr, rt, rh, row_stride, col0, val, T, H):
    """Store val [BLOCK_T, BLOCK_H] to columns [col0, col0 + H) of a row-major [T, *] matrix."""
    tl.store(
        ptr + rt[:, None] * row_stride + col0 + rh[None, :],
        val.to(ptr.dtype.element_ty),
        mask=(rt[:, None] < T) & (rh[None, :] < H),
    )


@triton.jit
def _swiglu_kernel(
    p_ptr, e_ptr, q_ptr, r_ptr, lr_ptr, a_ptr, b_ptr, dlr_ptr, T, H,
    s_pb, s_pt, s_eb, s_et, s_qb, s_qt, s_rb, s_rt, s_lrb, s_lrk, s_ab, s_at, s_bb, s_bt, s_db, s_dk, s_dh,
    MODE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """One tile of tokens against one tile of the hidden layer: grid axis 0 walks the hidden tiles
    fastest, axis 1 the batch rows. Reads the raw projections P, E, Q, R (those the mode uses) and
    writes the mode's outputs; dlr: STEP_BWD's rate gradients of this hidden tile."""
    pid = tl.program_id(0)
    n_h = tl.cdiv(H, BLOCK_H)
    h_tile = pid % n_h
    rt = (pid // n_h) * BLOCK_T + tl.arange(0, BLOCK_T)
    rh = h_tile * BLOCK_H + tl.arange(0, BLOCK_H)
    bid = tl.program_id(1).to(tl.int64)
    p_ptr += bid * s_pb
    a_ptr += bid * s_ab
    b_ptr += bid * s_bb
    gate = _load(p_ptr, rt, rh, s_pt, 0, T, H)
    up = _load(p_ptr, rt, rh, s_pt, H, T, H)
    e = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    b_raw = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)  # k G0^T
    a_raw = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)  # k G2^T
    h_raw = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)  # v G1
    if MODE != 0:
        e = _load(e_ptr + bid * s_eb, rt, rh, s_et, 0, T, H)
    if MODE == 3:
        b_raw = _load(q_ptr + bid * s_qb, rt, rh, s_qt, 0, T, H)
        a_raw = _load(q_ptr + bid * s_qb, rt, rh, s_qt, H, T, H)
        h_raw = _load(r_ptr + bid * s_rb, rt, rh, s_rt, 0, T, H)
    sig = tl.sigmoid(gate)
    act = gate * sig
    dact = sig * (1.0 + gate * (1.0 - sig))  # silu'(gate)
    hidden = act * up
    if MODE == 0:
        _store(a_ptr, rt, rh, s_at, 0, hidden, T, H)
    if MODE == 2:
        _store(a_ptr, rt, rh, s_at, 0, hidden, T, H)
        _store(b_ptr, rt, rh, s_bt, 0, e * up * dact, T, H)
        _store(b_ptr, rt, rh, s_bt, H, e * act, T, H)
    if MODE == 1 or MODE == 3:
        lr = lr_ptr + bid * s_lrb + rt
        lr0 = tl.load(lr, mask=rt < T, other=0.0)[:, None]
        lr1 = tl.load(lr + s_lrk, mask=rt < T, other=0.0)[:, None]
        lr2 = tl.load(lr + 2 * s_lrk, mask=rt < T, other=0.0)[:, None]
        a = e * act
        b = e * up * dact
        if MODE == 1:
            _store(a_ptr, rt, rh, s_at, 0, lr0 * b, T, H)
            _store(a_ptr, rt, rh, s_at, H, lr2 * a, T, H)
            _store(b_ptr, rt, rh, s_bt, 0, lr1 * hidden, T, H)
        else:
            h_bar = lr1 * h_raw
            a_bar = lr2 * a_raw
            b_bar = lr0 * b_raw
            d2act = sig * (1.0 - sig) * (2.0 + gate * (1.0 - 2.0 * sig))  # silu''(gate)
            g_bar = (h_bar * up + a_bar * e) * dact + b_bar * e * up * d2act
            _store(a_ptr, rt, rh, s_at, 0, g_bar, T, H)
            _store(a_ptr, rt, rh, s_at, H, h_bar * act + b_bar * e * dact, T, H)
            _store(a_ptr, rt, rh, s_at, 2 * H, lr0 * b, T, H)
            _store(a_ptr, rt, rh, s_at, 3 * H, lr2 * a, T, H)
            _store(b_ptr, rt, rh, s_bt, 0, a_bar * act + b_bar * up * dact, T, H)
            _store(b_ptr, rt, rh, s_bt, H, lr1 * hidden, T, H)
            dlr = dlr_ptr + bid * s_db + h_tile * s_dh + rt
            tl.store(dlr, tl.sum(b_raw * b, axis=1), mask=rt < T)
            tl.store(dlr + s_dk, tl.sum(h_raw * hidden, axis=1), mask=rt < T)
            tl.store(dlr + 2 * s_dk, tl.sum(a_raw * a, axis=1), mask=rt < T)


def _raw_projections(
    mode: int,
    x: Tensor,
    y: Tensor,
    w02: Tensor,
    w1: Tensor,
    g02: Tensor,
    g1: Tensor,
    saved: Projections | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(P, E, Q, R) as the module docstring names them, P and E taken from `saved` where given;
    P stands in for those the mode does not use."""
    batch, t, _ = x.shape
    h = w1.shape[2]
    saved = saved or Projections(None, None)
    p = saved.p if saved.p is not None else bmm(x, w02.transpose(1, 2), x.new_empty(batch, t, 2 * h))
    if mode == APPLY:
        return p, p, p, p
    e = saved.e if saved.e is not None else bmm(y, w1, x.new_empty(batch, t, h))
    if mode != STEP_BWD:
        return p, e, p, p
    q = bmm(x, g02.transpose(1, 2), x.new_empty(batch, t, 2 * h))
    return p, e, q, bmm(y, g1, x.new_empty(batch, t, h))


def _blocks(mode: int, t: int, h: int) -> tuple[int, int, int]:
    if interpreting():
        return pow2_block(t, 32), pow2_block(h, 32), 4
    return CONFIGS[mode]


def swiglu_tokens(
    mode: int,
    x: Tensor,
    w02: Tensor,
    w1: Tensor,
    y: Tensor | None = None,
    lrs: Tensor | None = None,
    g02: Tensor | None = None,
    g1: Tensor | None = None,
    saved: Projections | None = None,
    rate_grads: Tensor | None = None,
) -> TokenOutputs:
    """Run one mode over x [B, T, D] (inner stride 1). w02 = [W0; W2] [B, 2H, D], w1 [B, D, H]
    (x's dtype; each batch row's matrix dense, batch stride free: views of the packed state);
    y [B, T, D]; lrs [B, 3, T] float32 (lr0, lr1, lr2); g02 [B, 2H, D], g1 [B, D, H] the step's
    incoming gradients (STEP_BWD, laid out as w02, w1); saved: the forward mode's projections
    (APPLY's for APPLY_BWD, STEP's for STEP_BWD), read back instead of recomputed; rate_grads: a
    [B, 3, T] tensor (a view will do) for STEP_BWD's rate gradients. Returns `TokenOutputs`."""
    batch, t, d = x.shape
    h = w1.shape[2]
    if w02.shape != (batch, 2 * h, d) or w1.shape != (batch, d, h):
        raise ValueError(
            f"swiglu_tokens: w02 {tuple(w02.shape)} / w1 {tuple(w1.shape)} do not fit x {tuple(x.shape)}"
        )
    width_a, width_b = OUT_WIDTHS[mode]
    out_a = x.new_empty(batch, t, width_a * h)
    out_b = x.new_empty(batch, t, width_b * h) if width_b else out_a
    y = x if y is None else y
    lrs = out_a if lrs is None else lrs
    g02 = w02 if g02 is None else g02
    g1 = w1 if g1 is None else g1
    if x.stride(2) != 1 or y.stride(2) != 1 or lrs.stride(-1) != 1:
        raise ValueError("swiglu_tokens: x, y and lrs need a unit stride on their last axis")
    for name, m in (("w02", w02), ("w1", w1), ("g02", g02), ("g1", g1)):
        if m.stride()[1:] != (m.shape[2], 1):
            raise ValueError(
                f"swiglu_tokens: {name} {tuple(m.shape)} strides {m.stride()}: each matrix must be dense"
            )
    p, e, q, r = _raw_projections(mode, x, y, w02, w1, g02, g1, saved)
    block_t, block_h, warps = _blocks(mode, t, h)
    n_h = cdiv(h, block_h)
    # STEP_BWD's rate gradients per hidden tile [B, 3, tiles, T], summed below in a fixed order (no
    # atomics: the result does not depend on the launch order); out_a stands in for other modes
    dlr = torch.empty(batch, 3, n_h, t, device=x.device, dtype=torch.float32) if mode == STEP_BWD else out_a
    dlr_strides = dlr.stride()[:3] if mode == STEP_BWD else (0, 0, 0)
    _swiglu_kernel[(cdiv(t, block_t) * n_h, batch)](
        p, e, q, r, lrs, out_a, out_b, dlr, t, h,
        p.stride(0), p.stride(1), e.stride(0), e.stride(1), q.stride(0), q.stride(1), r.stride(0), r.stride(1),
        lrs.stride(0), lrs.stride(1), out_a.stride(0), out_a.stride(1), out_b.stride(0), out_b.stride(1),
        *dlr_strides, MODE=mode, BLOCK_T=block_t, BLOCK_H=block_h, num_warps=warps,
    )  # fmt: skip
    if mode == STEP_BWD:
        rate_grads = torch.sum(dlr, 2, out=rate_grads) if rate_grads is not None else dlr.sum(2)
    projections = Projections(p, None if mode == APPLY else e) if mode in (APPLY, STEP) else None
    return TokenOutputs(out_a, out_b if width_b else None, rate_grads, projections)
