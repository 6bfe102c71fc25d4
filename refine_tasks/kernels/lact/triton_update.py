"""The fused momentum step and renormalised update of all three fast-weight matrices, and its backward.

Forward, per row of the packed weights (`triton_state.Layout`: 2H rows of D, then D rows of H):
d = step + gate * previous (the new momentum; d = step without momentum), w' = w + d,
w_new = w' / (||w'|| + eps) * norm0. One launch covers every row of the three matrices: each
program owns whole rows of one matrix, so the row norm never leaves registers. It can also write
w_new in the matmul dtype, the operand of the next chunk's kernels, so no cast runs per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from refine_tasks.kernels.lact.reference import RENORM_EPS
from refine_tasks.kernels.lact.triton_launch import cdiv, interpreting, next_pow2
from refine_tasks.kernels.lact.triton_state import Layout


@triton.jit
def _stepped_rows(
    w_ptr, step_ptr, prev_ptr, gate_ptr, norm_ptr, n_a, RA, NA, RB, NB, S, RT, s_gate,
    MOMENTUM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """This program's rows: programs [0, n_a) take [W0; W2] (RA rows of NA), the rest W1 (RB of NB).
    Returns (offsets in the batch row, mask, norm index, row mask, gate, previous, d, w + d, norm0)."""
    pid = tl.program_id(0)
    bid = tl.program_id(1).to(tl.int64)
    second = (pid >= n_a).to(tl.int32)
    rr = (pid - second * n_a) * BLOCK_R + tl.arange(0, BLOCK_R)
    R = RA + second * (RB - RA)
    N = NA + second * (NB - NA)
    rn = tl.arange(0, BLOCK_N)
    off = bid * S + second * (RA * NA) + rr[:, None] * N + rn[None, :]
    row_ok = rr < R
    mask = row_ok[:, None] & (rn[None, :] < N)
    nrm = bid * RT + second * RA + rr
    d = tl.load(step_ptr + off, mask=mask, other=0.0).to(tl.float32)
    gate = 0.0
    prev = d
    if MOMENTUM:
        gate = tl.load(gate_ptr + bid * s_gate).to(tl.float32)
        prev = tl.load(prev_ptr + off, mask=mask, other=0.0).to(tl.float32)
        d += gate * prev
    new = tl.load(w_ptr + off, mask=mask, other=0.0).to(tl.float32) + d
    norm0 = tl.load(norm_ptr + nrm, mask=row_ok, other=0.0).to(tl.float32)
    return off, mask, nrm, row_ok, gate, prev, d, new, norm0


@triton.jit
def _update_fwd_kernel(
    w_ptr, step_ptr, prev_ptr, gate_ptr, norm_ptr, w_out_ptr, mom_out_ptr, cast_ptr,
    n_a, RA, NA, RB, NB, S, RT, s_gate, eps,
    MOMENTUM: tl.constexpr, CAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    off, mask, nrm, row_ok, gate, prev, d, new, norm0 = _stepped_rows(
        w_ptr, step_ptr, prev_ptr, gate_ptr, norm_ptr, n_a, RA, NA, RB, NB, S, RT, s_gate,
        MOMENTUM, BLOCK_R, BLOCK_N,
    )  # fmt: skip
    if MOMENTUM:
        tl.store(mom_out_ptr + off, d, mask=mask)
    scale = norm0 / (tl.sqrt(tl.sum(new * new, axis=1)) + eps)
    new = new * scale[:, None]
    tl.store(w_out_ptr + off, new, mask=mask)
    if CAST:
        tl.store(cast_ptr + off, new.to(cast_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _update_bwd_kernel(
    w_ptr, step_ptr, prev_ptr, gate_ptr, norm_ptr, gw_out_ptr, gmom_ptr,
    gw_ptr, gstep_ptr, gprev_ptr, gnorm_ptr, ggate_ptr,
    n_a, RA, NA, RB, NB, S, RT, s_gate, eps,
    MOMENTUM: tl.constexpr, NEW_GRAD: tl.constexpr, MOM_GRAD: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Gradients in the packed layout: gw, gstep, gprev [B, S] (gstep in its own dtype: the matmul
    operand's when the step's gradient only feeds the matmuls); gnorm and per-row gate partials [B, RT]."""
    off, mask, nrm, row_ok, gate, prev, d, new, norm0 = _stepped_rows(
        w_ptr, step_ptr, prev_ptr, gate_ptr, norm_ptr, n_a, RA, NA, RB, NB, S, RT, s_gate,
        MOMENTUM, BLOCK_R, BLOCK_N,
    )  # fmt: skip
    length = tl.sqrt(tl.sum(new * new, axis=1))
    inv = 1.0 / (length + eps)
    g_new = tl.zeros_like(new)
    dot = tl.zeros_like(length)
    if NEW_GRAD:
        g = tl.load(gw_out_ptr + off, mask=mask, other=0.0).to(tl.float32)
        dot = tl.sum(g * new, axis=1)
        # d/d new of new * norm0 / (||new|| + eps): the scaled gradient minus its radial part
        radial = tl.where(length > 0, norm0 * inv * inv * dot / length, 0.0)
        g_new = g * (norm0 * inv)[:, None] - new * radial[:, None]
    tl.store(gw_ptr + off, g_new, mask=mask)
    tl.store(gnorm_ptr + nrm, dot * inv, mask=row_ok)
    if MOM_GRAD:
        g_new += tl.load(gmom_ptr + off, mask=mask, other=0.0).to(tl.float32)
    tl.store(gstep_ptr + off, g_new.to(gstep_ptr.dtype.element_ty), mask=mask)
    if MOMENTUM:
        tl.store(gprev_ptr + off, gate * g_new, mask=mask)
        tl.store(ggate_ptr + nrm, tl.sum(g_new * prev, axis=1), mask=row_ok)


