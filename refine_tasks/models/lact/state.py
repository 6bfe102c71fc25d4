"""LaCT's per-layer recurrent state and how it is cut out of a processed sequence.

A stream that has consumed `position` tokens holds, per layer:
- `w0`, `w1`, `w2` [N, heads, ., .]: the fast weights after position // chunk updates;
- `m0`, `m1`, `m2`: the momentum of the last update (momentum on only);
- `pending_k`, `pending_v` [N, heads, chunk, d], `pending_lr` [N, heads, 3, chunk] and
  `pending_gate` [N, heads, chunk]: the current chunk's tokens awaiting its update (slots at
  and past position % chunk are zero);
- `window_k`, `window_v` [N, window-1, attn heads, attn d]: a ring of the last window-1
  attention keys/values (RoPE applied), slot = absolute position % (window-1), unused slots zero;
- `position` [N]: tokens consumed (long).
Keys always come in the order of `state_keys`, so a State's tensors line up for bulk copies.
"""

from __future__ import annotations

import torch
from torch import Tensor

from refine_tasks.kernels.lact import FastWeights

WEIGHTS = ("w0", "w1", "w2")
MOMENTA = ("m0", "m1", "m2")
PENDING = ("pending_k", "pending_v", "pending_lr", "pending_gate")
WINDOW = ("window_k", "window_v")


def state_keys(momentum: bool) -> tuple[str, ...]:
    pending = PENDING if momentum else PENDING[:3]
    return WEIGHTS + (MOMENTA if momentum else ()) + pending + WINDOW + ("position",)


def gather_slots(x: Tensor, dim: int, index: Tensor, valid: Tensor) -> Tensor:
    """For each row g of x and each j: x[g] at positions index[g, j, :] along `dim`, zero where
    not `valid`. x: [G, ...]; index, valid: [G, P, S]. Returns [G*P, ...] with `dim` of size S."""
    g, p, s = index.shape
    view = [g, p] + [1] * (x.dim() - 1)
    view[dim + 1] = s
    expand = [g, p, *x.shape[1:]]
    expand[dim + 1] = s
    idx = index.clamp(0, x.shape[dim] - 1).view(view).expand(expand)
    picked = torch.gather(x.unsqueeze(1).expand(g, p, *x.shape[1:]), dim + 1, idx)
    return (picked * valid.view(view).to(x.dtype)).flatten(0, 1)


def chunk_slots(starts: Tensor, counts: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """Index/validity [G, P, chunk] of the pending slots: slot i holds token start + i if i < count."""
    slots = torch.arange(chunk, device=starts.device)
    return starts[..., None] + slots, slots < counts[..., None]


def ring_slots(ends: Tensor, first: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """Index/validity [G, P, window-1] into a key sequence whose index 0 is absolute position
    `first` [G], for a ring after absolute position `ends` [G, P]: slot i holds the newest
    position j < end with j % (window-1) == i (none if j < 0)."""
    size = window - 1
    slots = torch.arange(size, device=ends.device)
    last = ends[..., None] - 1
    absolute = last - torch.remainder(last - slots, size)
    return absolute - first[:, None, None], absolute >= 0


def unroll_ring(ring: Tensor, position: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """The ring [N, window-1, ...] in position order (absolute position - window + 1 .. - 1) and
    the validity [N, window-1] of each entry (absolute position >= 0)."""
    size = window - 1
    offsets = torch.arange(size, device=ring.device)
    index = torch.remainder(position[:, None] + offsets, size)
    valid = offsets[None] >= size - position[:, None]
    return gather_slots(ring, 1, index[:, None], valid[:, None]), valid


def fast_weights(layer: dict[str, Tensor], rows: Tensor | None = None, keys=WEIGHTS) -> FastWeights:
    """`keys` of a layer state as FastWeights with streams and heads merged: [N*heads, ., .]."""
    picked = (layer[k] if rows is None else layer[k].index_select(0, rows) for k in keys)
    return FastWeights(*(t.flatten(0, 1) for t in picked))
