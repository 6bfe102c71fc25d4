"""Kernel choices are configuration: the run's model config sets them on a built or loaded model,
they are saved with the checkpoint, and nothing reads them from the environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from models_helpers import VOCAB

from refine_tasks.config import ModelConfig
from refine_tasks.models import FastWeightConfig, build_model, load_model


def test_a_run_config_names_the_fields_of_its_mixer() -> None:
    assert ModelConfig().kernel_fields() == {"kernel_backend": "auto", "state_chain": "auto"}
    lact = ModelConfig(mixer="lact", lact_attention="band", lact_compile="off").kernel_fields()
    assert lact == {"kernel_backend": "auto", "lact_attention": "band", "lact_compile": False}
    assert ModelConfig(mixer="lact").kernel_fields("deltanet") == {
        "kernel_backend": "auto",
        "state_chain": "auto",
    }


def test_choices_reach_the_model_are_saved_and_a_run_may_change_them(tmp_path: Path) -> None:
    model = build_model(
        "tiny", VOCAB, **ModelConfig(kernel_backend="torch", state_chain="torch").kernel_fields()
    )
    assert model.backend == "torch" and model.model.layers[0].attn.state_chain == "torch"
    model.save_pretrained(tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert saved["kernel_backend"] == "torch" and saved["state_chain"] == "torch"
    again = load_model(tmp_path / "ckpt", ModelConfig(state_chain="triton"))
    assert again.config.state_chain == "triton" and again.model.layers[0].attn.state_chain == "triton"
    assert again.config.kernel_backend == "auto"  # the run's choice, not the checkpoint's
    assert load_model(tmp_path / "ckpt").config.kernel_backend == "torch"  # no run config: as saved


def test_lact_choices_reach_its_mixer(tmp_path: Path) -> None:
    fields = ModelConfig(mixer="lact", lact_attention="band", lact_compile="off").kernel_fields()
    model = build_model("tiny", VOCAB, mixer="lact", **fields)
    opts = model.model.layers[0].attn.opts
    assert opts.lact_attention == "band" and opts.lact_compile is False


def test_bad_and_old_names() -> None:
    assert (
        FastWeightConfig(kernel_backend="fla").kernel_backend == "triton"
    )  # configs saved before 2026-12-02
    with pytest.raises(ValueError, match="state_chain"):
        FastWeightConfig(state_chain="cuda")
    with pytest.raises(ValueError, match="lact_attention"):
        build_model("tiny", VOCAB, mixer="lact", lact_attention="dense")
