"""RMS norms and the L2 norm against their formulas."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refine_tasks.kernels import add_rms_norm, l2_normalize, rms_norm, rms_norm_gated


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_norms_match_formulas():
    g = torch.Generator().manual_seed(0)
    x, r, gate = (torch.randn(3, 5, 8, generator=g, dtype=torch.float64) for _ in range(3))
    w = torch.rand(8, generator=g, dtype=torch.float64) + 0.5
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * w
    assert rel_err(rms_norm(x, w, 1e-6, "torch"), expected) < 1e-14
    assert rel_err(rms_norm_gated(x, gate, w, 1e-6, "torch"), expected * F.silu(gate)) < 1e-14
    normed, total = add_rms_norm(x, r, w, 1e-6, "torch")
    assert torch.equal(total, x + r)
    assert rel_err(normed, rms_norm(x + r, w, 1e-6, "torch")) < 1e-14
    assert rel_err(l2_normalize(x, 1e-6), x / torch.sqrt((x**2).sum(-1, keepdim=True) + 1e-6)) < 1e-14


def test_low_precision_input_keeps_its_dtype():
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    assert rms_norm(x, torch.ones(16), 1e-6, "torch").dtype == torch.bfloat16
