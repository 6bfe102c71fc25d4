"""The SwiGLU feed-forward: down(silu(gate(x)) * up(x)); fla fuses the activation into the down matmul."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from refine_tasks.kernels.backend import Backend


def swiglu_mlp(
    x: Tensor, gate_weight: Tensor, up_weight: Tensor, down_weight: Tensor, backend: Backend
) -> Tensor:
    """x: [..., D]; gate/up weights: [I, D]; down weight: [D, I] (nn.Linear layout) -> [..., D]."""
    gate, up = F.linear(x, gate_weight), F.linear(x, up_weight)
    if backend == "triton":
        from fla.modules.activations import swiglu_linear

        return swiglu_linear(gate, up, down_weight, None)
    return F.linear(F.silu(gate) * up, down_weight)
