"""Checkpoint directories: strict tensor checks before loading, fla's DeltaNet format, and which
directory a training run's `latest` pointer names.

Hugging Face's loader re-initialises a missing tensor with a warning and reports a wrong shape
without naming it in the error; a training run must not start from such a model, so
`check_checkpoint` compares every tensor's name and shape first and names what is wrong.
fla's DeltaNet checkpoints (config.json `model_type: delta_net`) have our parameter names;
only their config needs mapping (`config_from_fla`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from refine_tasks.errors import TrainCheckpointError
from refine_tasks.models.configuration import FastWeightConfig

FLA_MODEL_TYPE = "delta_net"
# fla's DeltaNetConfig defaults: a saved config.json omits fields left at these values.
FLA_DEFAULTS: dict[str, Any] = {
    "hidden_size": 2048,
    "num_hidden_layers": 24,
    "num_heads": 16,
    "vocab_size": 32000,
    "expand_k": 1.0,
    "expand_v": 1.0,
    "conv_size": 4,
    "use_gate": False,
    "allow_neg_eigval": False,
    "hidden_ratio": 4,
    "intermediate_size": None,
    "norm_eps": 1e-6,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "pad_token_id": None,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
# fla options this model implements only at one value: (field, required value, fla's default).
FLA_FIXED: list[tuple[str, Any, Any]] = [
    ("use_short_conv", True, True),
    ("use_beta", True, True),
    ("use_output_norm", True, True),
    ("qk_norm", "l2", "l2"),
    ("qk_activation", "silu", "silu"),
    ("hidden_act", "swish", "swish"),
    ("attn", None, None),
    ("attnres_block_size", None, None),
]


def config_from_fla(fla_config: dict[str, Any], source: str = "config.json") -> FastWeightConfig:
    """Our config for an fla DeltaNet config dict; unsupported fla options are errors naming the field."""
    for field, required, default in FLA_FIXED:
        value = fla_config.get(field, default)
        if value != required:
            raise ValueError(
                f"{source}: {field}={value!r} is not supported (this model implements {field}={required!r} only)"
            )
    fields = {name: fla_config.get(name, default) for name, default in FLA_DEFAULTS.items()}
    return FastWeightConfig(mixer="deltanet", **fields)


def load_config(path: str | Path) -> FastWeightConfig:
    """The config of a checkpoint directory: ours, or fla's DeltaNet converted."""
    source = Path(path) / "config.json"
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no config.json; is {path} a model checkpoint directory?")
    raw = json.loads(source.read_text())
    if raw.get("model_type") == FLA_MODEL_TYPE:
        return config_from_fla(raw, str(source))
    if raw.get("model_type") != FastWeightConfig.model_type:
        raise ValueError(
            f"{source}: model_type={raw.get('model_type')!r}; expected {FastWeightConfig.model_type!r} "
            f"or fla's {FLA_MODEL_TYPE!r}"
        )
    return FastWeightConfig.from_pretrained(path)


def expected_shapes(model: torch.nn.Module, config: FastWeightConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of `config` must hold, with its shape, from `model` (built on the
    meta device by the caller, which owns the model class)."""
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def stored_shapes(path: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor name -> (shape, file) over the directory's safetensors files (headers only)."""
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"{path}: no *.safetensors files (checkpoints are safetensors, never pickles)"
        )
    found = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                found[name] = (tuple(f.get_slice(name).get_shape()), file.name)
    return found


def damaged_weights(path: str | Path) -> str | None:
    """What is wrong with the first *.safetensors file of `path` whose header does not open or
    does not cover the file (a copy cut short, a disk that filled up), or None."""
    for file in sorted(Path(path).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except SafetensorError as e:
            return f"{file} is truncated or corrupt ({e})"
    return None


def check_checkpoint(path: str | Path, model: torch.nn.Module, config: FastWeightConfig) -> None:
    """Raise ValueError naming every missing, unexpected or wrongly shaped tensor in `path`, against
    `model` (a meta-device model of `config`)."""
    expected, found = expected_shapes(model, config), stored_shapes(path)
    problems = [
        f"missing tensor {name} (shape {list(shape)})"
        for name, shape in expected.items()
        if name not in found
    ]
    problems += [
        f"tensor {name} in {file} has shape {list(shape)}, the config needs {list(expected[name])}"
        for name, (shape, file) in found.items()
        if name in expected and shape != expected[name]
    ]
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    problems += [
        f"unexpected tensor {name} in {file}"
        for name, (_, file) in found.items()
        if name not in expected and name not in tied
    ]
    if problems:
        raise ValueError(f"checkpoint {path} does not match its config:\n  " + "\n  ".join(problems))


LATEST = "latest"  # a run's checkpoints folder: this file names the last completed checkpoint


def latest_checkpoint(root: Path) -> Path | None:
    """The directory `latest` names, or None when no checkpoint was ever completed."""
    pointer = root / LATEST
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    if not path.is_dir():
        raise TrainCheckpointError(
            f"{pointer} names {path.name}, which does not exist: point it at a checkpoint directory "
            f"in {root}, or delete it to train from scratch"
        )
    return path
