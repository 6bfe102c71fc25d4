"""The chunk steps on our Triton kernels, as autograd Functions with hand-written backwards.

Matmul operands run in the activations' dtype (bf16 in training, float32 in interpreter tests)
with float32 accumulation; fast weights, steps, momentum and all weight gradients stay float32, in
the packed layout of `triton_state` ([W0; W2; W1] per row). An updating chunk without Muon is ONE
Function (apply, step, update); its backward adds the apply's and step's weight gradients onto the
update's in the matmul that makes them. Each chunk's inputs, weights and step are saved, and the
projections of its tokens, which the backward reads back (`triton_passes`). Gradients that
autograd does not deliver (None) switch kernel paths off instead of being filled with zeros.
Without Muon and kept states, `TritonOps.whole` runs the sequence as one Function instead
(`triton_sequence`); the per-chunk Functions take the rest.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from refine_tasks.kernels.lact.chunked import Chunk, FastWeightState, SequenceInputs, gate_means, split_chunks
from refine_tasks.kernels.lact.reference import newton_schulz
from refine_tasks.kernels.lact.triton_passes import (
    apply_forward,
    chunk_backward,
    dense,
    step_forward,
    unit_stride,
)
from refine_tasks.kernels.lact.triton_sequence import run_sequence
from refine_tasks.kernels.lact.triton_state import Layout, PackedState
from refine_tasks.kernels.lact.triton_swiglu import Projections
from refine_tasks.kernels.lact.triton_update import UpdatePlan, update_backward, update_forward


class _Apply(Function):
    """o = f(q) [B, C, D] with the packed weights (a chunk that only applies)."""

    @staticmethod
    def forward(ctx, q: Tensor, weights: Tensor, operand: Tensor, lay: Layout) -> Tensor:
        ctx.set_materialize_grads(False)
        ctx.lay = lay
        o, saved_q = apply_forward(q, *lay.split(operand))
        ctx.save_for_backward(q, operand, *saved_q)
        return o

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_o: Tensor | None):
        q, operand, *saved_q = ctx.saved_tensors
        dq, _, _, _, dw = chunk_backward(
            ctx.lay, q, None, None, None, operand, grad_o, None, None, saved_q=Projections(*saved_q)
        )
        return dq, dw, None, None


class _ApplyStep(Function):
    """o = f(q) and the packed update step from (k, v, rates), all with the same weights."""

    @staticmethod
    def forward(ctx, q, k, v, rates, weights, operand, lay):
        ctx.set_materialize_grads(False)
        ctx.lay = lay
        w02, w1 = lay.split(operand)
        o, saved_q = apply_forward(q, w02, w1)
        step, saved_kv = step_forward(lay, k, v, rates, w02, w1)
        ctx.save_for_backward(q, k, v, rates, operand, *saved_q, *saved_kv)
        return o, step

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_o, grad_step):
        q, k, v, rates, operand, *projections = ctx.saved_tensors
        grad_step = None if grad_step is None else dense(grad_step.to(q.dtype))
        dq, dk, dv, dlr, dw = chunk_backward(
            ctx.lay, q, k, v, rates, operand, grad_o, grad_step, None, None,
            Projections(*projections[:2]), Projections(*projections[2:]),
        )  # fmt: skip
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
            ctx.plan, weights, step, norms, momentum, gate, dense(grad_new), dense(grad_momentum)
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
        o, saved_q = apply_forward(q, w02, w1)
        step, saved_kv = step_forward(lay, k, v, rates, w02, w1)
        new, new_momentum, new_operand = update_forward(plan, weights, step, norms, momentum, gate, q.dtype)
        ctx.save_for_backward(
            q,
            k,
            v,
            rates,
            weights,
            operand,
            step,
            norms,
            momentum,
            gate,
            *saved_q,
            *saved_kv,
        )
        if new_operand is not None:
            ctx.mark_non_differentiable(new_operand)
        return o, new, new_momentum, new_operand

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_o, grad_new, grad_momentum, _grad_operand):
        q, k, v, rates, weights, operand, step, norms, momentum, gate, *projections = ctx.saved_tensors
        gw, gstep, gnorm, gprev, ggate = update_backward(
            ctx.plan, weights, step, norms, momentum, gate, dense(grad_new), dense(grad_momentum), q.dtype
        )
        dq, dk, dv, dlr, gw = chunk_backward(
            ctx.lay, q, k, v, rates, operand, grad_o, gstep, gw, None,
            Projections(*projections[:2]), Projections(*projections[2:]),
        )  # fmt: skip
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

    def _prepare(
        self, x: SequenceInputs
    ) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None], PackedState]:
        """Fix the layout, plan and norms for the sequence; returns the kernels' inputs (q, k, v in
        q's dtype with a unit inner stride, rates [B, 3, T] and gate float32) and the packed state."""
        batch, _, d = x.q.shape
        state = x.state
        self.lay = Layout(state.weights.w0.shape[1], d)
        self.plan = UpdatePlan.of(self.lay, batch)
        self.norms = self.lay.pack_norms(x.norms)
        self.dtype = state.weights.w0.dtype
        weights = self.lay.pack(state.weights)
        # the first chunk's operand; later ones come out of the update kernel
        operand = weights.detach().to(x.q.dtype)
        momentum = None if state.momentum is None else self.lay.pack(state.momentum)
        q, k, v = (unit_stride(m.to(x.q.dtype)) for m in (x.q, x.k, x.v))
        rates = torch.stack(x.lrs, 1).float()  # [B, 3, T]
        gate = None if x.gate is None else x.gate.float()
        return (q, k, v, rates, gate), PackedState(weights, operand, momentum)

    def start(self, x: SequenceInputs) -> tuple[list[Chunk], PackedState]:
        inputs, packed = self._prepare(x)
        return split_chunks(*inputs, x.chunk_size, x.updates), packed

    def whole(self, x: SequenceInputs) -> tuple[Tensor, FastWeightState] | None:
        if not x.updates:
            return None
        (q, k, v, rates, gate), s = self._prepare(x)
        gates = gate_means(gate, x.chunk_size, x.updates)
        o, weights, momentum = run_sequence(
            self.lay, self.plan, q, k, v, rates, gates, *s, self.norms, x.chunk_size, x.updates
        )
        return o, self.public(PackedState(weights, weights, momentum))

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
