"""flows.stages without a server: artifact keys, which failures are retried, the progress artifact of a
stage found up to date, overrides written into the DVC repository's params.yaml."""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from dvc.lock import LockError
from dvc.repo import Repo
from prefect.states import Completed, Failed
from tiny_project import ROOT, git_env

from flows import stages
from flows.stages import artifact_key, transient
from refine_tasks.config import load_config
from refine_tasks.errors import TrainingDiverged
from refine_tasks.pipeline.lifecycle import LifecycleError, StageResult
from refine_tasks.store.catalog import CatalogLocked


def test_artifact_keys_are_what_prefect_accepts() -> None:
    assert artifact_key("eval_qa@sft", "summary") == "eval-qa-sft-summary"
    assert artifact_key("midtrain_refine", "progress") == "midtrain-refine-progress"


def test_only_transient_failures_are_retried() -> None:
    for exc in (CatalogLocked("catalog x is locked by PID 7"), LockError("dvc repo locked"), TimeoutError()):
        assert transient(None, None, Failed(data=exc)), exc
    for exc in (TrainingDiverged("non-finite"), LifecycleError("no checkpoint"), ValueError("bad")):
        assert not transient(None, None, Failed(data=exc)), exc
    assert not transient(None, None, Completed(data=1))


def test_a_training_stage_found_up_to_date_shows_its_progress_done(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 18, item 10: the progress artifact of a stage DVC found up to date read 0%."""
    updates: list[tuple[str, float, str]] = []
    monkeypatch.setattr(stages, "get_run_logger", lambda: logging.getLogger("test"))
    monkeypatch.setattr(stages, "concurrency", lambda limits, occupy: contextlib.nullcontext())
    monkeypatch.setattr(stages, "create_markdown_artifact", lambda *a, **k: None)
    monkeypatch.setattr(stages, "create_progress_artifact", lambda progress, key, description: f"id:{key}")
    monkeypatch.setattr(
        stages, "update_progress_artifact", lambda a, p, description: updates.append((a, p, description))
    )
    skipped = StageResult("base", [("up to date", "dvc status: nothing changed")], up_to_date=True)
    monkeypatch.setattr(stages, "run_tracked", lambda name, cfg, on_step, force: skipped)
    assert stages.stage_task.fn("base", "no-such-params.yaml", [], "", False) == skipped.rows
    assert updates == [("id:base-progress", 100.0, "base: up to date (dvc status)")]

    updates.clear()
    ran = StageResult("base", [("steps", "6")])
    monkeypatch.setattr(stages, "run_tracked", lambda name, cfg, on_step, force: ran)
    stages.stage_task.fn("base", "no-such-params.yaml", [], "", False)
    assert updates == []  # a stage that ran reports its own steps (TrainingProgress.__call__)


class RecordingTask:
    """Stands in for stage_task: records the arguments each run would have had."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def with_options(self, **options) -> RecordingTask:
        return self

    def __call__(self, *args) -> list:
        self.calls.append(args)
        return []


def test_a_flows_overrides_go_into_the_repositorys_params_yaml(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Issue 18, item 9: a deployment run with ["train.max_steps=30"] ran every stage untracked (the
    base model retrained, DVC dirty); as `dvc exp run -S`, the value belongs in params.yaml."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=git_env())
    Repo.init(str(tmp_path))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    task = RecordingTask()
    monkeypatch.setattr(stages, "stage_task", task)
    stages.run_stage("midtrain_sft", "params.yaml", ["train.max_steps=30"])
    assert task.calls == [("midtrain_sft", "params.yaml", [], "", False)]
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["train"]["max_steps"] == 30
    assert load_config("params.yaml") == load_config(ROOT / "params.yaml", ["train.max_steps=30"])
