"""RMS norms (plain, with the residual add fused in, and SiLU-gated) and the L2 norm.

Torch versions compute in float32 (or wider) and return the input's dtype, as fla's Triton
kernels do; the `fla` backend calls those kernels.

fla's norm kernels take NB = cdiv(rows, 2048) (the gated one: cdiv(rows, 65536)) as a compile-time
constant and autotuning key that the kernel body never reads, so every new row count past a block
compiles and benchmarks 9 configurations again. Training runs a few fixed shapes, but generation
prefills whatever rows its prompts leave at each bucket size, and test-time training and
post-training run prompts of every length: on the H200 (2026-12-04) the RULER QA evaluation of one
model was still compiling after 210 s where the NIAH one took 17 s. The Triton path therefore runs
the rows in chunks whose NB is a power of two (`row_chunks`): at most 1 + log2(rows / 2048) calls,
and no more than log2 of the largest row count distinct NB values ever.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from refine_tasks.kernels.backend import Backend

# Rows per NB step of fla's norm kernels (modules/norm/layernorm.py, fused_norm_gate.py).
NORM_ROWS_PER_BLOCK = 2048
GATED_NORM_ROWS_PER_BLOCK = 2048 * 32


def row_chunks(rows: int, unit: int) -> list[int]:
    """Sizes (summing to `rows`, largest first) whose cdiv(size, unit) is each a power of two:
    one chunk when cdiv(rows, unit) already is, else the largest power-of-two multiple of `unit`
    that fits, then the same for the rest."""
    sizes: list[int] = []
    while rows > 0:
        blocks = -(-rows // unit)
        if blocks & (blocks - 1) == 0:
            sizes.append(rows)
            break
        size = unit << (blocks.bit_length() - 1)
        sizes.append(size)
        rows -= size
    return sizes


def in_row_chunks(
    fn: Callable[..., Tensor | tuple[Tensor, ...]], tensors: tuple[Tensor, ...], unit: int
) -> Tensor | tuple[Tensor, ...]:
    """fn(*tensors) for row-wise fn over [..., D] tensors of one shape, run on the `row_chunks` of
    their rows and concatenated (outputs of the inputs' shape; one or a tuple of them)."""
    shape = tensors[0].shape
    flat = [t.reshape(-1, shape[-1]) for t in tensors]
    sizes = row_chunks(flat[0].shape[0], unit)
    if len(sizes) <= 1:
        return fn(*tensors)
    outs, start = [], 0
    for size in sizes:
        outs.append(fn(*(t[start : start + size] for t in flat)))
        start += size
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts).reshape(shape) for parts in zip(*outs, strict=True))
    return torch.cat(outs).reshape(shape)


def _wide(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    x = _wide(x)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.to(x.dtype)


def rms_norm(x: Tensor, weight: Tensor, eps: float, backend: Backend) -> Tensor:
    """weight * x / rms(x) over the last dim; x: [..., D], weight: [D]."""
    if backend == "triton":
        from fla.modules.norm.layernorm import rms_norm as fla_rms_norm

        return in_row_chunks(lambda x: fla_rms_norm(x, weight, None, eps=eps), (x,), NORM_ROWS_PER_BLOCK)
    return _rms(x, weight, eps).to(x.dtype)


def add_rms_norm(
    x: Tensor, residual: Tensor, weight: Tensor, eps: float, backend: Backend
) -> tuple[Tensor, Tensor]:
    """(rms_norm(x + residual), x + residual): the pre-norm block's residual add and norm in one pass."""
    if backend == "triton":
        from fla.modules.norm.layernorm import rms_norm as fla_rms_norm

        return in_row_chunks(
            lambda x, r: fla_rms_norm(x, weight, None, residual=r, eps=eps, prenorm=True),
            (x, residual),
            NORM_ROWS_PER_BLOCK,
        )
    total = x + residual
    return _rms(total, weight, eps).to(x.dtype), total


def rms_norm_gated(x: Tensor, gate: Tensor, weight: Tensor, eps: float, backend: Backend) -> Tensor:
    """rms_norm(x) * silu(gate): DeltaNet's gated output norm (fla's FusedRMSNormGated)."""
    if backend == "triton":
        from fla.modules.norm.fused_norm_gate import rms_norm_gated as fla_rms_norm_gated

        return in_row_chunks(
            lambda x, g: fla_rms_norm_gated(x, g, weight, None, activation="swish", eps=eps),
            (x, gate),
            GATED_NORM_ROWS_PER_BLOCK,
        )
    gate = _wide(gate)
    return (_rms(x, weight, eps) * gate * torch.sigmoid(gate)).to(x.dtype)


def l2_normalize(x: Tensor, eps: float) -> Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dim (fla's l2norm, eps inside the root)."""
    wide = _wide(x)
    return (wide * torch.rsqrt(wide.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)
