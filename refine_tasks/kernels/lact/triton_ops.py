"""The chunk steps on our Triton kernels, as autograd Functions with hand-written backwards.

Matmul operands run in the activations' dtype (bf16 in training, float32 in interpreter tests)
with float32 accumulation; fast weights, steps, momentum and all weight gradients stay float32.
Backwards recompute the projections instead of saving them: only each chunk's inputs and
weights are kept.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from refine_tasks.kernels.lact.reference import FastWeights, newton_schulz
from refine_tasks.kernels.lact.triton_gemm import bmm
from refine_tasks.kernels.lact.triton_swiglu import APPLY, APPLY_BWD, STEP, STEP_BWD, swiglu_tokens
from refine_tasks.kernels.lact.triton_update import update_backward, update_forward


def _operands(w0: Tensor, w1: Tensor, w2: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """[W0; W2] [B, 2H, D] and W1 [B, D, H] in the matmul dtype: W0 and W2 share their input."""
    return torch.cat([w0, w2], dim=1).to(dtype), w1.to(dtype).contiguous()


def _unit_stride(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _weight_grads(g02: Tensor, g1: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    h = g1.shape[2]
    return g02[:, :h], g1, g02[:, h:]


def _new(x: Tensor, *shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.empty(*shape, device=x.device, dtype=dtype)


def _apply_forward(q: Tensor, w02: Tensor, w1: Tensor) -> Tensor:
    hidden, _, _ = swiglu_tokens(APPLY, q, w02, w1)
    return bmm(hidden, w1.transpose(1, 2), torch.empty_like(q))


def _apply_backward(q: Tensor, w02: Tensor, w1: Tensor, grad_o: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(hidden of f(q), [g_bar | u_bar] [B, T, 2H], dq)."""
    hidden, pre_grads, _ = swiglu_tokens(APPLY_BWD, q, w02, w1, y=grad_o)
    return hidden, pre_grads, bmm(pre_grads, w02, torch.empty_like(q))


class _Apply(Function):
    @staticmethod
    def forward(ctx, q: Tensor, w0: Tensor, w1: Tensor, w2: Tensor) -> Tensor:
        q = _unit_stride(q)
        ctx.save_for_backward(q, w0, w1, w2)
        return _apply_forward(q, *_operands(w0, w1, w2, q.dtype))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_o: Tensor):
        q, w0, w1, w2 = ctx.saved_tensors
        w02, w1c = _operands(w0, w1, w2, q.dtype)
        grad_o = _unit_stride(grad_o.to(q.dtype))
        hidden, pre_grads, dq = _apply_backward(q, w02, w1c, grad_o)
        batch, _, d = q.shape
        h = w1.shape[2]
        g02 = bmm(pre_grads.transpose(1, 2), q, _new(q, batch, 2 * h, d))
        g1 = bmm(grad_o.transpose(1, 2), hidden, _new(q, batch, d, h))
        return dq, *_weight_grads(g02, g1)


