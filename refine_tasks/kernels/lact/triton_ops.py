"""The chunk steps on our Triton kernels, as autograd Functions with hand-written backwards.

Matmul operands run in the activations' dtype (bf16 in training, float32 in interpreter tests)
with float32 accumulation; fast weights, steps, momentum and all weight gradients stay float32, in
the packed layout of `triton_state` ([W0; W2; W1] per row). An updating chunk without Muon is ONE
Function (apply, step, update); its backward adds the apply's and step's weight gradients onto the
update's in the matmul that makes them. Backwards recompute the projections instead of saving
them: only each chunk's inputs, weights and step are kept. Gradients that autograd does not
deliver (None) switch kernel paths off instead of being filled with zeros.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from refine_tasks.kernels.lact.chunked import Chunk, FastWeightState, split_chunks
from refine_tasks.kernels.lact.reference import newton_schulz
from refine_tasks.kernels.lact.triton_gemm import bmm
from refine_tasks.kernels.lact.triton_state import Layout, PackedState
from refine_tasks.kernels.lact.triton_swiglu import APPLY, APPLY_BWD, STEP, STEP_BWD, swiglu_tokens
from refine_tasks.kernels.lact.triton_update import UpdatePlan, update_backward, update_forward


def _unit_stride(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _apply_forward(q: Tensor, w02: Tensor, w1: Tensor) -> Tensor:
    """f(q) with the operand's views w02 [B, 2H, D], w1 [B, D, H]."""
    hidden, _, _ = swiglu_tokens(APPLY, q, w02, w1)
    return bmm(hidden, w1.transpose(1, 2), torch.empty_like(q))


def _step_forward(lay: Layout, k: Tensor, v: Tensor, rates: Tensor, w02: Tensor, w1: Tensor) -> Tensor:
    """The update step, packed [B, 3HD] float32."""
    left02, left1, _ = swiglu_tokens(STEP, k, w02, w1, y=v, lrs=rates)
    step = lay.empty(k, k.shape[0])
    step02, step1 = lay.split(step)
    bmm(left02.transpose(1, 2), k, step02)
    bmm(v.transpose(1, 2), left1, step1)
    return step


def _backward(
    lay: Layout,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rates: Tensor,
    operand: Tensor,
    grad_o: Tensor | None,
    grad_step: Tensor | None,
    grad_w: Tensor | None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """(dq, dk, dv, drates, dW packed) of o = f(q) and the step from (k, v, rates); dW is added onto
    grad_w when given (in place). k is None for a chunk that only applies; grad_step is packed in
    the operand's dtype."""
    w02, w1 = lay.split(operand)
    dq = dk = dv = dlr = None
    prods02: list[tuple[Tensor, Tensor]] = []  # (a, b): dW02 += a^T b
    prods1: list[tuple[Tensor, Tensor]] = []
    if grad_o is not None:
        grad_o = _unit_stride(grad_o)
        hidden, pre_grads, _ = swiglu_tokens(APPLY_BWD, q, w02, w1, y=grad_o)
        dq = bmm(pre_grads, w02, torch.empty_like(q))
        prods02.append((pre_grads, q))
        prods1.append((grad_o, hidden))
    if k is not None and grad_step is not None:
        g02, g1 = lay.split(grad_step)
        # a: [g_bar | u_bar | lr0 b | lr2 a], b: [e_bar | lr1 h] for every key token
        a, b, dlr = swiglu_tokens(STEP_BWD, k, w02, w1, y=v, lrs=rates, g02=g02, g1=g1)
        h = lay.h
        dk = bmm(a[..., : 2 * h], w02, torch.empty_like(k), a[..., 2 * h :], g02)
        dv = bmm(b[..., :h], w1.transpose(1, 2), torch.empty_like(v), b[..., h:], g1.transpose(1, 2))
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


def _dense(grad: Tensor | None) -> Tensor | None:
    return grad if grad is None or grad.is_contiguous() else grad.contiguous()


class _Apply(Function):
    """o = f(q) [B, C, D] with the packed weights (a chunk that only applies)."""

    @staticmethod
    def forward(ctx, q: Tensor, weights: Tensor, operand: Tensor, lay: Layout) -> Tensor:
        ctx.set_materialize_grads(False)
        ctx.lay = lay
        ctx.save_for_backward(q, operand)
        return _apply_forward(q, *lay.split(operand))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_o: Tensor | None):
        q, operand = ctx.saved_tensors
        dq, _, _, _, dw = _backward(ctx.lay, q, None, None, None, operand, grad_o, None, None)
        return dq, dw, None, None


class _ApplyStep(Function):
    """o = f(q) and the packed update step from (k, v, rates), all with the same weights."""

    @staticmethod
    def forward(ctx, q, k, v, rates, weights, operand, lay):
        ctx.set_materialize_grads(False)
        ctx.lay = lay
        ctx.save_for_backward(q, k, v, rates, operand)
        w02, w1 = lay.split(operand)
        return _apply_forward(q, w02, w1), _step_forward(lay, k, v, rates, w02, w1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_o, grad_step):
        q, k, v, rates, operand = ctx.saved_tensors
        grad_step = None if grad_step is None else _dense(grad_step.to(q.dtype))
        dq, dk, dv, dlr, dw = _backward(ctx.lay, q, k, v, rates, operand, grad_o, grad_step, None)
        return dq, dk, dv, dlr, dw, None, None


