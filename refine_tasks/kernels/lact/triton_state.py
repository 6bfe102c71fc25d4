"""The Triton path's fast-weight state: W0, W2 and W1 of each row in ONE float32 buffer.

Per batch row the buffer holds [W0; W2] (2H rows of D) followed by W1 (D rows of H): [B, 3*H*D].
[W0; W2] is the operand the SwiGLU kernel projects onto (W0 and W2 share their input), so no
concatenation runs per chunk, and one launch of the update kernel renormalises all three
matrices. The chunk loop converts `FastWeights` to this layout once at the start of a sequence and
back (as views) where a state is read out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from refine_tasks.kernels.lact.reference import FastWeights


@dataclass(frozen=True)
class Layout:
    """Offsets of the three matrices in a packed row, for hidden size h and token size d."""

    h: int
    d: int

    @property
    def size(self) -> int:
        return 3 * self.h * self.d

    @property
    def rows(self) -> int:
        """Rows over all three matrices: the length of a packed norms row [B, 2H + D]."""
        return 2 * self.h + self.d

    def w02(self, packed: Tensor) -> Tensor:
        """[W0; W2] [B, 2H, D], a view of packed [B, 3HD]."""
        return packed[:, : 2 * self.h * self.d].unflatten(1, (2 * self.h, self.d))

    def w1(self, packed: Tensor) -> Tensor:
        """W1 [B, D, H], a view of packed [B, 3HD]."""
        return packed[:, 2 * self.h * self.d :].unflatten(1, (self.d, self.h))

    def split(self, packed: Tensor) -> tuple[Tensor, Tensor]:
        """([W0; W2] [B, 2H, D], W1 [B, D, H]): the views the kernels take."""
        return self.w02(packed), self.w1(packed)

    def empty(self, like: Tensor, batch: int) -> Tensor:
        return torch.empty(batch, self.size, device=like.device, dtype=torch.float32)

    def pack(self, w: FastWeights) -> Tensor:
        """FastWeights -> packed float32 [B, 3HD] (differentiable: one concatenation a sequence)."""
        return torch.cat([w.w0.flatten(1), w.w2.flatten(1), w.w1.flatten(1)], 1).float()

    def pack_norms(self, norms: FastWeights) -> Tensor:
        """Row norms (w0 [B, H], w1 [B, D], w2 [B, H]) -> float32 [B, 2H + D] in the packed row order."""
        return torch.cat([norms.w0, norms.w2, norms.w1], 1).float()

    def unpack(self, packed: Tensor, dtype: torch.dtype) -> FastWeights:
        """Packed [B, 3HD] -> FastWeights of views (copies only when dtype is not float32)."""
        w02 = self.w02(packed)
        return FastWeights(w02[:, : self.h].to(dtype), self.w1(packed).to(dtype), w02[:, self.h :].to(dtype))


class PackedState(NamedTuple):
    """The Triton chunk loop's state: packed weights [B, 3HD] float32, the same weights as the
    matmul operand (the activations' dtype; `weights` itself when that is float32) and the packed
    momentum (None: momentum off)."""

    weights: Tensor
    operand: Tensor
    momentum: Tensor | None
