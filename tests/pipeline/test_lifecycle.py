"""refine_tasks.pipeline.lifecycle and dvc_state: stage names and configurations, skipped evaluations, the
report from scores.json files, no half-written outputs after a failure, when DVC bookkeeping applies."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from refine_tasks.config import ConfigError
from refine_tasks.corpus import CorpusError
from refine_tasks.errors import TrainingDiverged
from refine_tasks.pipeline import lifecycle
from refine_tasks.pipeline.dvc_state import DvcStages
from refine_tasks.pipeline.lifecycle import (
    LifecycleError,
    run_stage,
    run_tracked,
    split_stage,
    stage_config,
    stage_names,
    stage_outputs,
)


def test_stage_names_follow_the_lifecycle() -> None:
    names = stage_names()
    assert names[:7] == [
        "tokenizer",
        "corpus",
        "kernels",
        "base",
        "positions",
        "midtrain_sft",
        "midtrain_refine",
    ]
    assert names[-1] == "report" and len(names) == 26
    assert names.index("eval_qa@sft") > names.index("midtrain_refine")
    post = ["qa_data", "posttrain@sft", "posttrain@nested-sft", "posttrain@nested-refine"]
    post += ["eval_qa_post@sft", "eval_qa_post@nested-sft", "eval_qa_post@nested-refine"]
    assert names[-10:-1] == [*post, "eval_qa_ttt@sft", "eval_qa_ttt@refine"]
    assert split_stage("eval_longbench@refine") == ("eval_longbench", "refine")
    with pytest.raises(LifecycleError, match="stage 'eval_qa@big': unknown; stages are tokenizer"):
        split_stage("eval_qa@big")


def fake_checkpoint(runs: Path, model: str) -> Path:
    ckpt = runs / model / "checkpoints" / "step-0000007"
    ckpt.mkdir(parents=True)
    (ckpt.parent / "latest").write_text("step-0000007\n")
    return ckpt


def test_stage_configs(make_config, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cfg = make_config(f"lifecycle.runs_dir={runs}", "refine.coef=0.3", "lifecycle.base_steps=9")
    base = stage_config("base", cfg)
    assert (base.refine.coef, base.train.max_steps, base.train.lr) == (0.0, 9, cfg.lifecycle.base_lr)
    assert base.train.out_dir == runs / "base" and base.model.init_from is None
    assert base.train.batch_size == cfg.train.batch_size  # lifecycle.base_batch_size unset
    wide = stage_config(
        "base", cfg.model_copy(update={"lifecycle": cfg.lifecycle.model_copy(update={"base_batch_size": 8})})
    )
    assert wide.train.batch_size == 8 and wide.train.max_steps == 9
    assert (base.train.val_every, base.train.checkpoint_every) == (
        cfg.train.val_every, cfg.train.checkpoint_every)  # fmt: skip
    paced = stage_config("base", make_config(f"lifecycle.runs_dir={runs}", "lifecycle.base_val_every=4",
                                             "lifecycle.base_checkpoint_every=6", "train.val_every=2"))  # fmt: skip
    assert (paced.train.val_every, paced.train.checkpoint_every) == (4, 6)
    with pytest.raises(LifecycleError, match="no checkpoint of model 'base'; run the `base` stage first"):
        stage_config("midtrain_sft", cfg)
    ckpt = fake_checkpoint(runs, "base")
    sft, refine = stage_config("midtrain_sft", cfg), stage_config("midtrain_refine", cfg)
    assert sft.refine.coef == 0.0 and refine.refine.coef == 0.3
    assert sft.train.batch_size == refine.train.batch_size == cfg.train.batch_size
    assert sft.model.init_from == refine.model.init_from == str(ckpt)
    assert (sft.train.out_dir, refine.train.out_dir) == (runs / "sft", runs / "refine")
    ev = stage_config("eval_qa@base", cfg).evaluate
    assert (ev.families, ev.run, ev.checkpoint) == (["ruler_qa"], "base", str(ckpt))
    assert ev.output_dir == cfg.lifecycle.eval_dir / "ruler_qa"
    assert stage_outputs("eval_qa@base", cfg) == [cfg.lifecycle.eval_dir / "ruler_qa" / "base"]


def test_evaluation_without_its_data_is_skipped_with_a_notice(make_config, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    fake_checkpoint(runs, "sft")
    cfg = make_config(
        f"lifecycle.runs_dir={runs}",
        f"lifecycle.eval_dir={tmp_path / 'eval'}",
        f"evaluate.ruler_qa_files=[{tmp_path / 'none.parquet'}]",
    )
    result = run_stage("eval_qa@sft", cfg)
    assert "eval_qa@sft: skipped, evaluate.ruler_qa_files:" in result.notice
    assert "dvc repro -f -s eval_qa@sft" in result.notice
    scores = json.loads((tmp_path / "eval" / "ruler_qa" / "sft" / "scores.json").read_text())
    assert scores["cells"] == [] and "none.parquet not found" in scores["skipped"]


def cells(run: str, scores: dict[str, float]) -> dict:
    return {
        "run": run,
        "checkpoint": f"data/runs/{run}/checkpoints/step-0000004",
        "cells": [
            {
                "run": run,
                "checkpoint": f"data/runs/{run}/checkpoints/step-0000004",
                "family": family,
                "task": task,
                "length": 1024,
                "depth": 50.0 if family == "niah" else None,
                "n_samples": 2,
                "score": score,
            }  # fmt: skip
            for (family, task), score in scores.items()
        ],
    }


def test_report_compares_the_models_from_their_scores(make_config, tmp_path: Path) -> None:
    cfg = make_config(f"lifecycle.eval_dir={tmp_path / 'eval'}", f"evaluate.report_dir={tmp_path / 'rep'}")
    written = {
        ("niah", "base"): {("niah", "niah_single_1"): 50.0},
        ("niah", "sft"): {("niah", "niah_single_1"): 0.0},
        ("ruler_qa", "base"): {("ruler_qa", "squad"): 10.0, ("ruler_qa", "hotpotqa"): 30.0},
        ("ruler_qa", "sft"): {("ruler_qa", "squad"): 20.0, ("ruler_qa", "hotpotqa"): 40.0},
    }
    for (family, model), scores in written.items():
        out = tmp_path / "eval" / family / model
        out.mkdir(parents=True)
        (out / "scores.json").write_text(json.dumps(cells(model, scores)))
    result = run_stage("report", cfg)
    comparison = (tmp_path / "rep" / "comparison.md").read_text()
    assert "| family | task | base | sft |" in comparison
    assert "| RULER QA | average | 20.00 | **30.00** |" in comparison
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    at_1k = {  # every task at every evaluated length, beside the family averages
        "base": {"niah_single_1@1024": 50.0, "squad@1024": 10.0, "hotpotqa@1024": 30.0},
        "sft": {"niah_single_1@1024": 0.0, "squad@1024": 20.0, "hotpotqa@1024": 40.0},
    }
    assert metrics == {
        "base": {"niah": 50.0, "ruler_qa": 20.0, **at_1k["base"]},
        "sft": {"niah": 0.0, "ruler_qa": 30.0, **at_1k["sft"]},
    }
    assert (tmp_path / "rep" / "base_niah.png").is_file() and (
        "report",
        str(tmp_path / "rep" / "comparison.md"),
    ) in result.rows
    header, rows = lifecycle.comparison(cfg)
    assert (
        header == ["family", "task", "base", "sft"]
        and ["RULER NIAH", "niah_single_1", "**50.00**", "0.00"] in rows
    )


def test_a_failing_stage_leaves_none_of_its_outputs(make_config, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cfg = make_config(
        f"lifecycle.runs_dir={runs}", "corpus.limit=4", "train.seq_len=64", "lifecycle.base_steps=5",
        "lifecycle.base_lr=1e30",  # weights blow up after the first step
    )  # fmt: skip
    run_stage("corpus", cfg)
    (runs / "base").mkdir(parents=True)
    (runs / "base" / "stale.txt").write_text("from an earlier run")
    with pytest.raises(TrainingDiverged, match="non-finite"):
        run_tracked("base", cfg)  # outside a DVC repository: just the stage
    # None of the failed run's files: the earlier output is back as it was, and no copy is left aside.
    assert [p.name for p in (runs / "base").iterdir()] == ["stale.txt"]
    assert sorted(p.name for p in runs.iterdir()) == ["base", "base.lock"]  # the run folder's lock


def test_a_failing_stage_keeps_its_last_outputs(make_config, tmp_path: Path, tokenizer_dir: Path) -> None:
    tokenizer = tmp_path / "tokenizer"
    shutil.copytree(tokenizer_dir, tokenizer)
    before = {p.name: p.read_bytes() for p in tokenizer.iterdir()}
    cfg = make_config(f"paths.tokenizer_dir={tokenizer}", f"corpus.source={tmp_path / 'no' / 'such'}")
    with pytest.raises(CorpusError, match="no such"):
        run_stage("tokenizer", cfg)
    assert {p.name: p.read_bytes() for p in tokenizer.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("tokenizer")) == ["tokenizer"]


def test_a_stage_killed_midway_gets_its_last_outputs_back(make_config, tmp_path: Path) -> None:
    """A killed stage leaves its half-written outputs and the aside copy; the next run starts from the copy."""
    runs = tmp_path / "runs"
    cfg = make_config(f"lifecycle.runs_dir={runs}", "lifecycle.base_checkpoint=/no/such/model")
    (runs / "base").mkdir(parents=True)
    (runs / "base" / "half-written.txt").write_text("by the killed stage")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    aside = runs / f"base.aside-{int(dead.stdout)}"
    aside.mkdir()
    (aside / "stale.txt").write_text("from an earlier run")
    with pytest.raises(LifecycleError, match="not a model directory"):
        run_stage("base", cfg)
    assert [p.name for p in (runs / "base").iterdir()] == ["stale.txt"]
    assert sorted(p.name for p in runs.iterdir()) == ["base"]


def test_dvc_bookkeeping_only_for_the_repositorys_own_params(
    make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config()
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    monkeypatch.chdir(tmp_path)
    tracked = DvcStages.for_config(cfg)
    assert tracked is not None and tracked.root == tmp_path
    assert DvcStages.for_config(make_config("train.max_steps=3")) is None  # an override: not what DVC runs
    monkeypatch.chdir(tmp_path / ".dvc")
    assert DvcStages.for_config(cfg) is None  # paths are relative to the repository root


def test_the_kernels_stage_keeps_what_the_cache_holds(make_config, tmp_path: Path) -> None:
    """The kernel cache only grows (DVC persist): its stage neither sets it aside nor removes it,
    also when it fails; on a CPU it compiles nothing and leaves the folder's README."""
    cfg = make_config(f"paths.kernel_cache={tmp_path / 'kernels'}")
    kept = tmp_path / "kernels" / "nvidia-h200-triton3.6.0" / "triton" / "k.cubin"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"compiled elsewhere")
    result = run_stage("kernels", cfg)
    assert result.rows == [
        ("kernel cache", "nothing to compile: train.device and evaluate.device are no CUDA device")
    ]
    assert kept.read_bytes() == b"compiled elsewhere" and (tmp_path / "kernels" / "README.txt").is_file()
    with pytest.raises(ConfigError):
        run_stage(
            "kernels", cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": "cuda:7"})})
        )
    assert kept.is_file() and not list(tmp_path.glob("kernels.aside-*"))


