"""Which implementation runs a kernel: our torch reference (`torch`) or fla's Triton kernels (`fla`).

Precedence: the environment variable `REFINE_KERNEL_BACKEND` (so a run can be switched without
touching its config), then the model config's `kernel_backend`, then the device: CUDA tensors
use `fla`, everything else `torch`. fla's kernels need a CUDA device.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

Backend = Literal["torch", "fla"]
ENV_VAR = "REFINE_KERNEL_BACKEND"
CHOICES = ("auto", "torch", "fla")


def resolve_backend(device: torch.device, override: str | None = None) -> Backend:
    """The backend for tensors on `device`; `override` is the config's choice (auto/torch/fla/None)."""
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env and env not in CHOICES:
        raise ValueError(f"{ENV_VAR}={env!r}: expected one of {', '.join(CHOICES)}")
    choice = env or (override or "auto")
    if choice not in CHOICES:
        raise ValueError(f"kernel_backend={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "auto":
        return "fla" if device.type == "cuda" else "torch"
    if choice == "fla" and device.type != "cuda":
        source = ENV_VAR if env else "kernel_backend"
        raise ValueError(
            f"{source}='fla' but the tensors are on {device}: fla's Triton kernels need a CUDA device; "
            f"use 'torch' (or 'auto') on a CPU"
        )
    return choice
