"""The device and the starting weights of a run: shared by training and the positions pass."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from refine_tasks.config import ConfigError, PipelineConfig
from refine_tasks.corpus.tokenizer import load_tokenizer
from refine_tasks.models import FastWeightForCausalLM, build_model, load_model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r}: no CUDA device here; use train.device=cpu (or auto)")
    return device


def make_model(cfg: PipelineConfig, device: torch.device) -> FastWeightForCausalLM:
    """The starting weights: model.init_from, else a fresh `model.preset` seeded by `seed`."""
    if cfg.model.init_from is not None:
        model = load_model(cfg.model.init_from, cfg.model)
    else:
        vocab = len(load_tokenizer(cfg.paths.tokenizer_dir))
        torch.manual_seed(cfg.seed)
        model = build_model(
            cfg.model.preset, vocab_size=vocab, mixer=cfg.model.mixer, **cfg.model.kernel_fields()
        )
    if cfg.train.dtype == "float64":
        model = model.double()
    return model.to(device)


def mixed_precision(device: torch.device, dtype: str = "auto") -> AbstractContextManager:
    """bf16 autocast on a GPU when train.dtype is 'auto' (weights stay float32), else nothing.

    The autocast weight cache is off: rollouts decode through CUDA graphs captured inside this
    context, and a graph must not keep pointers into a cache that is freed when the context exits.
    """
    if device.type == "cuda" and dtype == "auto":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return nullcontext()
