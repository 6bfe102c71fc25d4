"""Backend choice: the device decides under `auto`, the config's choice otherwise, clear errors."""

from __future__ import annotations

import pytest
import torch

from refine_tasks.kernels import resolve_backend

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_device_decides_by_default() -> None:
    assert resolve_backend(CPU) == "torch"
    assert resolve_backend(CUDA) == "triton"
    assert resolve_backend(CUDA, "torch") == "torch"
    assert resolve_backend(CUDA, "triton") == "triton"


def test_the_environment_chooses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFINE_KERNEL_BACKEND", "torch")  # the switch of old: configuration only now
    assert resolve_backend(CUDA) == "triton"


def test_bad_choices_are_named() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        resolve_backend(CPU, "triton")
    with pytest.raises(ValueError, match="kernel_backend"):
        resolve_backend(CPU, "cuda")
    with pytest.raises(ValueError, match="kernel_backend"):
        resolve_backend(CPU, "fla")
