"""Next-token cross-entropy over logits; fla's fused kernel on the GPU avoids a float32 copy of the logits."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from refine_tasks.kernels.backend import Backend

IGNORE_INDEX = -100


def cross_entropy(logits: Tensor, targets: Tensor, backend: Backend) -> Tensor:
    """Mean cross-entropy; logits [N, V], targets [N] (IGNORE_INDEX entries are skipped)."""
    if backend == "fla":
        from fla.modules import FusedCrossEntropyLoss

        return FusedCrossEntropyLoss(inplace_backward=True)(logits, targets)
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
