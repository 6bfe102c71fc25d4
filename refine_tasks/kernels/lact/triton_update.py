"""The fused momentum step and renormalised update of one fast-weight matrix, and its backward.

Forward, per row of w [B, R, N]: d = step + gate * previous (the new momentum; d = step without
momentum), w' = w + d, w_new = w' / (||w'|| + eps) * norm0. One pass over the rows: each
program owns whole rows, so the row norm never leaves registers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from refine_tasks.kernels.lact.reference import RENORM_EPS
from refine_tasks.kernels.lact.triton_launch import interpreting


@triton.jit
def _stepped_rows(
    w_ptr, step_ptr, prev_ptr, gate_ptr, norm_ptr, R, N, s_w, s_step, s_prev, s_norm,
    MOMENTUM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """This program's rows: (row ids, offsets, mask, gate, previous momentum, d, w + d, norm0)."""
    bid = tl.program_id(1).to(tl.int64)
    rr = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rn = tl.arange(0, BLOCK_N)
    off = rr[:, None] * N + rn[None, :]
    mask = (rr[:, None] < R) & (rn[None, :] < N)
    d = tl.load(step_ptr + bid * s_step + off, mask=mask, other=0.0).to(tl.float32)
    gate = 0.0
    prev = d
    if MOMENTUM:
        gate = tl.load(gate_ptr + bid).to(tl.float32)
        prev = tl.load(prev_ptr + bid * s_prev + off, mask=mask, other=0.0).to(tl.float32)
        d += gate * prev
    new = tl.load(w_ptr + bid * s_w + off, mask=mask, other=0.0).to(tl.float32) + d
    norm0 = tl.load(norm_ptr + bid * s_norm + rr, mask=rr < R, other=0.0).to(tl.float32)
    return rr, off, mask, gate, prev, d, new, norm0


