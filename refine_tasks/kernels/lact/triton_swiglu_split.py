"""The split SwiGLU token stage: the projections as plain batched GEMMs, then an element-wise kernel.

The fused kernel keeps up to six float32 accumulators per tile live (STEP_BWD), which holds its
tiles small and its tensor-core rate well below a GEMM library's. Here each projection is one
`triton_gemm.bmm` (cuBLAS on CUDA by default) over the whole chunk: P = x [W0; W2]^T [B, T, 2H],
E = y W1 [B, T, H] and, for STEP_BWD, Q = x [G0; G2]^T [B, T, 2H], R = y G1 [B, T, H], written in
x's dtype; the shared epilogue (`triton_swiglu_epilogue`) then reads them back tile by tile.
The cost is that round trip through memory (6H values a token at most).
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from refine_tasks.kernels.lact.triton_gemm import bmm
from refine_tasks.kernels.lact.triton_launch import interpreting, pow2_block
from refine_tasks.kernels.lact.triton_swiglu_epilogue import (
    APPLY,
    STEP,
    STEP_BWD,
    Projections,
    TokenStage,
    load_tile,
    swiglu_epilogue,
    tile_of_program,
)


@triton.jit
def _swiglu_split_kernel(
    p_ptr, e_ptr, q_ptr, r_ptr, lr_ptr, out_a_ptr, out_b_ptr, dlr_ptr, T, H,
    s_pb, s_pt, s_eb, s_et, s_qb, s_qt, s_rb, s_rt, s_lrb, s_lrk, s_ab, s_at, s_bb, s_bt, s_db, s_dk, s_dh,
    MODE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    bid, h_tile, rt, rh = tile_of_program(H, BLOCK_T, BLOCK_H)
    p_ptr += bid * s_pb
    gate = load_tile(p_ptr, rt, rh, s_pt, 0, T, H)
    up = load_tile(p_ptr, rt, rh, s_pt, H, T, H)
    e = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    b_raw = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    a_raw = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    h_raw = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    if MODE != 0:
        e = load_tile(e_ptr + bid * s_eb, rt, rh, s_et, 0, T, H)
    if MODE == 3:
        b_raw = load_tile(q_ptr + bid * s_qb, rt, rh, s_qt, 0, T, H)
        a_raw = load_tile(q_ptr + bid * s_qb, rt, rh, s_qt, H, T, H)
        h_raw = load_tile(r_ptr + bid * s_rb, rt, rh, s_rt, 0, T, H)
    swiglu_epilogue(
        gate, up, e, b_raw, a_raw, h_raw, rt, rh, T, H,
        lr_ptr + bid * s_lrb, s_lrk, out_a_ptr + bid * s_ab, s_at, out_b_ptr + bid * s_bb, s_bt,
        dlr_ptr + bid * s_db + h_tile * s_dh, s_dk, MODE,
    )  # fmt: skip


# (BLOCK_T, BLOCK_H, num_warps) of the element-wise kernel per mode on the GPU: rows of 128
# hidden units keep loads and stores in full 256-byte lines; benchmarks/gpu_lact.py sweeps them.
SPLIT_CONFIGS: dict[int, tuple[int, int, int]] = {mode: (32, 128, 4) for mode in range(STEP_BWD)} | {
    STEP_BWD: (16, 128, 4)
}


def raw_projections(s: TokenStage) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(P, E, Q, R) as the module docstring names them, P and E taken from `s.saved` where given;
    P stands in for those the mode does not use."""
    batch, t, _ = s.x.shape
    h = s.w1.shape[2]
    saved = s.saved or Projections(None, None)
    p = saved.p if saved.p is not None else bmm(s.x, s.w02.transpose(1, 2), s.x.new_empty(batch, t, 2 * h))
    if s.mode == APPLY:
        return p, p, p, p
    e = saved.e if saved.e is not None else bmm(s.y, s.w1, s.x.new_empty(batch, t, h))
    if s.mode != STEP_BWD:
        return p, e, p, p
    q = bmm(s.x, s.g02.transpose(1, 2), s.x.new_empty(batch, t, 2 * h))
    return p, e, q, bmm(s.y, s.g1, s.x.new_empty(batch, t, h))


def _blocks(mode: int, t: int, h: int) -> tuple[int, int, int]:
    if interpreting():
        return pow2_block(t, 32), pow2_block(h, 32), 4
    return SPLIT_CONFIGS[mode]


def swiglu_split(s: TokenStage) -> tuple[Tensor, Projections | None]:
    """The GEMMs and one launch of the element-wise kernel; returns the rate-gradient output
    (`TokenStage.launch`) and, for APPLY and STEP, the projections for the backward to reuse."""
    t, h = s.x.shape[1], s.w1.shape[2]
    p, e, q, r = raw_projections(s)
    block_t, block_h, warps = _blocks(s.mode, t, h)
    grid, dlr, dlr_strides = s.launch(block_t, block_h)
    _swiglu_split_kernel[grid](
        p, e, q, r, s.lrs, s.out_a, s.out_b, dlr, t, h,
        p.stride(0), p.stride(1), e.stride(0), e.stride(1), q.stride(0), q.stride(1), r.stride(0), r.stride(1),
        s.lrs.stride(0), s.lrs.stride(1), s.out_a.stride(0), s.out_a.stride(1), s.out_b.stride(0), s.out_b.stride(1),
        *dlr_strides, MODE=s.mode, BLOCK_T=block_t, BLOCK_H=block_h, num_warps=warps,
    )  # fmt: skip
    return dlr, (Projections(p, None if s.mode == APPLY else e) if s.mode in (APPLY, STEP) else None)
