"""A batched matmul summing one or two products: out[b] (+)= A1[b] @ B1[b] (+ A2[b] @ B2[b]).

Two paths, chosen per call by the environment variable REFINE_LACT_GEMM: `cublas` (the default
on CUDA) runs torch.bmm / torch.baddbmm, which reach cuBLAS on the GPU; `triton` (the default
elsewhere: CPU tensors under TRITON_INTERPRET=1) runs the Triton kernel below. Set `cublas` on
the CPU to test that path through torch's CPU matmul (operands and out of one dtype there: the
mixed-dtype `out_dtype` overloads exist on CUDA only).

Every operand is addressed through its strides, so transposed views cost nothing: the fast-weight
layer needs token-major products (f's output, the input gradients) and token reductions (the
weight steps and weight gradients), often as a sum of two products that share the output, or
added to a gradient already in the output (the weights' gradient from the update that follows).
Operands share one dtype (the wrapper casts); accumulation is float32; out may be any float dtype.
The reduction lengths are compile-time constants: the loop unrolls, and Triton 3.6's interpreter
(the CPU test path) cannot take a run-time loop bound under numpy >= 2.4.
"""

from __future__ import annotations

from functools import cache

import torch
import triton
import triton.language as tl
from torch import Tensor

from refine_tasks.kernels.lact.triton_launch import cdiv, interpreting, pow2_block, variant

GEMM_ENV = "REFINE_LACT_GEMM"
GEMM_PATHS = ("cublas", "triton")


@triton.jit
def _accumulate(
    acc, a_ptr, b_ptr, rm, rn, M, N, K: tl.constexpr, s_am, s_ak, s_bk, s_bn, BLOCK_K: tl.constexpr
):
    rk = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(
            a_ptr + rm[:, None] * s_am + kk[None, :] * s_ak,
            mask=(rm[:, None] < M) & (kk[None, :] < K),
            other=0.0,
        )
        b = tl.load(
            b_ptr + kk[:, None] * s_bk + rn[None, :] * s_bn,
            mask=(kk[:, None] < K) & (rn[None, :] < N),
            other=0.0,
        )
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _bmm_kernel(
    a1_ptr, b1_ptr, a2_ptr, b2_ptr, out_ptr,
    M, N, K1: tl.constexpr, K2: tl.constexpr,
    s_a1b, s_a1m, s_a1k, s_b1b, s_b1k, s_b1n,
    s_a2b, s_a2m, s_a2k, s_b2b, s_b2k, s_b2n,
    s_ob, s_om, s_on,
    TWO: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    bid = tl.program_id(1).to(tl.int64)
    n_tiles = tl.cdiv(N, BLOCK_N)
    rm = (pid // n_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = (pid % n_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _accumulate(
        acc, a1_ptr + bid * s_a1b, b1_ptr + bid * s_b1b, rm, rn, M, N, K1, s_a1m, s_a1k, s_b1k, s_b1n, BLOCK_K
    )
    if TWO:
        acc = _accumulate(
            acc,
            a2_ptr + bid * s_a2b,
            b2_ptr + bid * s_b2b,
            rm,
            rn,
            M,
            N,
            K2,
            s_a2m,
            s_a2k,
            s_b2k,
            s_b2n,
            BLOCK_K,
        )
    out = out_ptr + bid * s_ob + rm[:, None] * s_om + rn[None, :] * s_on
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    if ACC:
        acc += tl.load(out, mask=mask, other=0.0).to(tl.float32)
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


@cache  # a handful of shapes per model: one computation each, not one per launch
def _blocks(m: int, n: int, k: int, batch: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps): 128x128 tiles when they still fill an H100 twice over."""
    if interpreting():
        return pow2_block(m, 32), pow2_block(n, 32), pow2_block(k, 32), 4
    wide = batch * cdiv(m, 128) * cdiv(n, 128) >= 264
    return 128, 128 if wide else 64, 64, 8 if wide else 4


def gemm_path(t: Tensor) -> str:
    """`cublas` or `triton`: REFINE_LACT_GEMM, else cuBLAS for CUDA tensors and Triton otherwise."""
    return variant(GEMM_ENV, GEMM_PATHS, "cublas" if t.is_cuda else "triton")


def _torch_product(a: Tensor, b: Tensor, out: Tensor, add: bool) -> None:
    """out (+)= a @ b through torch (cuBLAS on CUDA): beta = 1 adds onto out in the GEMM's epilogue;
    float32 out from half operands by the `out_dtype` overloads, which accumulate in float32."""
    mixed = {"out_dtype": out.dtype} if out.dtype != a.dtype else {}
    if add:
        torch.baddbmm(out, a, b, **mixed, out=out)
    else:
        torch.bmm(a, b, **mixed, out=out)


def _triton_bmm(
    a1: Tensor, b1: Tensor, out: Tensor, a2: Tensor | None, b2: Tensor | None, accumulate: bool
) -> None:
    batch, m, k1 = a1.shape
    n = b1.shape[2]
    two = a2 is not None
    k2 = a2.shape[2] if two else 0
    if not two:
        a2, b2 = a1, b1
    block_m, block_n, block_k, warps = _blocks(m, n, max(k1, k2), batch)
    grid = (cdiv(m, block_m) * cdiv(n, block_n), batch)
    _bmm_kernel[grid](
        a1, b1, a2, b2, out, m, n, k1, k2,
        *a1.stride(), *b1.stride(), *a2.stride(), *b2.stride(), *out.stride(),
        TWO=two, ACC=accumulate, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=3,
    )  # fmt: skip


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
                f"bmm: second product a2 {tuple(a2.shape)}, b2 {b2 and tuple(b2.shape)} does not fit"
            )
    if gemm_path(out) == "triton":
        _triton_bmm(a1, b1, out, a2, b2, accumulate)
        return out
    # two GEMMs into one output: the second adds onto the first's result (beta = 1), which costs
    # one extra read of out and no concatenated operand copies
    _torch_product(a1, b1, out, accumulate)
    if a2 is not None:
        _torch_product(a2, b2, out, True)
    return out
