"""Save/load round trips, strict tensor checks, and fla DeltaNet checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from models_helpers import VOCAB, randomized, rel_err
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from refine_tasks.models import FastWeightForCausalLM, build_model


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = randomized(build_model("tiny", VOCAB, use_gate=True), seed=5)
    model.save_pretrained(tmp_path / "ck")
    return model, tmp_path / "ck"


def test_round_trip_through_auto_classes(saved, ids):
    model, path = saved
    loaded = AutoModelForCausalLM.from_pretrained(path)
    assert isinstance(loaded, FastWeightForCausalLM) and loaded.config.use_gate
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def rewrite(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor_is_named(saved):
    _, path = saved
    rewrite(path, lambda t: t.pop("model.layers.1.attn.k_conv1d.weight"))
    with pytest.raises(ValueError, match=r"missing tensor model\.layers\.1\.attn\.k_conv1d\.weight"):
        FastWeightForCausalLM.from_pretrained(path)


def test_wrong_shape_is_named(saved):
    _, path = saved
    rewrite(path, lambda t: t.__setitem__("model.layers.0.mlp.up_proj.weight", torch.randn(3, 64)))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.up_proj\.weight .*\[3, 64\].*\[128, 64\]"):
        FastWeightForCausalLM.from_pretrained(path)


def fla_checkpoint(path, **options):
    """A checkpoint written by fla's own DeltaNetForCausalLM (constructed on the CPU, never run)."""
    from fla.models import DeltaNetConfig, DeltaNetForCausalLM

    torch.manual_seed(0)
    config = DeltaNetConfig(hidden_size=64, num_hidden_layers=2, num_heads=2, vocab_size=VOCAB, **options)
    model = DeltaNetForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    return model


def test_fla_checkpoint_loads_every_tensor(tmp_path, ids):
    fla_model = fla_checkpoint(tmp_path / "fla", use_gate=True, intermediate_size=128)
    ours = FastWeightForCausalLM.from_pretrained(tmp_path / "fla")
    assert ours.config.use_gate and ours.config.mlp_size == 128
    theirs = fla_model.state_dict()
    mine = ours.state_dict()
    assert mine.keys() == theirs.keys()
    for name, t in mine.items():
        assert torch.equal(t, theirs[name]), name
    out = ours.prefill(ids)
    assert torch.isfinite(out.logits).all() and out.logits.std() > 0


def test_fla_hidden_ratio_rule_and_unsupported_option(tmp_path):
    fla_checkpoint(tmp_path / "a", hidden_ratio=4)  # fla's rounding of the MLP width to 256
    assert FastWeightForCausalLM.from_pretrained(tmp_path / "a").config.mlp_size == 256
    fla_checkpoint(tmp_path / "b")
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    config["qk_activation"] = "relu"
    (tmp_path / "b" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="qk_activation='relu'"):
        FastWeightForCausalLM.from_pretrained(tmp_path / "b")


def test_decode_matches_after_reload(saved, ids):
    model, path = saved
    loaded = FastWeightForCausalLM.from_pretrained(path)
    a = model.decode(model.prefill(ids).final, ids[:, 0])
    b = loaded.decode(loaded.prefill(ids).final, ids[:, 0])
    assert rel_err(b.logits, a.logits) == 0.0
