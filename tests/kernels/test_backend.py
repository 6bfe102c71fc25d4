"""Backend choice: device default, config override, environment variable, clear errors."""

from __future__ import annotations

import pytest
import torch

from refine_tasks.kernels import ENV_VAR, resolve_backend

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_device_decides_by_default(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_backend(CPU) == "torch"
    assert resolve_backend(CUDA) == "fla"
    assert resolve_backend(CUDA, "torch") == "torch"


def test_environment_wins_over_config(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "torch")
    assert resolve_backend(CUDA, "fla") == "torch"


def test_bad_choices_are_named(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "triton")
    with pytest.raises(ValueError, match=ENV_VAR):
        resolve_backend(CPU)
    monkeypatch.setenv(ENV_VAR, "fla")
    with pytest.raises(ValueError, match="CUDA"):
        resolve_backend(CPU)
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(ValueError, match="kernel_backend"):
        resolve_backend(CPU, "cuda")