def test_the_base_stage_records_its_recall_probe(make_config, tmp_path: Path) -> None:
    """With a mid-training share, the base's summary holds the recall probe on documents it never read,
    and each of its validation points the probe's share and log-prob gain (the last: the summary's)."""
    runs = tmp_path / "runs"
    cfg = make_config(
        f"lifecycle.runs_dir={runs}", "corpus.limit=8", "corpus.midtrain_share=0.5", "corpus.retrieval_ratio=1",
        "corpus.retrieval_chars=2000", "corpus.retrieval_facts=4", "train.seq_len=1024", "train.batch_size=1",
        "lifecycle.base_steps=2", "model.preset=tiny", "train.device=cpu", "evaluate.device=cpu",
        "train.val_every=1", "train.val_sequences=1",
    )  # fmt: skip
    run_stage("corpus", cfg)
    result = run_stage("base", cfg)
    probe = json.loads((runs / "base" / "summary.json").read_text())["recall_probe"]
    assert probe["uses"] > 0 and probe["statements"] > 0
    curve = json.loads((runs / "base" / "curve.json").read_text())
    assert [c["step"] for c in curve if "val/retrieval_gain" in c and "val/recall_use" in c] == [1, 2]
    assert curve[-1]["val/retrieval_gain"] == pytest.approx(probe["gain"], abs=1e-4)
    assert curve[-1]["val/recall_use"] == probe["use_exact"]
    assert 0.0 <= probe["use_exact"] <= 1.0 and 0.0 <= probe["statement_exact"] <= 1.0
    assert dict(result.rows)["recall probe: uses / statements"].endswith(
        f"exact ({probe['uses']} / {probe['statements']} values)"
    )
    run_stage("corpus", make_config(f"lifecycle.runs_dir={runs}", "corpus.limit=8"))  # no share: no probe
    run_stage("base", make_config(f"lifecycle.runs_dir={runs}", "train.seq_len=128", "lifecycle.base_steps=1",
                                  "model.preset=tiny", "train.device=cpu"))  # fmt: skip
    assert "recall_probe" not in json.loads((runs / "base" / "summary.json").read_text())
