"""The fused SwiGLU token kernel: a tile of tokens against a tile of the hidden layer, in one pass.

The projections run on the tensor cores into float32 accumulators, then the shared epilogue
(`triton_swiglu_epilogue`) writes the mode's outputs. Recomputing, STEP_BWD holds six
accumulators per tile (g, u, e and the three step-gradient products), which caps the tile size.
A forward mode asked to keep its projections also stores g, u (and e for STEP) in x's dtype, and
a backward mode handed them reads them instead of recomputing them (STEP_BWD then holds three
accumulators, APPLY_BWD one). On an H100 that was no faster for the fused backward modes (their
epilogues, not their products, set the pace), so the layer keeps projections only for the split
path's backward modes (`triton_swiglu.MIXED`).
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from refine_tasks.kernels.lact.triton_launch import interpreting, pow2_block
from refine_tasks.kernels.lact.triton_swiglu_epilogue import (
    APPLY,
    APPLY_BWD,
    STEP,
    STEP_BWD,
    Projections,
    TokenStage,
    load_tile,
    store_tile,
    swiglu_epilogue,
    tile_of_program,
)


@triton.jit
def _rows_tile(ptr, rows, cols, n_rows, n_cols, row_stride):
    """Tile [len(cols), len(rows)] of a row-major matrix read transposed: element (c, r) = m[r, c]."""
    return tl.load(
        ptr + rows[None, :] * row_stride + cols[:, None],
        mask=(rows[None, :] < n_rows) & (cols[:, None] < n_cols),
        other=0.0,
    )


@triton.jit
def _swiglu_tokens_kernel(
    x_ptr, y_ptr, w02_ptr, w1_ptr, g02_ptr, g1_ptr, lr_ptr, out_a_ptr, out_b_ptr, dlr_ptr, p_ptr, e_ptr,
    T, D: tl.constexpr, H,
    s_xb, s_xt, s_yb, s_yt, s_lrb, s_lrk, s_ab, s_at, s_bb, s_bt, s_db, s_dk, s_dh, s_w02b, s_w1b, s_g02b, s_g1b,
    s_pb, s_pt, s_eb, s_et,
    MODE: tl.constexpr, KEEP: tl.constexpr, SAVED: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """KEEP (APPLY, STEP): store the projections to p [B, T, 2H] (g | u) and e [B, T, H] (STEP).
    SAVED (APPLY_BWD, STEP_BWD): read g, u from p instead of computing them, and e too (STEP_BWD;
    APPLY_BWD's e is dO W1, always computed)."""
    bid, h_tile, rt, rh = tile_of_program(H, BLOCK_T, BLOCK_H)
    rd = tl.arange(0, BLOCK_D)
    x_ptr += bid * s_xb
    y_ptr += bid * s_yb
    w0_ptr = w02_ptr + bid * s_w02b
    w2_ptr = w0_ptr + H * D
    w1_ptr += bid * s_w1b
    g0_ptr = g02_ptr + bid * s_g02b
    g2_ptr = g0_ptr + H * D
    g1_ptr += bid * s_g1b
    p_ptr += bid * s_pb
    e_ptr += bid * s_eb

    gate = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    up = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    e = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    b_raw = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)  # k G0^T
    a_raw = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)  # k G2^T
    h_raw = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)  # v G1
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + rd
        if not SAVED or MODE == 3:  # x feeds g and u, or STEP_BWD's k G0^T and k G2^T
            x = tl.load(
                x_ptr + rt[:, None] * s_xt + dd[None, :],
                mask=(rt[:, None] < T) & (dd[None, :] < D),
                other=0.0,
            )
        if not SAVED:
            gate = tl.dot(x, _rows_tile(w0_ptr, rh, dd, H, D, D), gate)
            up = tl.dot(x, _rows_tile(w2_ptr, rh, dd, H, D, D), up)
        if MODE != 0:
            y = tl.load(
                y_ptr + rt[:, None] * s_yt + dd[None, :],
                mask=(rt[:, None] < T) & (dd[None, :] < D),
                other=0.0,
            )
        if MODE == 1 or MODE == 2 or (MODE == 3 and not SAVED):  # e = y W1
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

    if SAVED:
        gate = load_tile(p_ptr, rt, rh, s_pt, 0, T, H)
        up = load_tile(p_ptr, rt, rh, s_pt, H, T, H)
        if MODE == 3:
            e = load_tile(e_ptr, rt, rh, s_et, 0, T, H)
    if KEEP:
        store_tile(p_ptr, rt, rh, s_pt, 0, gate, T, H)
        store_tile(p_ptr, rt, rh, s_pt, H, up, T, H)
        if MODE == 1:
            store_tile(e_ptr, rt, rh, s_et, 0, e, T, H)
    swiglu_epilogue(
        gate, up, e, b_raw, a_raw, h_raw, rt, rh, T, H,
        lr_ptr + bid * s_lrb, s_lrk, out_a_ptr + bid * s_ab, s_at, out_b_ptr + bid * s_bb, s_bt,
        dlr_ptr + bid * s_db + h_tile * s_dh, s_dk, MODE,
    )  # fmt: skip


