"""Which implementation runs a kernel: our torch reference (`torch`) or the Triton kernels (`triton`:
fla's for DeltaNet and the shell, ours for LaCT and the state chain).

The model config's `kernel_backend` chooses (`auto`, `torch` or `triton`); `auto` follows the
tensors' device: CUDA tensors use `triton`, everything else `torch`. Triton kernels need a CUDA
device (the tests run them on the CPU through Triton's interpreter, by calling them directly).
"""

from __future__ import annotations

from typing import Literal

import torch

Backend = Literal["torch", "triton"]
CHOICES = ("auto", "torch", "triton")


def resolve_backend(device: torch.device, choice: str = "auto") -> Backend:
    """The backend for tensors on `device` under the config's `choice` (auto/torch/triton)."""
    if choice not in CHOICES:
        raise ValueError(f"kernel_backend={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if choice == "triton" and device.type != "cuda":
        raise ValueError(
            f"kernel_backend='triton' but the tensors are on {device}: the Triton kernels need a CUDA "
            f"device; use 'torch' (or 'auto') on a CPU"
        )
    return choice
