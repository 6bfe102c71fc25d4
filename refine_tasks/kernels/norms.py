"""RMS norms (plain, with the residual add fused in, and SiLU-gated) and the L2 norm.

Torch versions compute in float32 (or wider) and return the input's dtype, as fla's Triton
kernels do; the `fla` backend calls those kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from refine_tasks.kernels.backend import Backend


def _wide(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    x = _wide(x)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.to(x.dtype)


def rms_norm(x: Tensor, weight: Tensor, eps: float, backend: Backend) -> Tensor:
    """weight * x / rms(x) over the last dim; x: [..., D], weight: [D]."""
    if backend == "triton":
        from fla.modules.norm.layernorm import rms_norm as fla_rms_norm

        return fla_rms_norm(x, weight, None, eps=eps)
    return _rms(x, weight, eps).to(x.dtype)


def add_rms_norm(
    x: Tensor, residual: Tensor, weight: Tensor, eps: float, backend: Backend
) -> tuple[Tensor, Tensor]:
    """(rms_norm(x + residual), x + residual): the pre-norm block's residual add and norm in one pass."""
    if backend == "triton":
        from fla.modules.norm.layernorm import rms_norm as fla_rms_norm

        return fla_rms_norm(x, weight, None, residual=residual, eps=eps, prenorm=True)
    total = x + residual
    return _rms(total, weight, eps).to(x.dtype), total


def rms_norm_gated(x: Tensor, gate: Tensor, weight: Tensor, eps: float, backend: Backend) -> Tensor:
    """rms_norm(x) * silu(gate): DeltaNet's gated output norm (fla's FusedRMSNormGated)."""
    if backend == "triton":
        from fla.modules.norm.fused_norm_gate import rms_norm_gated as fla_rms_norm_gated

        return fla_rms_norm_gated(x, gate, weight, None, activation="swish", eps=eps)
    gate = _wide(gate)
    return (_rms(x, weight, eps) * gate * torch.sigmoid(gate)).to(x.dtype)


def l2_normalize(x: Tensor, eps: float) -> Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dim (fla's l2norm, eps inside the root)."""
    wide = _wide(x)
    return (wide * torch.rsqrt(wide.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)
