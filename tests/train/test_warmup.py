"""Training's part of `refine warmup` on a CPU: the real NTP and ReFINE micro-steps run on the tiny
preset, and the report says what ran."""

from __future__ import annotations

import math

import pytest

from refine_tasks.errors import SequenceTooShort
from refine_tasks.train.starting_model import make_model, resolve_device
from refine_tasks.train.warmup import warm_training

SMALL = [
    "train.seq_len=96",
    "train.batch_size=2",
    "train.device=cpu",
    "positions.n_chunks=2",
    "positions.margin=8",
    "refine.rollout_len=3",
]


@pytest.mark.parametrize("mode", ["fused", "naive"])
def test_warm_training_runs_the_ntp_and_refine_micro_steps(make_config, mode: str) -> None:
    cfg = make_config(*SMALL, f"refine.mode={mode}", "refine.coef=0")  # NTP-only config: ReFINE warms too
    model = make_model(cfg, resolve_device(cfg.train.device))
    report = warm_training(cfg, model)
    assert report.shape == (2, 96) and report.refine_mode == mode
    assert set(report.losses) == {"ntp", "refine"} and all(math.isfinite(v) for v in report.losses.values())
    assert report.losses["refine"] != report.losses["ntp"]  # the GRPO term was in it
    assert all(p.grad is None for p in model.parameters())
    rows = dict(report.summary_rows())
    assert rows["training micro-steps"] == f"NTP, ReFINE ({mode}) on [2, 96]"


def test_sequences_too_short_for_refine_are_the_trainers_error(make_config) -> None:
    cfg = make_config(*SMALL, "train.seq_len=20")
    with pytest.raises(SequenceTooShort, match="train.seq_len"):
        warm_training(cfg, make_model(cfg, resolve_device("cpu")))


def test_warm_training_also_runs_the_base_batch_and_the_positions_pass(make_config, monkeypatch) -> None:
    """lifecycle.base_batch_size (the base's own batch) gets an NTP micro-step of that shape, and the
    positions stage's entropy pass runs at positions.batch_size: the shapes those stages compile."""
    from refine_tasks.train import warmup

    shapes = []
    real = warmup.sequence_entropy
    monkeypatch.setattr(
        warmup, "sequence_entropy", lambda m, ids, c: shapes.append(tuple(ids.shape)) or real(m, ids, c)
    )
    cfg = make_config(*SMALL, "lifecycle.base_batch_size=3", "positions.batch_size=5")
    report = warm_training(cfg, make_model(cfg, resolve_device("cpu")))
    assert set(report.losses) == {"ntp", "refine", "ntp [3, 96]"}
    assert math.isfinite(report.losses["ntp [3, 96]"])
    assert shapes == [(2, 96), (5, 96)]  # the online selection's pass, then the positions stage's
    assert dict(report.summary_rows())["entropy pass (positions)"] == "[5, 96]"
    shapes.clear()  # positions at the training batch: the selection's pass already ran that shape
    warm_training(make_config(*SMALL, "positions.batch_size=2"), make_model(cfg, resolve_device("cpu")))
    assert shapes == [(2, 96)]
    # A base given as a checkpoint is not trained: no base-shaped step.
    cfg = make_config(*SMALL, "lifecycle.base_batch_size=3", "lifecycle.base_checkpoint=somewhere")
    assert set(warm_training(cfg, make_model(cfg, resolve_device("cpu"))).losses) == {"ntp", "refine"}
