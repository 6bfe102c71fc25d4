"""refine_tasks.config: one typed configuration from defaults, params.yaml and --set overrides."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from refine_tasks.config import ConfigError, ModelPreset, PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[1]


def test_defaults_without_a_params_file(tmp_path: Path) -> None:
    cfg = load_config(tmp_path / "missing.yaml")
    assert cfg == PipelineConfig()
    assert cfg.corpus.source == "sotu" and cfg.paths.catalog == Path("data/cache/refine.duckdb")
    assert load_config(None) == cfg


def test_repository_params_yaml_is_valid_and_names_every_section() -> None:
    """DVC stages depend on params.yaml sections: each one must be there, and validate."""
    import yaml

    data = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg = load_config(REPO / "params.yaml")
    assert set(data) == set(cfg.model_dump())
    assert data["corpus"] == cfg.corpus.model_dump(mode="json")
    assert data["tokenizer"] == cfg.tokenizer.model_dump(mode="json")
    assert data["paths"] == cfg.paths.model_dump(mode="json")


def test_file_values_and_overrides_are_typed(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("corpus:\n  source: data/raw\n  shard_docs: 8\ntokenizer:\n  vocab_size: 1024\n")
    cfg = load_config(params, ["corpus.limit=5", "tokenizer.path=/tok", "paths.corpus_dir=/x/corpus"])
    assert cfg.corpus.source == "data/raw" and cfg.corpus.shard_docs == 8 and cfg.corpus.limit == 5
    assert cfg.tokenizer.vocab_size == 1024 and cfg.tokenizer.path == "/tok"
    assert cfg.paths.corpus_dir == Path("/x/corpus")
    assert load_config(params, ["corpus.limit="]).corpus.limit is None


def test_unknown_fields_name_the_file_and_field(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("corpus:\n  sourse: typo\n")
    with pytest.raises(ConfigError, match=r"params.yaml: invalid configuration\n  corpus.sourse = 'typo'"):
        load_config(params)


def test_bad_values_name_the_field_and_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"corpus.shard_docs = 0: .*greater than 0"):
        load_config(None, ["corpus.shard_docs=0"])
    with pytest.raises(ConfigError, match=r"corpus.normalization = 'NFD'"):
        load_config(None, ["corpus.normalization=NFD"])


def test_malformed_files_and_overrides(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("corpus: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml: expected a mapping of sections, got list"):
        load_config(bad)
    with pytest.raises(ConfigError, match="expected section.field=value"):
        load_config(None, ["corpus.limit"])
    with pytest.raises(ConfigError, match="seed is not a section"):
        load_config(None, ["seed=1", "seed.x=2"])


def test_model_presets_are_the_models_presets() -> None:
    """config.py (the foundation layer) cannot import the models, so it names the presets itself."""
    from refine_tasks.models.presets import PRESETS

    assert get_args(ModelPreset) == tuple(PRESETS)
    with pytest.raises(ConfigError, match=r"model.preset = 'huge'"):
        load_config(None, ["model.preset=huge"])


def test_gpu_profile_is_valid_and_its_resolved_form_is_the_same_configuration(tmp_path: Path) -> None:
    """params-gpu-small.yaml runs the issue-17 experiment; `refine config -p` of it, saved as
    params.yaml, is what makes `dvc repro` run (and track) that profile."""
    from typer.testing import CliRunner

    from refine_tasks.pipeline.cli import app

    profile = load_config(REPO / "params-gpu-small.yaml")
    assert profile.model.preset == "small" and profile.tokenizer.path == "mistral-common:tokenizer.model.v1"
    assert profile.train.val_every > 0 and len(profile.lifecycle.seeds) >= 2
    assert (
        profile.evaluate.niah_lengths == [1024, 2048, 4096, 8192] and len(profile.evaluate.niah_variants) == 8
    )
    out = CliRunner().invoke(app, ["config", "-p", str(REPO / "params-gpu-small.yaml")])
    assert out.exit_code == 0, out.output
    (tmp_path / "params.yaml").write_text(out.output)
    assert load_config(tmp_path / "params.yaml") == profile
