"""A whole sequence's chunk loop (no Muon, no states kept mid-sequence) as ONE autograd Function.

The per-chunk Functions (`triton_ops`) take slices of q, k, v and the rates and return one output
per chunk, so autograd joins the chunks with a concatenation of the outputs forward and of every
input's gradient backward (about a tenth of the layer's GPU time at the 760M shapes). Here the
forward writes each chunk's output into its slice of one [B, T, D] buffer, and the backward walks
the chunks in reverse, writing each chunk's input gradients into slices of whole-sequence
buffers. `triton_ops.TritonOps` runs it wherever it can (no Muon, no states kept mid-sequence):
on an H100 the layer's fwd+bwd from a CUDA graph reached 0.319 of the bf16 matmul rate this way
against 0.299 with the per-chunk Functions (benchmarks/RESULTS.md, 2026-11-26).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from refine_tasks.kernels.lact import triton_passes as passes
from refine_tasks.kernels.lact.triton_state import Layout
from refine_tasks.kernels.lact.triton_swiglu import Projections
from refine_tasks.kernels.lact.triton_update import UpdatePlan, update_backward, update_forward


class Sequence(Function):
    """Inputs: q, k, v [B, T, D] (unit inner stride); rates [B, 3, T] float32; gates [B, U] (each
    updating chunk's mean momentum gate) or None; packed weights, their matmul operand, packed
    momentum or None, packed norms; the layout, update plan, chunk size and number of updates U
    (>= 1). Returns (o [B, T, D], final packed weights, final packed momentum or None)."""

    @staticmethod
    def forward(ctx, q, k, v, rates, gates, weights, operand, momentum, norms, lay, plan, chunk, updates):
        ctx.set_materialize_grads(False)
        ctx.lay, ctx.plan, ctx.chunk, ctx.updates = lay, plan, chunk, updates
        o = torch.empty_like(q)
        # per updating chunk: the weights, operand and momentum it starts from, its step, and the
        # projections of q, k and v handed back for the backward
        saved = []
        for c, start in enumerate(range(0, q.shape[1], chunk)):
            part = slice(start, start + chunk)
            w02, w1 = lay.split(operand)
            _, saved_q = passes.apply_forward(q[:, part], w02, w1, o[:, part])
            if c == updates:
                break
            step, saved_kv = passes.step_forward(lay, k[:, part], v[:, part], rates[:, :, part], w02, w1)
            gate = None if momentum is None else gates[:, c]
            saved += [
                weights,
                operand,
                momentum,
                step,
                saved_q.p,
                *saved_kv,
            ]
            weights, momentum, new_operand = update_forward(
                plan, weights, step, norms, momentum, gate, q.dtype
            )
            operand = weights if new_operand is None else new_operand
        ctx.save_for_backward(q, k, v, rates, gates, norms, operand, saved_q.p, *saved)
        return o, weights, momentum

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_o, grad_w, grad_momentum):
        q, k, v, rates, gates, norms, last_operand, last_q, *saved = ctx.saved_tensors
        lay, chunk, updates = ctx.lay, ctx.chunk, ctx.updates
        t = q.shape[1]
        grad_o = passes.dense(grad_o)
        dq = None if grad_o is None else torch.empty_like(q)
        dk, dv, drates = torch.empty_like(k), torch.empty_like(v), torch.empty_like(rates)
        tail = slice(updates * chunk, t)  # the chunk that only applies: its keys reach nothing
        dk[:, tail], dv[:, tail], drates[:, :, tail] = 0, 0, 0
        gw = None if grad_w is None else passes.dense(grad_w).clone()  # added onto in place below
        gm = passes.dense(grad_momentum)
        if updates * chunk < t and grad_o is not None:
            _, _, _, _, gw = passes.chunk_backward(
                lay,
                q[:, tail],
                None,
                None,
                None,
                last_operand,
                grad_o[:, tail],
                None,
                gw,
                (dq[:, tail], dk, dv, drates),
                Projections(last_q, None),
            )
        gnorms = torch.zeros_like(norms)
        ggates = None if gates is None else torch.empty_like(gates)
        for c in reversed(range(updates)):
            weights, operand, momentum, step, q_p, k_p, v_e = saved[7 * c : 7 * c + 7]
            part = slice(c * chunk, (c + 1) * chunk)
            gate = None if momentum is None else gates[:, c]
            gw, gstep, gnorm, gm, ggate = update_backward(
                ctx.plan, weights, step, norms, momentum, gate, gw, gm, q.dtype
            )
            gnorms += gnorm
            if ggates is not None:
                ggates[:, c] = ggate
            *_, gw = passes.chunk_backward(
                lay, q[:, part], k[:, part], v[:, part], rates[:, :, part], operand,
                None if grad_o is None else grad_o[:, part], gstep, gw,
                (None if dq is None else dq[:, part], dk[:, part], dv[:, part], drates[:, :, part]),
                Projections(q_p, None), Projections(k_p, v_e),
            )  # fmt: skip
        return dq, dk, dv, drates, ggates, gw, None, gm, gnorms, None, None, None, None


def run_sequence(
    lay: Layout,
    plan: UpdatePlan,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rates: Tensor,
    gates: Tensor | None,
    weights: Tensor,
    operand: Tensor,
    momentum: Tensor | None,
    norms: Tensor,
    chunk: int,
    updates: int,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """`Sequence` applied (arguments as it documents them)."""
    return Sequence.apply(q, k, v, rates, gates, weights, operand, momentum, norms, lay, plan, chunk, updates)
