"""refine_tasks.pipeline.dvc_state: a stage committed outside `dvc repro` leaves dvc.lock staged in git;
overrides go into the repository's params.yaml."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from dvc.repo import Repo
from tiny_project import ROOT, git_env

from refine_tasks.config import load_config
from refine_tasks.pipeline.dvc_state import DvcStages, write_overrides


def test_committing_a_stage_stages_dvc_lock_for_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """dvc.lock belongs in git (DVC's own rule: other clones read it for `dvc status` and `dvc pull`),
    so after `refine run` it must not sit untracked: the project's .dvc/config autostages it."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=git_env())
    Repo.init(str(tmp_path))
    shutil.copy2(ROOT / ".dvc" / "config", tmp_path / ".dvc" / "config")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  hello:\n    cmd: echo hi > out.txt\n    outs:\n      - out.txt\n"
    )
    (tmp_path / "out.txt").write_text("hi\n")
    monkeypatch.chdir(tmp_path)  # DvcStages runs in its repository's root (for_config)
    DvcStages(tmp_path).commit("hello")
    status = subprocess.run(
        ["git", "status", "--porcelain", "dvc.lock"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert status.startswith("A  dvc.lock"), status
    assert not (ROOT / ".gitignore").read_text().count("dvc.lock")


def test_overrides_are_written_only_into_the_repositorys_own_params_yaml(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """write_overrides (`dvc exp run -S` for refine run and the flows): the repository's params.yaml
    gets the validated value and keeps its comments; another params file, or no repository, is
    left alone and the overrides stay to be applied at load time."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=git_env())
    Repo.init(str(tmp_path))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    shutil.copy2(ROOT / "params.yaml", tmp_path / "other.yaml")
    monkeypatch.chdir(tmp_path)
    assert write_overrides("other.yaml", ["train.max_steps=7"]) == ["train.max_steps=7"]
    assert (tmp_path / "other.yaml").read_text() == (ROOT / "params.yaml").read_text()
    assert write_overrides(None, ["train.max_steps=7", "evaluate.niah_lengths=[512]"]) == []
    written = (tmp_path / "params.yaml").read_text()
    assert load_config("params.yaml") == load_config(
        ROOT / "params.yaml", ["train.max_steps=7", "evaluate.niah_lengths=[512]"]
    )
    assert written.startswith((ROOT / "params.yaml").read_text().split("\n\n")[0])  # the comments stay
    assert "  limit: null\n" in written  # untouched values keep their spelling
    mtime = (tmp_path / "params.yaml").stat().st_mtime_ns
    assert write_overrides("params.yaml", ["train.max_steps=7"]) == []  # already there: not rewritten
    assert (tmp_path / "params.yaml").stat().st_mtime_ns == mtime
    monkeypatch.chdir(tmp_path / ".dvc")  # not the repository's root: not tracked
    assert write_overrides("../params.yaml", ["train.max_steps=8"]) == ["train.max_steps=8"]
