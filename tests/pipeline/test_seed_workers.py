"""lifecycle.seed_workers: further seeds in processes of their own give the same runs as one seed
after another (a tiny CPU lifecycle: tokenizer, corpus, base, then each seed's positions and SFT)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refine_tasks.config import config_with, load_config
from refine_tasks.pipeline.experiment import run_seeds, seed_config
from refine_tasks.pipeline.lifecycle import LifecycleError, run_dir, run_stage

STAGES = ("base", "positions", "midtrain_sft")  # a seed's base: the lifecycle's, imported


def _tiny(tmp_path: Path):
    d = tmp_path / "data"
    return load_config(
        None,
        [
            f"paths.data_dir={d}", f"paths.corpus_dir={d / 'corpus'}", f"paths.tokenizer_dir={d / 'tokenizer'}",
            f"paths.catalog={d / 'cache' / 'refine.duckdb'}", f"paths.kernel_cache={d / 'cache' / 'kernels'}",
            f"lifecycle.runs_dir={d / 'runs'}", f"lifecycle.positions_dir={d / 'positions'}",
            f"lifecycle.eval_dir={d / 'eval'}", "tokenizer.path=null", "tokenizer.vocab_size=512",
            "corpus.limit=6", "corpus.retrieval_chars=3000", "model.preset=tiny", "train.device=cpu",
            "evaluate.device=cpu", "train.seq_len=256", "train.max_steps=3", "train.val_sequences=2",
            "train.val_every=1", "lifecycle.base_steps=2", "lifecycle.seeds=[1, 2]", "positions.n_chunks=2",
        ],
    )  # fmt: skip


def _losses(cfg, seed: int) -> list[float]:
    metrics = run_dir(seed_config(cfg, seed), "sft") / "metrics.jsonl"
    return [json.loads(line)["loss"] for line in metrics.read_text().splitlines() if '"loss"' in line]


@pytest.mark.slow
def test_seeds_at_once_train_the_same_runs_as_one_after_another(tmp_path: Path) -> None:
    cfg = _tiny(tmp_path)
    for stage in ("tokenizer", "corpus", "base"):
        run_stage(stage, cfg)
    one = config_with(cfg, [f"lifecycle.experiment_dir={tmp_path / 'one'}"], "test")
    both = config_with(
        cfg, [f"lifecycle.experiment_dir={tmp_path / 'both'}", "lifecycle.seed_workers=2"], "t"
    )

    heard: list[tuple[int, str]] = []
    every = [(seed, stage) for seed in (1, 2) for stage in STAGES]
    assert run_seeds(one, stages=STAGES) == every
    assert run_seeds(both, lambda s, r: heard.append((s, r.name)), STAGES) == every
    assert sorted(heard) == sorted([(s, n) for s in (1, 2) for n in STAGES])
    for seed in (1, 2):
        sequential, parallel = _losses(one, seed), _losses(both, seed)
        assert len(sequential) == 3 and parallel == pytest.approx(sequential, rel=1e-5)
    assert _losses(one, 1) != pytest.approx(_losses(one, 2), rel=1e-5)  # the seeds differ
    assert run_seeds(both, stages=STAGES) == []  # finished stages are not run again


def test_a_failed_seed_fails_the_call_after_the_others(tmp_path: Path) -> None:
    cfg = _tiny(tmp_path)
    both = config_with(
        cfg, [f"lifecycle.experiment_dir={tmp_path / 'both'}", "lifecycle.seed_workers=2"], "t"
    )
    with pytest.raises(LifecycleError, match="no checkpoint of model 'base'; run the `base` stage first"):
        run_seeds(both, stages=STAGES)  # found before any process starts
    for stage in ("tokenizer", "corpus", "base"):
        run_stage(stage, cfg)
    with pytest.raises(LifecycleError, match=r"lifecycle.seeds: seed 1 \(exit 1\), seed 2 \(exit 1\) failed"):
        run_seeds(both, stages=("base", "eval_qa@sft"))  # no SFT model to evaluate
    assert (tmp_path / "both" / "seed-2" / "runs" / "base").is_dir()  # what each seed finished stays
