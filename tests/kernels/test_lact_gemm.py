"""The LaCT kernels' batched matmul (`gemm.bmm`) on the CPU through torch's own matmul, against
float64 products: strided views, a second product and accumulation, and half operands into a
float32 out (widened on the CPU; CUDA's `out_dtype` overload checked on meta tensors)."""

from __future__ import annotations

import pytest
import torch

from refine_tasks.kernels.lact.gemm import bmm


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bmm_sums_products_of_strided_views_into_a_strided_out(dtype):
    gen = torch.Generator().manual_seed(1)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype)

    a1 = randn(3, 40, 19).transpose(1, 2)  # [3, 19, 40], column-major
    b1 = randn(3, 40, 23)
    a2 = randn(3, 19, 70)[..., 10:47]  # a slice: row stride != width
    b2 = randn(3, 23, 37).transpose(1, 2)
    packed = randn(3, 19 * 23 + 5)  # out as a view of a packed buffer (batch stride != M * N)
    out = packed[:, 5:].unflatten(1, (19, 23))
    head = packed[:, :5].clone()
    want = a1.double() @ b1.double() + a2.double() @ b2.double()
    assert bmm(a1, b1, out, a2, b2) is out
    assert rel(out, want) < 1e-6
    assert torch.equal(packed[:, :5], head)  # nothing outside the view was written
    before = out.clone()
    bmm(a1, b1, out, accumulate=True)
    assert rel(out, before.double() + a1.double() @ b1.double()) < 1e-6


def test_half_operands_into_a_float32_out_on_the_cpu():
    """Widened before the product: the float64 product of the half values, to float32 rounding."""
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(2, 17, 40, generator=gen).half()
    b = torch.randn(2, 23, 40, generator=gen).half().transpose(1, 2)
    out = torch.full((2, 17, 23), float("nan"))
    want = a.double() @ b.double()
    assert rel(bmm(a, b, out), want) < 1e-6
    bmm(a, b, out, a, b, accumulate=True)
    assert rel(out, 3 * want) < 1e-6


def test_half_operands_take_the_out_dtype_overload_off_the_cpu():
    """The CUDA `bmm.dtype_out` overload, called as the GPU calls it, checked on meta tensors
    (schema and shape rules; torch's meta decomposition of `baddbmm.dtype_out` misreads its
    arguments, so the adding call is left to the GPU check)."""
    a = torch.empty(4, 64, 32, device="meta", dtype=torch.bfloat16)
    b = torch.empty(4, 48, 32, device="meta", dtype=torch.bfloat16).transpose(1, 2)
    out = torch.empty(4, 64, 48, device="meta", dtype=torch.float32)
    assert bmm(a, b, out) is out
    assert out.dtype == torch.float32 and out.shape == (4, 64, 48)


def test_shapes_that_do_not_chain_are_named():
    a = torch.empty(2, 3, 4)
    with pytest.raises(ValueError, match="do not chain"):
        bmm(a, torch.empty(2, 5, 6), torch.empty(2, 3, 6))
    with pytest.raises(ValueError, match="second product"):
        bmm(a, torch.empty(2, 4, 6), torch.empty(2, 3, 6), torch.empty(2, 3, 7), torch.empty(2, 8, 6))
