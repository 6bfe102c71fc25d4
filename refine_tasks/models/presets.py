"""Named model sizes and `build_model`, the one way the pipeline makes a fresh model; `load_model`,
the one way it loads a model directory with a run's kernel choices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from refine_tasks.config import ModelConfig
from refine_tasks.models.checkpoint import load_config
from refine_tasks.models.configuration import FastWeightConfig
from refine_tasks.models.lact.config import LACT_PRESETS
from refine_tasks.models.modeling import FastWeightForCausalLM

# Shapes only; vocab_size comes from the tokenizer. `paper-1.3b` is fla's 1.3B DeltaNet,
# `paper-760m` the paper's LaCT (its mixer options are LaCT's own defaults).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_heads": 2, "intermediate_size": 128},
    "small": {"hidden_size": 384, "num_hidden_layers": 8, "num_heads": 6},
    "paper-1.3b": {"hidden_size": 2048, "num_hidden_layers": 24, "num_heads": 16},
    "paper-760m": {"hidden_size": 1536, "num_hidden_layers": 24, "num_heads": 4},
}
# A mixer's own options per preset, applied under the caller's overrides.
MIXER_PRESETS: dict[str, dict[str, dict[str, Any]]] = {"lact": LACT_PRESETS}


def preset_config(
    preset: str, vocab_size: int, mixer: str = "deltanet", **overrides: Any
) -> FastWeightConfig:
    if preset not in PRESETS:
        raise ValueError(f"model preset {preset!r}: unknown; choose one of {', '.join(PRESETS)}")
    mixer_options = MIXER_PRESETS.get(mixer, {}).get(preset, {})
    return FastWeightConfig(
        **{**PRESETS[preset], **mixer_options, "vocab_size": vocab_size, "mixer": mixer, **overrides}
    )


def build_model(
    preset: str, vocab_size: int, mixer: str = "deltanet", **overrides: Any
) -> FastWeightForCausalLM:
    """A randomly initialised model of `preset`'s shape; `overrides` set any FastWeightConfig field."""
    return FastWeightForCausalLM(preset_config(preset, vocab_size, mixer, **overrides))


def load_model(path: str | Path, options: ModelConfig | None = None) -> FastWeightForCausalLM:
    """A model directory's weights, with the run's kernel choices (`options.kernel_fields`, for the
    checkpoint's own mixer) set on its config before the model is built."""
    config = load_config(path)
    if options is not None:
        for name, value in options.kernel_fields(config.mixer).items():
            setattr(config, name, value)
        config._validate()
    return FastWeightForCausalLM.from_pretrained(path, config=config)
