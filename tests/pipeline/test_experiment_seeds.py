"""`refine experiment`'s bookkeeping: each further seed's folders and shared base, and the page
written from the lifecycle's outputs at every seed (synthetic outputs, no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refine_tasks.config import load_config
from refine_tasks.pipeline.experiment import SEED_STAGES, seed_config, stage_done, write_experiment_results
from refine_tasks.pipeline.lifecycle import LifecycleError, stage_config


def _config(tmp_path: Path, *more: str):
    return load_config(
        None,
        [
            f"lifecycle.runs_dir={tmp_path / 'runs'}",
            f"lifecycle.eval_dir={tmp_path / 'eval'}",
            f"lifecycle.positions_dir={tmp_path / 'positions'}",
            f"lifecycle.experiment_dir={tmp_path / 'exp'}",
            f"lifecycle.results_dir={tmp_path / 'docs'}",
            "lifecycle.seeds=[1, 2]",
            *more,
        ],
    )


def _base(tmp_path: Path) -> Path:
    ckpt = tmp_path / "runs" / "base" / "checkpoints" / "step-0000010"
    ckpt.mkdir(parents=True)
    (ckpt.parent / "latest").write_text("step-0000010\n")
    return ckpt


def _scores(path: Path, arm: str, seed: int, family: str, score: float) -> None:
    path.mkdir(parents=True)
    cell = {"run": arm, "checkpoint": f"/c/{arm}/{seed}", "family": family, "task": "squad",
            "length": None, "depth": None, "n_samples": 4, "score": score}  # fmt: skip
    (path / "scores.json").write_text(json.dumps({"run": arm, "cells": [cell]}))


def _run(folder: Path, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    summary = {
        "steps": 3,
        "tokens": 300,
        "seconds": 1.5,
        "device": "cpu",
        "protocol": "ours",
        "final_ntp": 2.0,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    lines = [{"step": s, "loss": 3.0 - s, "ntp": 3.0 - s, "val/loss": 2.9 - s} for s in (1, 2, 3)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_a_further_seed_has_its_own_folders_and_the_lifecycles_base(tmp_path):
    cfg = _config(tmp_path)
    with pytest.raises(LifecycleError, match="run the `base` stage first"):
        seed_config(cfg, 1)
    base = _base(tmp_path)
    assert seed_config(cfg, 0) is cfg
    one = seed_config(cfg, 1)
    assert one.seed == 1 and one.lifecycle.base_checkpoint == str(base)
    assert one.lifecycle.runs_dir == tmp_path / "exp" / "seed-1" / "runs"
    assert one.lifecycle.eval_dir == tmp_path / "exp" / "seed-1" / "eval"
    sft = stage_config("midtrain_sft", cfg)
    assert sft.train.synthetic_docs is False and stage_config("base", cfg).train.synthetic_docs is True
    assert "base" in SEED_STAGES and "eval_niah@base" not in SEED_STAGES  # one base model evaluated once


def test_the_page_pairs_sft_and_refine_by_seed(tmp_path):
    cfg = _config(tmp_path)
    _base(tmp_path)
    _run(tmp_path / "runs" / "base", 0)
    for seed in (0, 1, 2):
        root = tmp_path / ("eval" if seed == 0 else f"exp/seed-{seed}/eval")
        runs = tmp_path / ("runs" if seed == 0 else f"exp/seed-{seed}/runs")
        for arm, score in (("sft", 20.0 + 10 * seed), ("refine", 22.0 + 10 * seed)):
            _scores(root / "ruler_qa" / arm, arm, seed, "ruler_qa", score)
            _run(runs / arm, seed)
    _scores(tmp_path / "eval" / "ruler_qa" / "base", "base", 0, "ruler_qa", 15.0)
    md, js = write_experiment_results(cfg, command="refine experiment -p params-gpu-small.yaml")
    data = json.loads(js.read_text())
    row = next(r for r in data["headline"] if r["metric"] == "RULER QA: squad")
    assert row["seeds"] == [0, 1, 2] and row["refine_minus_sft"]["mean"] == pytest.approx(2.0)
    assert row["refine_minus_sft"]["low"] == pytest.approx(2.0)  # the same gain at every seed
    assert row["base"]["mean"] == 15.0
    assert data["seeds"] == [0, 1, 2] and data["tokens"] == 7 * 300 and data["card"] == "cpu"
    assert set(data["runs"]) == {"base", *(f"{a} seed {s}" for a in ("sft", "refine") for s in (0, 1, 2))}
    assert "2.0 [2.0, 2.0]" in md.read_text() and (tmp_path / "docs" / "curves_validation.png").is_file()
    assert "curves_base.png" in data["figures"]  # the base on its own axis: it trains many more steps


def test_a_stage_killed_midway_is_not_taken_for_done(tmp_path):
    cfg = _config(tmp_path)
    _base(tmp_path)
    one = seed_config(cfg, 1)
    run = tmp_path / "exp" / "seed-1" / "runs" / "sft"
    (run / "checkpoints").mkdir(parents=True)  # what a killed training leaves: no summary.json
    assert not stage_done("midtrain_sft", one)
    _run(run, 1)
    assert stage_done("midtrain_sft", one)
    assert not stage_done("eval_niah@sft", one)
    _scores(tmp_path / "exp" / "seed-1" / "eval" / "niah" / "sft", "sft", 1, "niah", 1.0)
    assert stage_done("eval_niah@sft", one)
