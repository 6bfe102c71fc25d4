"""A batched matmul summing one or two products: out[b] (+)= A1[b] @ B1[b] (+ A2[b] @ B2[b]), on
torch (cuBLAS on CUDA).

Every operand is addressed through its strides, so transposed views cost nothing: the fast-weight
layer needs token-major products (f's output, the input gradients) and token reductions (the
weight steps and weight gradients), often as a sum of two products that share the output, or
added to a gradient already in the output (the weights' gradient from the update that follows).
Operands share one dtype; out may be wider (float32 steps and weight gradients from bf16
operands), accumulated in float32 by CUDA's `out_dtype` overloads. The CPU has no kernel for
those, so there (the Triton interpreter's tests) half operands are widened to out's dtype first:
exact, so the same products with the same float32 accumulation.

A Triton GEMM kernel in cuBLAS's place was slower in every variant of the layer on an H100
(benchmarks/RESULTS.md, 2026-11-26, fwd+bwd from a CUDA graph: 0.293 of the bf16 matmul rate
against cuBLAS's 0.319 with the split SwiGLU stage and the whole-sequence loop).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _product(a: Tensor, b: Tensor, out: Tensor, add: bool) -> None:
    """out (+)= a @ b: beta = 1 adds onto out in the GEMM's epilogue."""
    mixed = {}
    if out.dtype != a.dtype:
        if a.device.type == "cpu":
            a, b = a.to(out.dtype), b.to(out.dtype)
        else:
            mixed = {"out_dtype": out.dtype}
    if add:
        torch.baddbmm(out, a, b, **mixed, out=out)
    else:
        torch.bmm(a, b, **mixed, out=out)


def bmm(
    a1: Tensor,
    b1: Tensor,
    out: Tensor,
    a2: Tensor | None = None,
    b2: Tensor | None = None,
    accumulate: bool = False,
) -> Tensor:
    """out = a1 @ b1 (+ a2 @ b2), batched over the leading axis: a [B, M, K], b [B, K, N], out [B, M, N];
    with `accumulate`, out += instead (out's values are read first). Operands share one dtype."""
    batch, m, k1 = a1.shape
    n = b1.shape[2]
    if b1.shape != (batch, k1, n) or out.shape != (batch, m, n):
        raise ValueError(
            f"bmm: shapes a1 {tuple(a1.shape)}, b1 {tuple(b1.shape)}, out {tuple(out.shape)} do not chain"
        )
    if a2 is not None:
        k2 = a2.shape[2]
        if a2.shape != (batch, m, k2) or b2 is None or b2.shape != (batch, k2, n):
            raise ValueError(
                f"bmm: second product a2 {tuple(a2.shape)}, b2 {None if b2 is None else tuple(b2.shape)} does not fit"
            )
    # two GEMMs into one output: the second adds onto the first's result (beta = 1), which costs
    # one extra read of out and no concatenated operand copies
    _product(a1, b1, out, accumulate)
    if a2 is not None:
        _product(a2, b2, out, True)
    return out
