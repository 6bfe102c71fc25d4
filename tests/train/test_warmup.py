"""`refine warmup`'s library side on a CPU: the real training micro-steps and evaluation generation
run on the tiny preset, and the report says what ran."""

from __future__ import annotations

import math

import pytest

from refine_tasks.errors import SequenceTooShort
from refine_tasks.train.warmup import warm_up, warmup_prompt_lengths

SMALL = [
    "train.seq_len=96",
    "train.batch_size=2",
    "train.device=cpu",
    "positions.n_chunks=2",
    "positions.margin=8",
    "refine.rollout_len=3",
    "evaluate.max_prompt_tokens=100",
    "evaluate.batch_size=3",
    "evaluate.device=cpu",
]


@pytest.mark.parametrize("mode", ["fused", "naive"])
def test_warm_up_runs_training_and_evaluation_shapes(make_config, mode: str) -> None:
    cfg = make_config(*SMALL, f"refine.mode={mode}", "refine.coef=0")  # NTP-only config: ReFINE warms too
    report = warm_up(cfg)
    assert report.train_shape == (2, 96) and report.refine_mode == mode
    assert set(report.losses) == {"ntp", "refine"} and all(math.isfinite(v) for v in report.losses.values())
    assert report.losses["refine"] != report.losses["ntp"]  # the GRPO term was in it
    assert report.prefill_lengths == [1, 2, 4, 8, 16, 32, 64]  # every bucket up to 100 tokens
    assert report.decode_streams == 3 and report.generated_tokens == 1 + 2 + 3
    rows = dict(report.summary_rows())
    assert rows["training micro-steps"] == f"NTP, ReFINE ({mode}) on [2, 96]"
    assert rows["prefill lengths"] == "1, 2, 4, 8, 16, 32, 64"
    assert float(rows["seconds"]) > 0


def test_parts_and_errors(make_config) -> None:
    report = warm_up(make_config(*SMALL), training=False)
    assert report.train_shape is None and report.prefill_lengths == [1, 2, 4, 8, 16, 32, 64]
    assert "training micro-steps" not in dict(report.summary_rows())
    with pytest.raises(SequenceTooShort, match="train.seq_len"):
        warm_up(make_config(*SMALL, "train.seq_len=20"), evaluation=False)


def test_prompt_lengths_cover_every_bucket() -> None:
    assert warmup_prompt_lengths(4096) == [4096, 4095]
    assert warmup_prompt_lengths(3000) == [2048, 2047]
    assert warmup_prompt_lengths(1) == [1]
