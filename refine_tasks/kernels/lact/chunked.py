"""LaCT's large-chunk schedule over a sequence, for any backend's steps: apply, then update, per chunk.

Token t of chunk c = t // chunk_size reads the weights after c updates; each full chunk then
updates them with its own keys, values and learning rates, so the last chunk of a sequence only
applies. The caller names the steps (`ChunkOps`): `TorchOps` here runs `reference.py` (any device,
any float dtype), `triton_ops.TritonOps` our Triton kernels (CUDA, or CPU under
TRITON_INTERPRET=1); the two compute the same function and are both differentiable end to end.
This module knows nothing of the Triton one (which imports it).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from refine_tasks.kernels.lact import reference as ref
from refine_tasks.kernels.lact.reference import FastWeights


@dataclass(frozen=True)
class FastWeightState:
    """The fast weights at a chunk edge and, with momentum on, the momentum of the last step."""

    weights: FastWeights
    momentum: FastWeights | None


class Chunk(NamedTuple):
    """One chunk's inputs: q, k, v [B, C, D]; rates [B, 3, C] (lr0, lr1, lr2); gate [B], the chunk's
    mean momentum gate (None: momentum off, or a chunk that only applies)."""

    q: Tensor
    k: Tensor
    v: Tensor
    rates: Tensor
    gate: Tensor | None


def gate_means(gate: Tensor | None, chunk_size: int, updates: int) -> Tensor | None:
    """Each updating chunk's mean momentum gate, [B, updates] (None: momentum off or no update)."""
    if gate is None or not updates:
        return None
    return gate[:, : updates * chunk_size].unflatten(1, (updates, chunk_size)).mean(2)


def split_chunks(
    q: Tensor, k: Tensor, v: Tensor, rates: Tensor, gate: Tensor | None, chunk_size: int, updates: int
) -> list[Chunk]:
    """The sequence's chunks. One split per input and one mean for all gates, not ops per chunk:
    autograd then also joins the chunks' gradients in one concatenation per input."""
    pieces = [x.split(chunk_size, dim=1) for x in (q, k, v)] + [rates.split(chunk_size, dim=2)]
    means: list[Tensor | None] = [None] * len(pieces[0])
    gates = gate_means(gate, chunk_size, updates)
    if gates is not None:
        means[:updates] = gates.unbind(1)
    return [Chunk(*parts, m) for *parts, m in zip(*pieces, means, strict=True)]


class SequenceInputs(NamedTuple):
    """One sequence as `lact_fast_weight` hands it to a backend: q, k, v [B, T, D]; lrs (lr0, lr1,
    lr2) [B, T]; gate [B, T] or None; the starting state; the norms to renormalise to; the chunk
    size and how many chunks update."""

    q: Tensor
    k: Tensor
    v: Tensor
    lrs: tuple[Tensor, Tensor, Tensor]
    gate: Tensor | None
    state: FastWeightState
    norms: FastWeights
    chunk_size: int
    updates: int


class ChunkOps(Protocol):
    """One backend's steps over one sequence, on its own form S of the fast-weight state."""

    def start(self, x: SequenceInputs) -> tuple[list[Chunk], Any]:
        """The chunks and the starting state S; fixes everything that holds for the whole sequence."""
        ...

    def whole(self, x: SequenceInputs) -> tuple[Tensor, FastWeightState] | None:
        """(o, final state) of the whole sequence in one step, where the backend has such a path for
        it (asked only without Muon and kept states); None: run the chunk loop instead."""
        ...

    def apply(self, s: Any, x: Chunk) -> Tensor: ...

    def apply_and_update(self, s: Any, x: Chunk, use_muon: bool) -> tuple[Tensor, Any]:
        """f(x.q) with the weights of s, and s updated by the chunk's step (x.k, x.v, x.rates, x.gate)."""
        ...

    def public(self, s: Any) -> FastWeightState: ...