class _ApplyStep(Function):
    """o = f(q) and the update step from (k, v, lrs), all with the same weights."""

    @staticmethod
    def forward(ctx, q, k, v, lr0, lr1, lr2, w0, w1, w2):
        q, k, v = _unit_stride(q), _unit_stride(k.to(q.dtype)), _unit_stride(v.to(q.dtype))
        lrs = torch.stack([lr0, lr1, lr2], dim=1).float()  # [B, 3, C]
        ctx.save_for_backward(q, k, v, lrs, w0, w1, w2)
        w02, w1c = _operands(w0, w1, w2, q.dtype)
        o = _apply_forward(q, w02, w1c)
        left02, left1, _ = swiglu_tokens(STEP, k, w02, w1c, y=v, lrs=lrs)
        batch, _, d = q.shape
        h = w1.shape[2]
        step02 = bmm(left02.transpose(1, 2), k, _new(q, batch, 2 * h, d))
        step1 = bmm(v.transpose(1, 2), left1, _new(q, batch, d, h))
        return o, *_weight_grads(step02, step1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_o, grad_s0, grad_s1, grad_s2):
        q, k, v, lrs, w0, w1, w2 = ctx.saved_tensors
        batch, _, d = q.shape
        h = w1.shape[2]
        dt = q.dtype
        w02, w1c = _operands(w0, w1, w2, dt)
        grad_o = torch.zeros_like(q) if grad_o is None else _unit_stride(grad_o.to(dt))
        zero_hd = torch.zeros(batch, h, d, device=q.device, dtype=dt)
        g0 = zero_hd if grad_s0 is None else grad_s0.to(dt)
        g2 = zero_hd if grad_s2 is None else grad_s2.to(dt)
        g02 = torch.cat([g0, g2], dim=1)
        g1 = torch.zeros_like(w1c) if grad_s1 is None else grad_s1.to(dt).contiguous()
        hidden, pre_grads, dq = _apply_backward(q, w02, w1c, grad_o)
        # a: [g_bar | u_bar | lr0 b | lr2 a], b: [e_bar | lr1 h] for every key token
        a, b, dlr = swiglu_tokens(STEP_BWD, k, w02, w1c, y=v, lrs=lrs, g02=g02, g1=g1)
        dk = bmm(a[..., : 2 * h], w02, torch.empty_like(k), a[..., 2 * h :], g02)
        dv = bmm(b[..., :h], w1c.transpose(1, 2), torch.empty_like(v), b[..., h:], g1.transpose(1, 2))
        gw02 = bmm(a[..., : 2 * h].transpose(1, 2), k, _new(q, batch, 2 * h, d), pre_grads.transpose(1, 2), q)
        gw1 = bmm(v.transpose(1, 2), b[..., :h], _new(q, batch, d, h), grad_o.transpose(1, 2), hidden)
        return dq, dk, dv, dlr[:, 0], dlr[:, 1], dlr[:, 2], *_weight_grads(gw02, gw1)


class _Update(Function):
    """The fused momentum step and renormalised update of one matrix (`triton_update`)."""

    @staticmethod
    def forward(ctx, w, step, norm0, previous, gate):
        ctx.save_for_backward(w, step, norm0, previous, gate)
        new, momentum = update_forward(w, step, norm0, previous, gate)
        return (new, momentum) if momentum is not None else new

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_new, grad_momentum=None):
        w, step, norm0, previous, gate = ctx.saved_tensors
        grad_new = torch.zeros_like(w) if grad_new is None else grad_new.contiguous()
        if grad_momentum is not None:
            grad_momentum = grad_momentum.contiguous()
        return update_backward(w, step, norm0, previous, gate, grad_new, grad_momentum)


class TritonOps:
    """`ChunkOps` on our Triton kernels."""

    def apply(self, w: FastWeights, q: Tensor) -> Tensor:
        return _Apply.apply(q, *w)

    def apply_and_step(self, w, q, k, v, lr0, lr1, lr2):
        o, s0, s1, s2 = _ApplyStep.apply(q, k, v, lr0, lr1, lr2, *w)
        return o, FastWeights(s0, s1, s2)

    def update(self, w, step, norms, previous, gate):
        if previous is None:
            return FastWeights(
                *(_Update.apply(*m, None, None) for m in zip(w, step, norms, strict=True))
            ), None
        pairs = [
            _Update.apply(m, s, n, p, gate.float().contiguous())
            for m, s, n, p in zip(w, step, norms, previous, strict=True)
        ]
        return FastWeights(*(p[0] for p in pairs)), FastWeights(*(p[1] for p in pairs))

    def orthogonalise(self, step: Tensor) -> Tensor:
        # bf16 on the GPU as LaCT does (tensor cores); the interpreter keeps float32
        return newton_schulz(step, torch.bfloat16 if step.is_cuda else None)
