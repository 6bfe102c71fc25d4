"""Helpers for the model tests: random float64 tiny models and the relative error."""

from __future__ import annotations

import torch

from refine_tasks.models import FastWeightForCausalLM

VOCAB = 97


def randomized(model: FastWeightForCausalLM, seed: int) -> FastWeightForCausalLM:
    """Norm weights drawn around 1, so no norm is trivially the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()