class _Update(Function):
    """The fused momentum step and renormalised update of the packed weights (`triton_update`):
    (new weights, new momentum or None, new weights as the matmul operand or None if float32)."""

    @staticmethod
    def forward(ctx, weights, step, norms, momentum, gate, plan, operand_dtype):
        ctx.set_materialize_grads(False)
        ctx.plan = plan
        ctx.save_for_backward(weights, step, norms, momentum, gate)
        new, new_momentum, operand = update_forward(plan, weights, step, norms, momentum, gate, operand_dtype)
        if operand is not None:
            ctx.mark_non_differentiable(operand)
        return new, new_momentum, operand

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_new, grad_momentum, _grad_operand):
        weights, step, norms, momentum, gate = ctx.saved_tensors
        grads = update_backward(
            ctx.plan, weights, step, norms, momentum, gate, _dense(grad_new), _dense(grad_momentum)
        )
        return *grads, None, None


class _Chunk(Function):
    """An updating chunk without Muon in one Function (inputs: a `Chunk`, a `PackedState`, the
    packed norms): o = f(q), the step from (k, v, rates), and the fused momentum step and
    renormalised update. Returns (o, new weights, new momentum or None, new weights as the matmul
    operand or None if float32)."""

    @staticmethod
    def forward(ctx, q, k, v, rates, gate, weights, operand, momentum, norms, lay, plan):
        ctx.set_materialize_grads(False)
        ctx.lay, ctx.plan = lay, plan
        w02, w1 = lay.split(operand)
        o = _apply_forward(q, w02, w1)
        step = _step_forward(lay, k, v, rates, w02, w1)
        new, new_momentum, new_operand = update_forward(plan, weights, step, norms, momentum, gate, q.dtype)
        ctx.save_for_backward(q, k, v, rates, weights, operand, step, norms, momentum, gate)
        if new_operand is not None:
            ctx.mark_non_differentiable(new_operand)
        return o, new, new_momentum, new_operand

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_o, grad_new, grad_momentum, _grad_operand):
        q, k, v, rates, weights, operand, step, norms, momentum, gate = ctx.saved_tensors
        gw, gstep, gnorm, gprev, ggate = update_backward(
            ctx.plan, weights, step, norms, momentum, gate, _dense(grad_new), _dense(grad_momentum), q.dtype
        )
        dq, dk, dv, dlr, gw = _backward(ctx.lay, q, k, v, rates, operand, grad_o, gstep, gw)
        return dq, dk, dv, dlr, ggate, gw, None, gprev, gnorm, None, None


def _state(weights: Tensor, operand: Tensor | None, momentum: Tensor | None) -> PackedState:
    """The state after an update; float32 matmuls read the weights themselves (no copy was made)."""
    return PackedState(weights, weights.detach() if operand is None else operand, momentum)


class TritonOps:
    """`ChunkOps` on our Triton kernels; the state is a `PackedState`."""

    lay: Layout
    plan: UpdatePlan
    norms: Tensor  # packed [B, 2H + D] float32
    dtype: torch.dtype  # the weights' dtype outside (states read out are cast back to it)

    def start(self, q, k, v, lrs, gate, state, norms, chunk_size, updates):
        batch, _, d = q.shape
        self.lay = Layout(state.weights.w0.shape[1], d)
        self.plan = UpdatePlan.of(self.lay, batch)
        self.norms = self.lay.pack_norms(norms)
        self.dtype = state.weights.w0.dtype
        weights = self.lay.pack(state.weights)
        # the first chunk's operand; later ones come out of the update kernel
        operand = weights.detach().to(q.dtype)
        momentum = None if state.momentum is None else self.lay.pack(state.momentum)
        q, k, v = (_unit_stride(x.to(q.dtype)) for x in (q, k, v))
        rates = torch.stack(lrs, 1).float()  # [B, 3, T]
        gate = None if gate is None else gate.float()
        return split_chunks(q, k, v, rates, gate, chunk_size, updates), PackedState(
            weights, operand, momentum
        )

    def apply(self, s: PackedState, x: Chunk) -> Tensor:
        return _Apply.apply(x.q, s.weights, s.operand, self.lay)

    def apply_and_update(self, s: PackedState, x: Chunk, use_muon: bool) -> tuple[Tensor, PackedState]:
        if not use_muon:
            o, weights, momentum, operand = _Chunk.apply(*x, *s, self.norms, self.lay, self.plan)
            return o, _state(weights, operand, momentum)
        o, step = _ApplyStep.apply(x.q, x.k, x.v, x.rates, s.weights, s.operand, self.lay)
        momentum = None if s.momentum is None else step + x.gate[:, None] * s.momentum
        direction = self._orthogonalise(step if momentum is None else momentum)
        weights, _, operand = _Update.apply(
            s.weights, direction, self.norms, None, None, self.plan, x.q.dtype
        )
        return o, _state(weights, operand, momentum)

    def _orthogonalise(self, step: Tensor) -> Tensor:
        """Muon's Newton-Schulz on each matrix of a packed step: W0 and W2 as one batch of 2B."""
        lay, batch = self.lay, step.shape[0]
        # bf16 on the GPU as LaCT does (tensor cores); the interpreter keeps float32
        dtype = torch.bfloat16 if step.is_cuda else None
        w02 = newton_schulz(lay.w02(step).reshape(2 * batch, lay.h, lay.d), dtype)
        return torch.cat([w02.view(batch, -1), newton_schulz(lay.w1(step), dtype).flatten(1)], 1)

    def public(self, s: PackedState) -> FastWeightState:
        momentum = None if s.momentum is None else self.lay.unpack(s.momentum, self.dtype)
        return FastWeightState(self.lay.unpack(s.weights, self.dtype), momentum)