@triton.jit
def _update_fwd_kernel(
    w_ptr, step_ptr, prev_ptr, gate_ptr, norm_ptr, w_out_ptr, mom_out_ptr,
    R, N, s_w, s_step, s_prev, s_norm, s_wo, s_mo, eps,
    MOMENTUM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    bid = tl.program_id(1).to(tl.int64)
    rr, off, mask, gate, prev, d, new, norm0 = _stepped_rows(
        w_ptr, step_ptr, prev_ptr, gate_ptr, norm_ptr, R, N, s_w, s_step, s_prev, s_norm, MOMENTUM, BLOCK_R, BLOCK_N
    )  # fmt: skip
    if MOMENTUM:
        tl.store(mom_out_ptr + bid * s_mo + off, d.to(mom_out_ptr.dtype.element_ty), mask=mask)
    scale = norm0 / (tl.sqrt(tl.sum(new * new, axis=1)) + eps)
    tl.store(w_out_ptr + bid * s_wo + off, (new * scale[:, None]).to(w_out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _update_bwd_kernel(
    w_ptr, step_ptr, prev_ptr, gate_ptr, norm_ptr, gw_out_ptr, gmom_ptr,
    gw_ptr, gstep_ptr, gprev_ptr, gnorm_ptr, ggate_ptr,
    R, N, s_w, s_step, s_prev, s_norm, s_gwo, s_gmom, eps,
    MOMENTUM: tl.constexpr, MOM_GRAD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Outputs are contiguous [B, R, N] (gw, gstep, gprev) and [B, R] (gnorm, per-row gate partials)."""
    bid = tl.program_id(1).to(tl.int64)
    rr, off, mask, gate, prev, d, new, norm0 = _stepped_rows(
        w_ptr, step_ptr, prev_ptr, gate_ptr, norm_ptr, R, N, s_w, s_step, s_prev, s_norm, MOMENTUM, BLOCK_R, BLOCK_N
    )  # fmt: skip
    g = tl.load(gw_out_ptr + bid * s_gwo + off, mask=mask, other=0.0).to(tl.float32)
    length = tl.sqrt(tl.sum(new * new, axis=1))
    inv = 1.0 / (length + eps)
    dot = tl.sum(g * new, axis=1)
    # d/d new of new * norm0 / (||new|| + eps): the scaled gradient minus its radial part
    radial = tl.where(length > 0, norm0 * inv * inv * dot / length, 0.0)
    g_new = g * (norm0 * inv)[:, None] - new * radial[:, None]
    out = bid * R * N + off
    tl.store(gw_ptr + out, g_new, mask=mask)
    tl.store(gnorm_ptr + bid * R + rr, dot * inv, mask=rr < R)
    if MOM_GRAD:
        g_new += tl.load(gmom_ptr + bid * s_gmom + off, mask=mask, other=0.0).to(tl.float32)
    tl.store(gstep_ptr + out, g_new, mask=mask)
    if MOMENTUM:
        tl.store(gprev_ptr + out, gate * g_new, mask=mask)
        tl.store(ggate_ptr + bid * R + rr, tl.sum(g_new * prev, axis=1), mask=rr < R)


def _blocks(n: int) -> tuple[int, int]:
    block_n = max(16, triton.next_power_of_2(n))
    return (2 if interpreting() else max(1, 2048 // block_n)), block_n


def _check_rows(w: Tensor, *others: Tensor | None) -> None:
    for t in (w, *others):
        if t is not None and (
            t.shape[-2:] != w.shape[-2:] or t.stride(-1) != 1 or t.stride(-2) != w.shape[-1]
        ):
            raise ValueError(
                f"renormalised update: every matrix must be row-major [B, {w.shape[1]}, {w.shape[2]}] "
                f"with rows stored densely; got {tuple(t.shape)} strides {t.stride()}"
            )


def update_forward(
    w: Tensor, step: Tensor, norm0: Tensor, previous: Tensor | None = None, gate: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """(w_new [B, R, N], new momentum or None). w, step, previous [B, R, N]; norm0 [B, R]; gate [B]."""
    _check_rows(w, step, previous)
    batch, rows, n = w.shape
    momentum = previous is not None
    w_out = torch.empty_like(w, memory_format=torch.contiguous_format)
    mom_out = torch.empty_like(w_out) if momentum else w_out
    block_r, block_n = _blocks(n)
    _update_fwd_kernel[(triton.cdiv(rows, block_r), batch)](
        w, step, previous if momentum else step, gate if momentum else norm0, norm0, w_out, mom_out,
        rows, n, w.stride(0), step.stride(0), previous.stride(0) if momentum else 0, norm0.stride(0),
        w_out.stride(0), mom_out.stride(0), RENORM_EPS, MOMENTUM=momentum, BLOCK_R=block_r, BLOCK_N=block_n,
    )  # fmt: skip
    return w_out, (mom_out if momentum else None)


def update_backward(
    w: Tensor,
    step: Tensor,
    norm0: Tensor,
    previous: Tensor | None,
    gate: Tensor | None,
    grad_w_new: Tensor,
    grad_momentum: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Gradients (w, step, norm0, previous, gate) of `update_forward`, given those of its two outputs."""
    _check_rows(w, step, previous, grad_w_new, grad_momentum)
    batch, rows, n = w.shape
    momentum = previous is not None
    grad_w = torch.empty(batch, rows, n, device=w.device, dtype=torch.float32)
    grad_step = torch.empty_like(grad_w)
    grad_prev = torch.empty_like(grad_w) if momentum else grad_w
    grad_norm = torch.empty(batch, rows, device=w.device, dtype=torch.float32)
    gate_rows = torch.empty_like(grad_norm) if momentum else grad_norm
    mom_grad = momentum and grad_momentum is not None
    block_r, block_n = _blocks(n)
    _update_bwd_kernel[(triton.cdiv(rows, block_r), batch)](
        w, step, previous if momentum else step, gate if momentum else norm0, norm0, grad_w_new,
        grad_momentum if mom_grad else grad_w_new, grad_w, grad_step, grad_prev, grad_norm, gate_rows,
        rows, n, w.stride(0), step.stride(0), previous.stride(0) if momentum else 0, norm0.stride(0),
        grad_w_new.stride(0), grad_momentum.stride(0) if mom_grad else 0, RENORM_EPS,
        MOMENTUM=momentum, MOM_GRAD=mom_grad, BLOCK_R=block_r, BLOCK_N=block_n,
    )  # fmt: skip
    if not momentum:
        return grad_w, grad_step, grad_norm, None, None
    return grad_w, grad_step, grad_norm, grad_prev, gate_rows.sum(1)
