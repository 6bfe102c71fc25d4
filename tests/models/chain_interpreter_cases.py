"""The chained delta rule's Triton kernels against its torch path, on the CPU under TRITON_INTERPRET=1.

Run by test_segments.py in a fresh interpreter-mode process (Triton reads TRITON_INTERPRET once,
when `triton` is first imported). Random kernel outputs for two rows split at unsorted, repeated
and edge positions, segments longer than a block (several blocks each) and shorter ones: the
outputs, the captured and final states, and the gradients of out, ends and the initial states.
Float32 tokens, and float16 (the GPU runs bf16; the interpreter's bf16 dot is wrong).
"""

from __future__ import annotations

import pytest
import torch
from triton.runtime.interpreter import InterpretedFunction

from refine_tasks.kernels.state_chain import triton as state_chain
from refine_tasks.models.deltanet.segments import _Chained, segment_plan

B, T, H, K, V = 2, 150, 2, 16, 32


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(autouse=True)
def interpreted() -> None:
    assert isinstance(state_chain._chain_fwd_kernel, InterpretedFunction), (
        "run with TRITON_INTERPRET=1 (see test_segments.py)"
    )


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float16, 2e-3)])
def test_kernels_equal_the_torch_path(dtype: torch.dtype, tol: float) -> None:
    g = torch.Generator().manual_seed(0)
    positions = torch.tensor([[97, 0, 5, 97], [150, 64, 3, 130]])  # 0, T, repeats, > BLOCK_T apart
    plan = segment_plan(positions, T, torch.device("cpu"))
    n = len(plan.lengths)
    out = torch.randn(1, B * T, H, V + K, generator=g).to(dtype)[0]
    ends = torch.randn(n, H, K, V + K, generator=g) * 0.3
    ends[..., V:] += torch.eye(K)  # transitions near the identity, as the delta rule's are
    initial = torch.randn(B, H, K, V, generator=g)
    weights = [torch.randn(B * T, H, V, generator=g), torch.randn(B * 4, H, K, V, generator=g)]
    weights.append(torch.randn(B, H, K, V, generator=g))
    results = []
    for triton in (True, False):
        leaves = [t.clone().requires_grad_() for t in (out, ends, initial)]
        o, captured, final = _Chained.apply(*leaves, plan, dtype, triton)
        loss = sum((x.double() * w).sum() for x, w in zip((o, captured, final), weights, strict=True))
        results.append((o, captured, final, *torch.autograd.grad(loss, leaves)))
    names = ("o", "captured", "final", "grad_out", "grad_ends", "grad_initial")
    for name, fast, ref in zip(names, *results, strict=True):
        assert ref.norm() > 0, name
        assert rel(fast, ref) < tol, (name, rel(fast, ref))
