"""SwiGLU and the next-token cross-entropy (torch path)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refine_tasks.kernels import IGNORE_INDEX, cross_entropy, swiglu_mlp


def test_swiglu_matches_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    wg, wu = (
        torch.randn(10, 6, generator=g, dtype=torch.float64),
        torch.randn(10, 6, generator=g, dtype=torch.float64),
    )
    wd = torch.randn(6, 10, generator=g, dtype=torch.float64)
    expected = (F.silu(x @ wg.T) * (x @ wu.T)) @ wd.T
    assert torch.allclose(swiglu_mlp(x, wg, wu, wd, "torch"), expected, rtol=1e-13, atol=0)


def test_cross_entropy_skips_ignored_targets():
    logits = torch.randn(5, 7, dtype=torch.float64)
    targets = torch.tensor([1, IGNORE_INDEX, 6, 0, IGNORE_INDEX])
    keep = targets != IGNORE_INDEX
    expected = -torch.log_softmax(logits[keep], -1).gather(1, targets[keep, None]).mean()
    assert torch.allclose(cross_entropy(logits, targets, "torch").double(), expected, rtol=1e-6)
