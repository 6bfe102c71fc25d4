"""The recurrent state of a fast-weight LM and the outputs of the state API.

A `State` is one dict of tensors per layer, each tensor with the stream (batch) as dim 0; what
the tensors are is the mixer's business (DeltaNet: the delta-rule matrix and the short-conv
tails). Everything here works on any such dicts, so it serves every mixer.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor

LayerState = dict[str, Tensor]
Derived = TypeVar("Derived")


@dataclass
class Capture:
    """Where one forward pass captures states: positions [B, P], prefix lengths 0..T in any order.

    The pass makes one Capture and hands it to every layer, so index structures derived from the
    positions (DeltaNet's segment plan, the short convolutions' windows: host copies and small
    launches) are built once per pass, on first use, and die with the pass (`derive`); nothing is
    cached by tensor identity anywhere else."""

    positions: Tensor
    _derived: dict[Hashable, Any] = field(default_factory=dict, repr=False)

    def derive(self, key: Hashable, build: Callable[[], Derived]) -> Derived:
        """`build()`'s result, made on the first call with this key in this pass and reused after."""
        if key not in self._derived:
            self._derived[key] = build()
        return self._derived[key]


@dataclass
class State:
    """Per-layer recurrent state of N independent streams (every tensor is [N, ...])."""

    layers: list[LayerState]

    @property
    def batch_size(self) -> int:
        return next(iter(self.layers[0].values())).shape[0]

    def map(self, fn: Callable[[Tensor], Tensor]) -> State:
        """A new State with `fn` applied to every tensor."""
        return State([{name: fn(t) for name, t in layer.items()} for layer in self.layers])

    def select(self, idx: Tensor) -> State:
        """Streams `idx` (LongTensor [M]) in that order: a State of M streams."""
        return self.map(lambda t: t.index_select(0, idx.to(t.device)))

    def put(self, idx: Tensor, part: State) -> State:
        """A new State with streams `idx` (LongTensor [M]) replaced by `part`'s M streams, in order."""
        return State(
            [
                {name: t.index_copy(0, idx.to(t.device), new[name]) for name, t in layer.items()}
                for layer, new in zip(self.layers, part.layers, strict=True)
            ]
        )

    def repeat_interleave(self, n: int) -> State:
        """Each stream repeated n times in place: stream i becomes streams i*n .. i*n+n-1 (n = 1:
        this State itself, no copies)."""
        if n == 1:
            return self
        return self.map(lambda t: t.repeat_interleave(n, dim=0))

    @staticmethod
    def cat(states: Sequence[State]) -> State:
        """Streams of all `states`, in order (same layers and tensor names in each)."""
        if not states:
            raise ValueError("State.cat needs at least one State")
        return State(
            [
                {name: torch.cat([s.layers[i][name] for s in states], dim=0) for name in layer}
                for i, layer in enumerate(states[0].layers)
            ]
        )

    def to(self, *args, **kwargs) -> State:
        """Like Tensor.to (device and/or dtype); a dtype applies to floating-point tensors only."""
        return self.map(
            lambda t: t.to(*args, **kwargs) if t.is_floating_point() else _device_only(t, args, kwargs)
        )

    def detach(self) -> State:
        return self.map(Tensor.detach)

    def clone(self) -> State:
        return self.map(Tensor.clone)

    def tensors(self) -> list[Tensor]:
        """All tensors, layer by layer and by name, so two States of one model pair up (bulk copies)."""
        return [layer[name] for layer in self.layers for name in sorted(layer)]


def _device_only(t: Tensor, args: tuple, kwargs: dict) -> Tensor:
    device = kwargs.get("device") or next((a for a in args if isinstance(a, (str, torch.device))), None)
    return t if device is None else t.to(device)


@dataclass
class PrefillOutput:
    """`prefill`: hidden [B, T, D] (after the final norm), logits [B, T, V] or None,
    captured (B*P streams; row b*P+j consumed input_ids[b, :capture[b, j]]), final (B streams, or None
    when not asked for)."""

    hidden: Tensor
    logits: Tensor | None
    captured: State | None
    final: State | None


@dataclass
class DecodeOutput:
    """`decode`: logits [N, V], hidden [N, D] (after the final norm) and the new State."""

    logits: Tensor
    hidden: Tensor
    state: State


@dataclass
class BranchedOutput:
    """`forward_branched`: main sequence logits [B, T, V] / hidden [B, T, D]; branches
    branch_logits [B, P, L, V] / branch_hidden [B, P, L, D]."""

    logits: Tensor
    hidden: Tensor
    branch_logits: Tensor
    branch_hidden: Tensor