@dataclass(frozen=True)
class UpdatePlan:
    """Launch arguments of both kernels for one layout and batch, computed once per sequence."""

    grid: tuple[int, int]
    shape: tuple[int, int, int, int, int, int, int]  # n_a, RA, NA, RB, NB, S, RT
    block_r: int
    block_n: int

    @classmethod
    def of(cls, layout: Layout, batch: int) -> UpdatePlan:
        h, d = layout.h, layout.d
        block_n = max(16, next_pow2(max(h, d)))
        block_r = 2 if interpreting() else max(1, 2048 // block_n)
        n_a = cdiv(2 * h, block_r)
        grid = (n_a + cdiv(d, block_r), batch)
        return cls(grid, (n_a, 2 * h, d, d, h, layout.size, layout.rows), block_r, block_n)


def _dense(*tensors: Tensor | None) -> None:
    for t in tensors:
        if t is not None and not t.is_contiguous():
            raise ValueError(
                f"renormalised update: packed tensors must be contiguous; got {tuple(t.shape)} "
                f"strides {t.stride()}"
            )


def update_forward(
    plan: UpdatePlan,
    w: Tensor,
    step: Tensor,
    norm0: Tensor,
    previous: Tensor | None,
    gate: Tensor | None,
    operand_dtype: torch.dtype,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(w_new [B, S] float32, new momentum or None, w_new in operand_dtype or None when that is
    float32). w, step, previous: packed [B, S]; norm0 [B, RT]; gate [B] (any stride)."""
    _dense(w, step, previous, norm0)
    momentum = previous is not None
    cast = operand_dtype != torch.float32
    w_out = torch.empty_like(w, dtype=torch.float32)
    mom_out = torch.empty_like(w_out) if momentum else w_out
    cast_out = torch.empty_like(w_out, dtype=operand_dtype) if cast else w_out
    _update_fwd_kernel[plan.grid](
        w, step, previous if momentum else step, gate if momentum else norm0, norm0, w_out, mom_out, cast_out,
        *plan.shape, gate.stride(0) if momentum else 0, RENORM_EPS,
        MOMENTUM=momentum, CAST=cast, BLOCK_R=plan.block_r, BLOCK_N=plan.block_n,
    )  # fmt: skip
    return w_out, (mom_out if momentum else None), (cast_out if cast else None)


def update_backward(
    plan: UpdatePlan,
    w: Tensor,
    step: Tensor,
    norm0: Tensor,
    previous: Tensor | None,
    gate: Tensor | None,
    grad_w_new: Tensor | None,
    grad_momentum: Tensor | None,
    step_grad_dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Gradients (w, step, norm0, previous, gate) of `update_forward`, given those of its two outputs
    (None where an output got no gradient: no zeros are made for it); the step's in step_grad_dtype."""
    _dense(w, step, previous, norm0, grad_w_new, grad_momentum)
    momentum = previous is not None
    grad_w = torch.empty_like(w, dtype=torch.float32)
    grad_step = torch.empty_like(grad_w, dtype=step_grad_dtype)
    grad_prev = torch.empty_like(grad_w) if momentum else grad_w
    grad_norm = torch.empty_like(norm0, dtype=torch.float32)
    gate_rows = torch.empty_like(grad_norm) if momentum else grad_norm
    new_grad = grad_w_new is not None
    mom_grad = momentum and grad_momentum is not None
    _update_bwd_kernel[plan.grid](
        w, step, previous if momentum else step, gate if momentum else norm0, norm0,
        grad_w_new if new_grad else w, grad_momentum if mom_grad else w,
        grad_w, grad_step, grad_prev, grad_norm, gate_rows,
        *plan.shape, gate.stride(0) if momentum else 0, RENORM_EPS,
        MOMENTUM=momentum, NEW_GRAD=new_grad, MOM_GRAD=mom_grad, BLOCK_R=plan.block_r, BLOCK_N=plan.block_n,
    )  # fmt: skip
    if not momentum:
        return grad_w, grad_step, grad_norm, None, None
    return grad_w, grad_step, grad_norm, grad_prev, gate_rows.sum(1)