# (BLOCK_T, BLOCK_H, BLOCK_D, num_warps, num_stages) per (mode, projections read back) on the GPU:
# the fastest of benchmarks/gpu_lact.py's sweeps on an H100 at the 760M chunk shape (it re-picks the
# recomputing ones in its run and times the two reading back: lact_swiglu_*_us_fused_kept).
CONFIGS: dict[tuple[int, bool], tuple[int, int, int, int, int]] = {
    (APPLY, False): (128, 64, 64, 8, 3),
    (STEP, False): (128, 128, 32, 8, 4),
    (APPLY_BWD, False): (128, 64, 64, 8, 3),
    (STEP_BWD, False): (64, 64, 64, 8, 3),
    (APPLY_BWD, True): (128, 64, 64, 8, 3),
    (STEP_BWD, True): (64, 64, 64, 8, 3),
}


def _blocks(mode: int, saved: bool, t: int, h: int, d: int, itemsize: int) -> tuple[int, int, int, int, int]:
    """The table's block shape for 2-byte operands; wider ones (float32) take a K step (BLOCK_D) as
    many bytes wide, so a pipeline stage needs the same shared memory (a float32 model at D = 384
    asked 320 KB of an H100's 227 KB with the bf16 shape)."""
    if interpreting():
        return pow2_block(t, 32), pow2_block(h, 32), pow2_block(d, 32), 4, 1
    block_t, block_h, block_d, warps, stages = CONFIGS[mode, saved]
    return block_t, block_h, max(16, block_d * 2 // itemsize), warps, stages


def swiglu_fused(s: TokenStage) -> tuple[Tensor, Projections | None]:
    """One launch of the fused kernel; returns the rate-gradient output (`TokenStage.launch`) and,
    for APPLY and STEP with `s.keep`, the projections for the backward to read back."""
    batch, t, d = s.x.shape
    h = s.w1.shape[2]
    keep = s.keep  # swiglu_tokens sets it for forward modes only
    saved = s.saved is not None and s.mode in (APPLY_BWD, STEP_BWD)
    if saved and s.mode == STEP_BWD and s.saved.e is None:
        raise ValueError("swiglu_fused: STEP_BWD reads back both projections (p and e); e is missing")
    if keep:
        p = s.x.new_empty(batch, t, 2 * h)
        e = s.x.new_empty(batch, t, h) if s.mode == STEP else p
    else:
        p = s.saved.p if saved else s.out_a  # out_a stands in for a buffer the kernel never touches
        e = s.saved.e if saved and s.mode == STEP_BWD else p
    block_t, block_h, block_d, warps, stages = _blocks(s.mode, saved, t, h, d, s.x.element_size())
    grid, dlr, dlr_strides = s.launch(block_t, block_h)
    _swiglu_tokens_kernel[grid](
        s.x, s.y, s.w02, s.w1, s.g02, s.g1, s.lrs, s.out_a, s.out_b, dlr, p, e,
        t, d, h, s.x.stride(0), s.x.stride(1), s.y.stride(0), s.y.stride(1), s.lrs.stride(0), s.lrs.stride(1),
        s.out_a.stride(0), s.out_a.stride(1), s.out_b.stride(0), s.out_b.stride(1), *dlr_strides,
        s.w02.stride(0), s.w1.stride(0), s.g02.stride(0), s.g1.stride(0),
        p.stride(0), p.stride(1), e.stride(0), e.stride(1),
        MODE=s.mode, KEEP=keep, SAVED=saved,
        BLOCK_T=block_t, BLOCK_H=block_h, BLOCK_D=block_d, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return dlr, (Projections(p, e if s.mode == STEP else None) if keep else None)
