"""Next-token cross-entropy over logits; fla's fused kernel on the GPU avoids a float32 copy of the logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from refine_tasks.kernels.backend import Backend

IGNORE_INDEX = -100


def cross_entropy(logits: Tensor, targets: Tensor, backend: Backend) -> Tensor:
    """Mean cross-entropy; logits [N, V], targets [N] (IGNORE_INDEX entries are skipped)."""
    if backend == "triton":
        from fla.modules import FusedCrossEntropyLoss

        return FusedCrossEntropyLoss(inplace_backward=True)(logits, targets)
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(wide, targets, ignore_index=IGNORE_INDEX)
