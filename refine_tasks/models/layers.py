"""Small parameter holders shared by the shell and the mixers (the math lives in kernels/)."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """An RMS norm's weight and eps; kernels.rms_norm (or its gated/fused forms) applies it."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def init_weights(self, std: float) -> None:
        nn.init.ones_(self.weight)