def fast_weight_update(
    state: FastWeightState, step: FastWeights, norms: FastWeights, gate: Tensor | None, use_muon: bool
) -> FastWeightState:
    """One update of `state` by `step` (from `swiglu_fast_weight_grad`) in the torch reference; gate [B]
    is the chunk's mean momentum gate (None: momentum off). Muon orthogonalises the step after momentum."""
    momentum = ref.momentum_step(step, state.momentum, gate) if state.momentum is not None else None
    direction = momentum or step
    if use_muon:
        direction = FastWeights(*(ref.newton_schulz(m) for m in direction))
    weights = FastWeights(
        *(ref.renormalised_update(*m) for m in zip(state.weights, direction, norms, strict=True))
    )
    return FastWeightState(weights, momentum)


class TorchOps:
    """The reference, step by step; torch autograd differentiates it."""

    norms: FastWeights

    def start(self, x: SequenceInputs) -> tuple[list[Chunk], FastWeightState]:
        self.norms = x.norms
        rates = torch.stack(x.lrs, 1)
        return split_chunks(x.q, x.k, x.v, rates, x.gate, x.chunk_size, x.updates), x.state

    def whole(self, x: SequenceInputs) -> None:
        return None  # autograd's graph of the chunk loop is the reference

    def apply(self, s: FastWeightState, x: Chunk) -> Tensor:
        return ref.swiglu_apply(s.weights, x.q)

    def apply_and_update(self, s: FastWeightState, x: Chunk, use_muon: bool):
        step = ref.swiglu_fast_weight_grad(s.weights, x.k, x.v, *x.rates.unbind(1))
        return self.apply(s, x), fast_weight_update(s, step, self.norms, x.gate, use_muon)

    def public(self, s: FastWeightState) -> FastWeightState:
        return s


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
    ops: Callable[[], ChunkOps] = TorchOps,
) -> tuple[Tensor, LaCTTrace]:
    """The fast-weight layer over a sequence that starts at a chunk edge.

    q, k, v: [B, T, D]; lr0, lr1, lr2: [B, T] per-token rates of w0, w1, w2; momentum_gate:
    [B, T] in (0, 1) or None (momentum off); weights: the state at the start (w0, w2 [B, H, D],
    w1 [B, D, H]); norms: row norms to renormalise to (default: those of `weights`); momentum:
    the carried momentum (default zeros). A trailing full chunk updates only with
    `update_last_full_chunk` (a state for later tokens needs it; the outputs do not). ops: the
    backend's `ChunkOps` class (`TorchOps`, or `triton_ops.TritonOps`), made once for this call.
    Returns o [B, T, D] in q's dtype and the trace of states.
    """
    lrs = (lr0, lr1, lr2)
    _check(q, k, v, lrs, weights, chunk_size)
    steps = ops()
    t = q.shape[1]
    updates = t // chunk_size if update_last_full_chunk else max(t - 1, 0) // chunk_size
    norms = ref.row_norms(weights) if norms is None else norms
    if momentum is None and momentum_gate is not None:
        momentum = FastWeights(*(torch.zeros_like(m) for m in weights))
    state = FastWeightState(weights, momentum if momentum_gate is not None else None)
    inputs = SequenceInputs(q, k, v, lrs, momentum_gate, state, norms, chunk_size, updates)
    if t and not keep and not use_muon:
        whole = steps.whole(inputs)
        if whole is not None:
            return whole[0], LaCTTrace(at={}, final=whole[1], updates=updates)
    kept = {0: state} if 0 in keep else {}
    chunks, s = steps.start(inputs) if t else ([], state)
    outputs = []
    for c, x in enumerate(chunks):
        if c >= updates:
            outputs.append(steps.apply(s, x))
            continue
        o, s = steps.apply_and_update(s, x, use_muon)
        outputs.append(o)
        if c + 1 in keep:
            kept[c + 1] = steps.public(s)
    o = torch.cat(outputs, dim=1) if outputs else q.new_empty(q.shape)
    return o, LaCTTrace(at=kept, final=steps.public(s) if t else state, updates=updates)
