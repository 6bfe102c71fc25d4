"""The element-wise end of every SwiGLU token stage, shared by the fused and the split kernels.

Given a tile of the raw projections (float32, [BLOCK_T, BLOCK_H]): g = x W0^T, u = x W2^T,
e = y W1 and, for STEP_BWD, k G0^T, k G2^T, v G1, it evaluates the mode's SwiGLU expressions and
stores what the following matmuls consume; `triton_swiglu` documents what each mode writes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from refine_tasks.kernels.lact.triton_launch import cdiv

APPLY, STEP, APPLY_BWD, STEP_BWD = 0, 1, 2, 3
# (hidden columns written to out_a, to out_b) per mode, in units of H
OUT_WIDTHS = {APPLY: (1, 0), STEP: (2, 1), APPLY_BWD: (1, 2), STEP_BWD: (4, 2)}


@triton.jit
def tile_of_program(H, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    """(batch row, hidden tile, token indices, hidden indices) of this program: grid axis 0 walks
    the hidden tiles fastest, axis 1 the batch rows."""
    pid = tl.program_id(0)
    n_h = tl.cdiv(H, BLOCK_H)
    h_tile = pid % n_h
    rt = (pid // n_h) * BLOCK_T + tl.arange(0, BLOCK_T)
    rh = h_tile * BLOCK_H + tl.arange(0, BLOCK_H)
    return tl.program_id(1).to(tl.int64), h_tile, rt, rh


@triton.jit
def load_tile(ptr, rt, rh, row_stride, col0, T, H):
    """Columns [col0, col0 + H) of a row-major [T, *] matrix, this tile's part, as float32."""
    return tl.load(
        ptr + rt[:, None] * row_stride + col0 + rh[None, :],
        mask=(rt[:, None] < T) & (rh[None, :] < H),
        other=0.0,
    ).to(tl.float32)


@triton.jit
def store_tile(ptr, rt, rh, row_stride, col0, val, T, H):
    """Store val [BLOCK_T, BLOCK_H] to columns [col0, col0 + H) of a row-major [T, *] matrix."""
    tl.store(
        ptr + rt[:, None] * row_stride + col0 + rh[None, :],
        val.to(ptr.dtype.element_ty),
        mask=(rt[:, None] < T) & (rh[None, :] < H),
    )


@triton.jit
def swiglu_epilogue(
    gate, up, e, b_raw, a_raw, h_raw, rt, rh, T, H,
    lr_ptr, s_lrk, a_ptr, s_at, b_ptr, s_bt, dlr_ptr, s_dk, MODE: tl.constexpr,
):  # fmt: skip
    """Pointers are already at this batch row (dlr_ptr also at this hidden tile); rt, rh: the tile's
    token and hidden indices. Raw tiles a mode does not use are ignored (zeros are fine)."""
    sig = tl.sigmoid(gate)
    act = gate * sig
    dact = sig * (1.0 + gate * (1.0 - sig))  # silu'(gate)
    hidden = act * up
    if MODE == 0:
        store_tile(a_ptr, rt, rh, s_at, 0, hidden, T, H)
    if MODE == 2:
        store_tile(a_ptr, rt, rh, s_at, 0, hidden, T, H)
        store_tile(b_ptr, rt, rh, s_bt, 0, e * up * dact, T, H)
        store_tile(b_ptr, rt, rh, s_bt, H, e * act, T, H)
    if MODE == 1 or MODE == 3:
        lr = lr_ptr + rt
        lr0 = tl.load(lr, mask=rt < T, other=0.0)[:, None]
        lr1 = tl.load(lr + s_lrk, mask=rt < T, other=0.0)[:, None]
        lr2 = tl.load(lr + 2 * s_lrk, mask=rt < T, other=0.0)[:, None]
        a = e * act
        b = e * up * dact
        if MODE == 1:
            store_tile(a_ptr, rt, rh, s_at, 0, lr0 * b, T, H)
            store_tile(a_ptr, rt, rh, s_at, H, lr2 * a, T, H)
            store_tile(b_ptr, rt, rh, s_bt, 0, lr1 * hidden, T, H)
        else:
            h_bar = lr1 * h_raw
            a_bar = lr2 * a_raw
            b_bar = lr0 * b_raw
            d2act = sig * (1.0 - sig) * (2.0 + gate * (1.0 - 2.0 * sig))  # silu''(gate)
            g_bar = (h_bar * up + a_bar * e) * dact + b_bar * e * up * d2act
            store_tile(a_ptr, rt, rh, s_at, 0, g_bar, T, H)
            store_tile(a_ptr, rt, rh, s_at, H, h_bar * act + b_bar * e * dact, T, H)
            store_tile(a_ptr, rt, rh, s_at, 2 * H, lr0 * b, T, H)
            store_tile(a_ptr, rt, rh, s_at, 3 * H, lr2 * a, T, H)
            store_tile(b_ptr, rt, rh, s_bt, 0, a_bar * act + b_bar * up * dact, T, H)
            store_tile(b_ptr, rt, rh, s_bt, H, lr1 * hidden, T, H)
            tl.store(dlr_ptr + rt, tl.sum(b_raw * b, axis=1), mask=rt < T)
            tl.store(dlr_ptr + s_dk + rt, tl.sum(h_raw * hidden, axis=1), mask=rt < T)
            tl.store(dlr_ptr + 2 * s_dk + rt, tl.sum(a_raw * a, axis=1), mask=rt < T)


class Projections(NamedTuple):
    """Raw projections a forward mode made ([B, T, *] in x's dtype) that the matching backward
    mode can reuse instead of recomputing: p = x [W0; W2]^T [B, T, 2H] and, for STEP, e = v W1
    [B, T, H]. APPLY_BWD reuses APPLY's p (its own e comes from dO); STEP_BWD reuses STEP's both."""

    p: Tensor
    e: Tensor | None


class TokenStage(NamedTuple):
    """One call of a mode as `triton_swiglu.swiglu_tokens` checked it, unused operands standing in
    for absent ones: x, y [B, T, D]; w02, g02 [B, 2H, D]; w1, g1 [B, D, H]; lrs [B, 3, T]; the
    outputs out_a, out_b [B, T, *]; projections saved by the forward (used by the split path)."""

    mode: int
    x: Tensor
    y: Tensor
    w02: Tensor
    w1: Tensor
    g02: Tensor
    g1: Tensor
    lrs: Tensor
    out_a: Tensor
    out_b: Tensor
    saved: Projections | None = None  # the forward's projections, for a backward mode to reuse
    keep: bool = False  # a forward mode hands its projections back (the fused kernel stores them)

    def launch(self, block_t: int, block_h: int) -> tuple[tuple[int, int], Tensor, tuple[int, int, int]]:
        """(grid, rate-gradient output, its strides over batch, rate and hidden tile). STEP_BWD's
        rate gradients come per hidden tile, [B, 3, tiles, T] float32, summed afterwards (no
        atomics: the result does not depend on the launch order); other modes get out_a as a
        stand-in that is never written."""
        batch, t, _ = self.x.shape
        n_h = cdiv(self.w1.shape[2], block_h)
        grid = (cdiv(t, block_t) * n_h, batch)
        if self.mode != STEP_BWD:
            return grid, self.out_a, (0, 0, 0)
        dlr = torch.empty(batch, 3, n_h, t, device=self.x.device, dtype=torch.float32)
        return grid, dlr, dlr.stride()[:3]
