"""refine.protocol=reference: rollouts and old log-probs once per rollout batch, then one optimizer
step per mini-batch (DESIGN.md section 7); with one mini-batch it is our step (float64, to rounding)."""

from __future__ import annotations

import json

import pytest
import torch
from corpus_helpers import write_corpus

from refine_tasks.train.trainer import MidTrainer

SMALL = [
    "train.seq_len=96",
    "train.max_steps=2",
    "train.grad_accum=2",
    "train.dtype=float64",
    "train.warmup_steps=0",
    "train.schedule=constant",
    "positions.n_chunks=2",
    "positions.margin=8",
    "refine.rollout_len=3",
    "refine.mode=branched",
]


@pytest.fixture
def config(make_config, tmp_path):
    write_corpus(tmp_path / "data" / "corpus", [[120, 400, 97], [300, 150, 250]])
    return lambda name, *o: make_config(*SMALL, f"train.out_dir={tmp_path / name}", *o)


def _trained(cfg) -> tuple[dict[str, torch.Tensor], list[dict]]:
    trainer = MidTrainer(cfg)
    trainer.run()
    lines = [json.loads(x) for x in (cfg.train.out_dir / "metrics.jsonl").read_text().splitlines()]
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, lines


def test_one_mini_batch_is_our_step(config):
    # The same batches, rollouts and loss; only the old log-probs come from another pass (the loss
    # pass's forward instead of the decode), equal in float64 to rounding.
    ours, ours_lines = _trained(config("ours"))
    ref, ref_lines = _trained(config("ref", "refine.protocol=reference", "refine.mini_batches=1"))
    assert ours.keys() == ref.keys()
    assert all(torch.allclose(ours[k], ref[k], rtol=0, atol=1e-10) for k in ours)
    for a, b in zip(ours_lines, ref_lines, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-12) and a["policy"] == pytest.approx(
            b["policy"], abs=1e-12
        )
        assert b["ratio_mean"] == pytest.approx(1.0, abs=1e-12) and b["clip_frac"] == 0
    assert all(x["optimizer_steps"] == 1 for x in ref_lines)


def test_several_mini_batches_move_the_ratio_and_the_clip_binds(config):
    # A large learning rate: the second mini-batch's weights are far from the sampling ones.
    ref, lines = _trained(
        config("ref", "refine.protocol=reference", "refine.mini_batches=2", "train.lr=0.05")
    )
    ours, ours_lines = _trained(config("ours", "train.lr=0.05"))
    assert all(x["optimizer_steps"] == 2 for x in lines)
    assert any(x["clip_frac"] > 0 for x in lines)
    assert any(abs(x["ratio_mean"] - 1.0) > 1e-6 for x in lines)
    assert all(x["clip_frac"] == 0 and x["ratio_mean"] == pytest.approx(1.0, abs=1e-9) for x in ours_lines)
    assert not all(torch.equal(ours[k], ref[k]) for k in ours)


def test_sft_takes_one_step_per_batch_under_the_reference_protocol(config):
    _, lines = _trained(config("sft", "refine.protocol=reference", "refine.coef=0"))
    assert all("optimizer_steps" not in x for x in lines) and len(lines) == 2


def test_mini_batches_must_divide_the_rollout_batch(config):
    with pytest.raises(ValueError, match="refine.mini_batches=3 must divide train.grad_accum=2"):
        MidTrainer(config("bad", "refine.protocol=reference", "refine.mini_batches=3"))
