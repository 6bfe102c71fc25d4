"""Fixtures: the tiny preset in float64 on random weights, and random token ids."""

from __future__ import annotations

import pytest
import torch
from models_helpers import VOCAB, randomized

from refine_tasks.models import FastWeightForCausalLM, build_model


@pytest.fixture(params=[False, True], ids=["plain", "gated"])
def tiny64(request) -> FastWeightForCausalLM:
    """The tiny preset in float64, with and without DeltaNet's output gate."""
    torch.manual_seed(0)
    return randomized(build_model("tiny", VOCAB, use_gate=request.param).double(), seed=1)


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 45), generator=torch.Generator().manual_seed(2))
