"""The cuBLAS path of the LaCT kernels' batched matmul (`triton_gemm.bmm`), run on the CPU through
torch's own matmul with same-dtype operands, and the environment switches between kernel paths."""

from __future__ import annotations

import pytest
import torch

from refine_tasks.kernels.lact.triton_gemm import GEMM_ENV, bmm, gemm_path
from refine_tasks.kernels.lact.triton_swiglu import SWIGLU_ENV, swiglu_path


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cublas_path_sums_products_of_strided_views_into_a_strided_out(dtype, monkeypatch):
    monkeypatch.setenv(GEMM_ENV, "cublas")
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


def test_cublas_path_takes_half_operands_with_a_float32_out(monkeypatch):
    """The CUDA-only `bmm.dtype_out` overload, called as the GPU calls it, checked on meta tensors
    (schema and shape rules; the CPU has no kernel for it, and torch's meta decomposition of
    `baddbmm.dtype_out` misreads its arguments, so the adding call is left to the GPU check)."""
    monkeypatch.setenv(GEMM_ENV, "cublas")
    a = torch.empty(4, 64, 32, device="meta", dtype=torch.bfloat16)
    b = torch.empty(4, 48, 32, device="meta", dtype=torch.bfloat16).transpose(1, 2)
    out = torch.empty(4, 64, 48, device="meta", dtype=torch.float32)
    assert bmm(a, b, out) is out
    assert out.dtype == torch.float32 and out.shape == (4, 64, 48)


def test_default_paths_follow_the_device(monkeypatch):
    monkeypatch.delenv(GEMM_ENV, raising=False)
    monkeypatch.delenv(SWIGLU_ENV, raising=False)
    assert gemm_path(torch.empty(1)) == "triton"
    assert gemm_path(torch.empty(1, device="meta")) == "triton"
    assert swiglu_path() == "fused"
    monkeypatch.setenv(GEMM_ENV, "triton")
    monkeypatch.setenv(SWIGLU_ENV, "split")
    assert gemm_path(torch.empty(1)) == "triton" and swiglu_path() == "split"
    monkeypatch.setenv(SWIGLU_ENV, "mixed")
    assert swiglu_path() == "mixed"


@pytest.mark.parametrize(
    "env, read", [(GEMM_ENV, lambda: gemm_path(torch.empty(1))), (SWIGLU_ENV, swiglu_path)]
)
def test_unknown_path_names_the_variable_and_the_choices(env, read, monkeypatch):
    monkeypatch.setenv(env, "cuBLAS ")
    with pytest.raises(ValueError, match=rf"{env}='cuBLAS ': expected one of"):
        read()
