"""The fused SwiGLU token kernel: a tile of tokens against a tile of the hidden layer, in one pass.

Every stage of the fast-weight layer starts by projecting tokens onto the hidden layer
(g = x W0^T, u = x W2^T, and for the step e = v W1) and ends in an element-wise SwiGLU
expression; this kernel does the projections on the tensor cores and the expression in
registers, writing only what the following matmuls (`triton_gemm.bmm`) consume. Modes:

- APPLY: x = q. Writes silu(g) u, the hidden of f(q).
- STEP: x = k, y = v. Writes [lr0 b | lr2 a] and lr1 h, the left factors of the update step
  (h = silu(g) u, a = e silu(g), b = e u silu'(g)).
- APPLY_BWD: x = q, y = dO (so e is the hidden's gradient). Writes silu(g) u and the gradients
  w.r.t. g and u.
- STEP_BWD: x = k, y = v, plus the step's incoming gradients G0, G2 [H, D], G1 [D, H]. Writes
  [g_bar | u_bar | lr0 b | lr2 a], [e_bar | lr1 h] and per-hidden-tile partial sums of the
  learning rates' gradients.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from refine_tasks.kernels.lact.triton_launch import cdiv, interpreting, pow2_block

APPLY, STEP, APPLY_BWD, STEP_BWD = 0, 1, 2, 3
# (hidden columns written to out_a, to out_b) per mode, in units of H
OUT_WIDTHS = {APPLY: (1, 0), STEP: (2, 1), APPLY_BWD: (1, 2), STEP_BWD: (4, 2)}


@triton.jit
def _rows_tile(ptr, rows, cols, n_rows, n_cols, row_stride):
    """Tile [len(cols), len(rows)] of a row-major matrix read transposed: element (c, r) = m[r, c]."""
    return tl.load(
        ptr + rows[None, :] * row_stride + cols[:, None],
        mask=(rows[None, :] < n_rows) & (cols[:, None] < n_cols),
        other=0.0,
    )


@triton.jit
def _store(ptr, rt, rh, row_stride, col0, val, T, H):
    tl.store(
        ptr + rt[:, None] * row_stride + col0 + rh[None, :],
        val.to(ptr.dtype.element_ty),
        mask=(rt[:, None] < T) & (rh[None, :] < H),
    )


@triton.jit
def _swiglu_tokens_kernel(
    x_ptr, y_ptr, w02_ptr, w1_ptr, g02_ptr, g1_ptr, lr_ptr, out_a_ptr, out_b_ptr, dlr_ptr,
    T, D: tl.constexpr, H,
    s_xb, s_xt, s_yb, s_yt, s_lrb, s_lrk, s_ab, s_at, s_bb, s_bt, s_db, s_dk, s_dh, s_w02b, s_w1b, s_g02b, s_g1b,
    MODE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    bid = tl.program_id(1).to(tl.int64)
    n_h = tl.cdiv(H, BLOCK_H)
    h_tile = pid % n_h
    rt = (pid // n_h) * BLOCK_T + tl.arange(0, BLOCK_T)
    rh = h_tile * BLOCK_H + tl.arange(0, BLOCK_H)
    rd = tl.arange(0, BLOCK_D)
    x_ptr += bid * s_xb
    y_ptr += bid * s_yb
    w0_ptr = w02_ptr + bid * s_w02b
    w2_ptr = w0_ptr + H * D
    w1_ptr += bid * s_w1b
    g0_ptr = g02_ptr + bid * s_g02b
    g2_ptr = g0_ptr + H * D
    g1_ptr += bid * s_g1b

    gate = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    up = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    e = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    b_raw = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)  # k G0^T
    a_raw = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)  # k G2^T
    h_raw = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)  # v G1
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + rd
        x = tl.load(
            x_ptr + rt[:, None] * s_xt + dd[None, :], mask=(rt[:, None] < T) & (dd[None, :] < D), other=0.0
        )
        gate = tl.dot(x, _rows_tile(w0_ptr, rh, dd, H, D, D), gate)
        up = tl.dot(x, _rows_tile(w2_ptr, rh, dd, H, D, D), up)
        if MODE != 0:
            y = tl.load(
                y_ptr + rt[:, None] * s_yt + dd[None, :],
                mask=(rt[:, None] < T) & (dd[None, :] < D),
                other=0.0,
            )
            w1 = tl.load(
                w1_ptr + dd[:, None] * H + rh[None, :], mask=(dd[:, None] < D) & (rh[None, :] < H), other=0.0
            )
            e = tl.dot(y, w1, e)
        if MODE == 3:
            b_raw = tl.dot(x, _rows_tile(g0_ptr, rh, dd, H, D, D), b_raw)
            a_raw = tl.dot(x, _rows_tile(g2_ptr, rh, dd, H, D, D), a_raw)
            g1 = tl.load(
                g1_ptr + dd[:, None] * H + rh[None, :], mask=(dd[:, None] < D) & (rh[None, :] < H), other=0.0
            )
            h_raw = tl.dot(y, g1, h_raw)

    sig = tl.sigmoid(gate)
    act = gate * sig
    dact = sig * (1.0 + gate * (1.0 - sig))  # silu'(gate)
    hidden = act * up
    a_ptr = out_a_ptr + bid * s_ab
    b_ptr = out_b_ptr + bid * s_bb
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


# (BLOCK_T, BLOCK_H, BLOCK_D, num_warps, num_stages) per mode on the GPU: no register spills on
# sm_90 (the compiler's resource report), and the fastest of benchmarks/gpu_lact.py's sweep on an
# H200 at the 760M chunk shape (2026-11-25: 362, 253, 263, 232 TFLOP/s for the four modes).
CONFIGS: dict[int, tuple[int, int, int, int, int]] = {
    APPLY: (128, 64, 64, 8, 3),
    STEP: (128, 64, 64, 8, 3),
    APPLY_BWD: (128, 64, 64, 8, 3),
    STEP_BWD: (64, 64, 64, 8, 3),
}


def _blocks(mode: int, t: int, h: int, d: int) -> tuple[int, int, int, int, int]:
    if interpreting():
        return pow2_block(t, 32), pow2_block(h, 32), pow2_block(d, 32), 4, 1
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
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Run one mode over x [B, T, D] (inner stride 1). w02 = [W0; W2] [B, 2H, D], w1 [B, D, H]
    (x's dtype; each batch row's matrix dense, batch stride free: views of the packed state);
    y [B, T, D]; lrs [B, 3, T] float32 (lr0, lr1, lr2); g02 [B, 2H, D], g1 [B, D, H] the step's
    incoming gradients (STEP_BWD, laid out as w02, w1). Returns (out_a [B, T, a*H],
    out_b [B, T, b*H] or None, learning-rate gradients [B, 3, T] or None)."""
    batch, t, d = x.shape
    h = w1.shape[2]
    if w02.shape != (batch, 2 * h, d) or w1.shape != (batch, d, h):
        raise ValueError(
            f"swiglu_tokens: w02 {tuple(w02.shape)} / w1 {tuple(w1.shape)} do not fit x {tuple(x.shape)}"
        )
    width_a, width_b = OUT_WIDTHS[mode]
    out_a = x.new_empty(batch, t, width_a * h)
    out_b = x.new_empty(batch, t, width_b * h) if width_b else out_a
    block_t, block_h, block_d, warps, stages = _blocks(mode, t, h, d)
    n_h = cdiv(h, block_h)
    dlr = torch.empty(batch, 3, n_h, t, device=x.device, dtype=torch.float32) if mode == STEP_BWD else out_a
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
    grid = (cdiv(t, block_t) * n_h, batch)
    _swiglu_tokens_kernel[grid](
        x, y, w02, w1, g02, g1, lrs, out_a, out_b, dlr,
        t, d, h, x.stride(0), x.stride(1), y.stride(0), y.stride(1), lrs.stride(0), lrs.stride(1),
        out_a.stride(0), out_a.stride(1), out_b.stride(0), out_b.stride(1),
        dlr.stride(0), dlr.stride(1), dlr.stride(2) if mode == STEP_BWD else 0,
        w02.stride(0), w1.stride(0), g02.stride(0), g1.stride(0),
        MODE=mode, BLOCK_T=block_t, BLOCK_H=block_h, BLOCK_D=block_d, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out_a, (out_b if width_b else None), (dlr.sum(2) if mode == STEP_BWD else None)
