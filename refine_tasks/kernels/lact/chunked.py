"""LaCT's large-chunk schedule over a sequence, for both backends: apply, then update, per chunk.

Token t of chunk c = t // chunk_size reads the weights after c updates; each full chunk then
updates them with its own keys, values and learning rates, so the last chunk of a sequence only
applies. `backend="torch"` runs `reference.py` (any device, any float dtype), `"triton"` our
Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1); the two compute the same function and are
both differentiable end to end.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from refine_tasks.kernels.lact import reference as ref
from refine_tasks.kernels.lact.reference import FastWeights

LaCTBackend = Literal["torch", "triton"]


@dataclass(frozen=True)
class FastWeightState:
    """The fast weights at a chunk edge and, with momentum on, the momentum of the last step."""

    weights: FastWeights
    momentum: FastWeights | None


class ChunkOps(Protocol):
    def apply(self, w: FastWeights, q: Tensor) -> Tensor: ...

    def apply_and_step(
        self, w: FastWeights, q: Tensor, k: Tensor, v: Tensor, lr0: Tensor, lr1: Tensor, lr2: Tensor
    ) -> tuple[Tensor, FastWeights]: ...

    def update(
        self,
        w: FastWeights,
        step: FastWeights,
        norms: FastWeights,
        previous: FastWeights | None,
        gate: Tensor | None,
    ) -> tuple[FastWeights, FastWeights | None]: ...

    def orthogonalise(self, step: Tensor) -> Tensor: ...


class TorchOps:
    """The reference, step by step; torch autograd differentiates it."""

    def apply(self, w: FastWeights, q: Tensor) -> Tensor:
        return ref.swiglu_apply(w, q)

    def apply_and_step(self, w, q, k, v, lr0, lr1, lr2):
        return ref.swiglu_apply(w, q), ref.swiglu_fast_weight_grad(w, k, v, lr0, lr1, lr2)

    def update(self, w, step, norms, previous, gate):
        if previous is not None:
            step = ref.momentum_step(step, previous, gate)
        new = FastWeights(*(ref.renormalised_update(*m) for m in zip(w, step, norms, strict=True)))
        return new, (step if previous is not None else None)

    def orthogonalise(self, step: Tensor) -> Tensor:
        return ref.newton_schulz(step)


def chunk_ops(backend: LaCTBackend) -> ChunkOps:
    if backend == "torch":
        return TorchOps()
    if backend == "triton":
        from refine_tasks.kernels.lact.triton_ops import TritonOps  # Triton only where it is asked for

        return TritonOps()
    raise ValueError(f"LaCT kernel backend {backend!r}: expected 'torch' or 'triton'")


def fast_weight_update(
    ops: ChunkOps,
    state: FastWeightState,
    step: FastWeights,
    norms: FastWeights,
    gate: Tensor | None,
    use_muon: bool,
) -> FastWeightState:
    """One update of `state` by `step` (from `swiglu_fast_weight_grad`); gate [B] is the chunk's mean
    momentum gate (None: momentum off). Muon orthogonalises the step after momentum."""
    if not use_muon:
        return FastWeightState(*ops.update(state.weights, step, norms, state.momentum, gate))
    momentum = ref.momentum_step(step, state.momentum, gate) if state.momentum is not None else None
    direction = FastWeights(*(ops.orthogonalise(m) for m in (momentum or step)))
    weights, _ = ops.update(state.weights, direction, norms, None, None)
    return FastWeightState(weights, momentum)


@dataclass(frozen=True)
class LaCTTrace:
    """States at chunk edges: `at[c]` after c updates (for each c asked in `keep`), `final` after all."""

    at: dict[int, FastWeightState]
    final: FastWeightState
    updates: int


def _check(q: Tensor, k: Tensor, v: Tensor, lrs: tuple[Tensor, ...], w: FastWeights, chunk_size: int) -> None:
    batch, t, d = q.shape
    h = w.w0.shape[1]
    if chunk_size < 1:
        raise ValueError(f"lact_fast_weight: chunk_size={chunk_size}, expected >= 1")
    for name, x in (("k", k), ("v", v)):
        if x.shape != q.shape:
            raise ValueError(f"lact_fast_weight: {name} {tuple(x.shape)} differs from q {tuple(q.shape)}")
    for i, lr in enumerate(lrs):
        if lr.shape != (batch, t):
            raise ValueError(f"lact_fast_weight: lr{i} {tuple(lr.shape)}, expected [B, T] = {(batch, t)}")
    expect = ((batch, h, d), (batch, d, h), (batch, h, d))
    for name, m, shape in zip(("w0", "w1", "w2"), w, expect, strict=True):
        if m.shape != shape:
            raise ValueError(
                f"lact_fast_weight: {name} {tuple(m.shape)}, expected {shape} for q {tuple(q.shape)}"
            )


def lact_fast_weight(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr0: Tensor,
    lr1: Tensor,
    lr2: Tensor,
    weights: FastWeights,
    *,
    chunk_size: int,
    momentum_gate: Tensor | None = None,
    use_muon: bool = False,
    norms: FastWeights | None = None,
    momentum: FastWeights | None = None,
    update_last_full_chunk: bool = False,
    keep: Collection[int] = (),
    backend: LaCTBackend = "torch",
) -> tuple[Tensor, LaCTTrace]:
    """The fast-weight layer over a sequence that starts at a chunk edge.

    q, k, v: [B, T, D]; lr0, lr1, lr2: [B, T] per-token rates of w0, w1, w2; momentum_gate:
    [B, T] in (0, 1) or None (momentum off); weights: the state at the start (w0, w2 [B, H, D],
    w1 [B, D, H]); norms: row norms to renormalise to (default: those of `weights`); momentum:
    the carried momentum (default zeros). A trailing full chunk updates only with
    `update_last_full_chunk` (a state for later tokens needs it; the outputs do not).
    Returns o [B, T, D] in q's dtype and the trace of states.
    """
    lrs = (lr0, lr1, lr2)
    _check(q, k, v, lrs, weights, chunk_size)
    ops = chunk_ops(backend)
    t = q.shape[1]
    updates = t // chunk_size if update_last_full_chunk else max(t - 1, 0) // chunk_size
    norms = ref.row_norms(weights) if norms is None else norms
    if momentum is None and momentum_gate is not None:
        momentum = FastWeights(*(torch.zeros_like(m) for m in weights))
    state = FastWeightState(weights, momentum if momentum_gate is not None else None)
    kept = {0: state} if 0 in keep else {}
    outputs = []
    # One split per input, not a slice per chunk: autograd then joins the chunks' gradients in one
    # concatenation instead of zero-filling and adding a full-length tensor for every chunk.
    chunks = zip(*(x.split(chunk_size, dim=1) for x in (q, k, v, *lrs)), strict=True) if t else ()
    gates = momentum_gate.split(chunk_size, dim=1) if momentum_gate is not None else None
    for c, (qc, kc, vc, *lrc) in enumerate(chunks):
        if c >= updates:
            outputs.append(ops.apply(state.weights, qc))
            continue
        o, step = ops.apply_and_step(state.weights, qc, kc, vc, *lrc)
        outputs.append(o)
        gate = gates[c].mean(1) if gates is not None else None
        state = fast_weight_update(ops, state, step, norms, gate, use_muon)
        if c + 1 in keep:
            kept[c + 1] = state
    o = torch.cat(outputs, dim=1) if outputs else q.new_empty(q.shape)
    return o, LaCTTrace(at=kept, final=state, updates=updates)
