"""Evaluation fixtures: the project's tokenizer (trained once per session) and a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from refine_tasks.corpus.tokenizer import load_tokenizer
from refine_tasks.models import FastWeightForCausalLM, build_model


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> PreTrainedTokenizerFast:
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model(tokenizer: PreTrainedTokenizerFast) -> FastWeightForCausalLM:
    """A randomly initialised `tiny` DeltaNet (seeded), in eval mode."""
    torch.manual_seed(0)
    return build_model("tiny", vocab_size=len(tokenizer)).eval()
