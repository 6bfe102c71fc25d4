"""One chunk's forward and backward passes on our kernels, shared by the per-chunk autograd
Functions (`triton_ops`) and the whole-sequence one (`triton_sequence`).

Matmul operands run in the activations' dtype with float32 accumulation; weights, steps and
weight gradients are float32 in the packed layout of `triton_state`. The forward hands back the
projections of its tokens onto the hidden layer, which the backward reads back
(`triton_swiglu.Projections`: 5H values a token, in the activations' dtype); the Functions save
them beside the chunk's inputs. Outputs and input
gradients can be written into given tensors (views of whole-sequence buffers), so no
concatenation joins the chunks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from refine_tasks.kernels.lact.gemm import bmm
from refine_tasks.kernels.lact.triton_state import Layout
from refine_tasks.kernels.lact.triton_swiglu import (
    APPLY,
    APPLY_BWD,
    STEP,
    STEP_BWD,
    Projections,
    swiglu_tokens,
)


def unit_stride(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def dense(grad: Tensor | None) -> Tensor | None:
    return grad if grad is None or grad.is_contiguous() else grad.contiguous()


def apply_forward(
    q: Tensor, w02: Tensor, w1: Tensor, out: Tensor | None = None
) -> tuple[Tensor, Projections]:
    """f(q) [B, C, D] with the operand's views w02 [B, 2H, D], w1 [B, D, H], into out if given;
    and the projections for the backward to reuse."""
    hidden, _, _, projections = swiglu_tokens(APPLY, q, w02, w1)
    return bmm(hidden, w1.transpose(1, 2), torch.empty_like(q) if out is None else out), projections


def step_forward(
    lay: Layout, k: Tensor, v: Tensor, rates: Tensor, w02: Tensor, w1: Tensor
) -> tuple[Tensor, Projections]:
    """The update step, packed [B, 3HD] float32, and the projections for the backward to reuse."""
    left02, left1, _, projections = swiglu_tokens(STEP, k, w02, w1, y=v, lrs=rates)
    step = lay.empty(k, k.shape[0])
    step02, step1 = lay.split(step)
    bmm(left02.transpose(1, 2), k, step02)
    bmm(v.transpose(1, 2), left1, step1)
    return step, projections


def _into(target: Tensor | None, like: Tensor) -> Tensor:
    return torch.empty_like(like) if target is None else target


def chunk_backward(
    lay: Layout,
    q: Tensor,
    k: Tensor | None,
    v: Tensor | None,
    rates: Tensor | None,
    operand: Tensor,
    grad_o: Tensor | None,
    grad_step: Tensor | None,
    grad_w: Tensor | None,
    into: tuple[Tensor | None, Tensor, Tensor, Tensor] | None = None,
    saved_q: Projections | None = None,
    saved_kv: Projections | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """(dq, dk, dv, drates [B, 3, C], dW packed) of o = f(q) and the step from (k, v, rates); dW is
    added onto grad_w when given (in place). k is None for a chunk that only applies; grad_step is
    packed in the operand's dtype. `into`: (dq, dk, dv, drates) tensors to write the input
    gradients into (those that get none are left as they are). saved_q, saved_kv: the forward's
    projections of q and of (k, v), read back instead of recomputed."""
    w02, w1 = lay.split(operand)
    dq_into, dk_into, dv_into, dlr_into = (None,) * 4 if into is None else into
    dq = dk = dv = dlr = None
    prods02: list[tuple[Tensor, Tensor]] = []  # (a, b): dW02 += a^T b
    prods1: list[tuple[Tensor, Tensor]] = []
    if grad_o is not None:
        grad_o = unit_stride(grad_o)
        hidden, pre_grads, _, _ = swiglu_tokens(APPLY_BWD, q, w02, w1, y=grad_o, saved=saved_q)
        dq = bmm(pre_grads, w02, _into(dq_into, q))
        prods02.append((pre_grads, q))
        prods1.append((grad_o, hidden))
    if k is not None and grad_step is not None:
        g02, g1 = lay.split(grad_step)
        # a: [g_bar | u_bar | lr0 b | lr2 a], b: [e_bar | lr1 h] for every key token
        a, b, dlr, _ = swiglu_tokens(
            STEP_BWD, k, w02, w1, y=v, lrs=rates, g02=g02, g1=g1, saved=saved_kv, rate_grads=dlr_into
        )
        h = lay.h
        dk = bmm(a[..., : 2 * h], w02, _into(dk_into, k), a[..., 2 * h :], g02)
        dv = bmm(b[..., :h], w1.transpose(1, 2), _into(dv_into, v), b[..., h:], g1.transpose(1, 2))
        prods02.append((a[..., : 2 * h], k))
        prods1.append((v, b[..., :h]))
    if not prods02:
        return dq, dk, dv, dlr, grad_w
    accumulate = grad_w is not None
    grad_w = grad_w if accumulate else lay.empty(q, q.shape[0])
    for prods, out in zip((prods02, prods1), lay.split(grad_w), strict=True):
        (a1, b1), *rest = prods
        a2, b2 = (rest[0][0].transpose(1, 2), rest[0][1]) if rest else (None, None)
        bmm(a1.transpose(1, 2), b1, out, a2, b2, accumulate=accumulate)
    return dq, dk, dv, dlr, grad_w
