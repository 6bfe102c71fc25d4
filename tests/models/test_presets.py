"""Presets: sizes, the paper shape, speed of the CPU preset, and config errors."""

from __future__ import annotations

import pytest
import torch

from refine_tasks.models import FastWeightConfig, build_model, mixer_class


def n_params(preset: str, vocab: int = 32000) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(preset, vocab).parameters())


def test_sizes():
    assert 20e6 <= n_params("small") <= 50e6
    assert 1.2e9 <= n_params("paper-1.3b") <= 1.45e9
    with torch.device("meta"):
        big = build_model("paper-1.3b", 32000)
    assert (
        big.config.num_hidden_layers == 24 and big.config.hidden_size == 2048 and big.config.num_heads == 16
    )
    assert big.config.mlp_size == 5632  # fla's 1.3B DeltaNet


def test_tiny_is_cpu_sized():
    assert n_params("tiny", 512) < 200_000


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="unknown; choose one of tiny"):
        build_model("huge", 100)
    with pytest.raises(ValueError, match="num_heads=3"):
        FastWeightConfig(hidden_size=64, num_heads=3)
    with pytest.raises(ValueError, match="mixer='mamba'"):
        FastWeightConfig(mixer="mamba")
    with pytest.raises(ValueError, match="kernel_backend='cuda'"):
        FastWeightConfig(kernel_backend="cuda")
    with pytest.raises(ValueError, match="unknown token mixer"):
        mixer_class("mamba")
