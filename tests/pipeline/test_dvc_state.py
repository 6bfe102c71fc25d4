"""refine_tasks.pipeline.dvc_state: a stage committed outside `dvc repro` leaves dvc.lock staged in git."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from dvc.repo import Repo
from tiny_project import ROOT, git_env

from refine_tasks.pipeline.dvc_state import DvcStages


def test_committing_a_stage_stages_dvc_lock_for_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """dvc.lock belongs in git (DVC's own rule: other clones read it for `dvc status` and `dvc pull`),
    so after `refine run` it must not sit untracked: the project's .dvc/config autostages it."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=git_env())
    Repo.init(str(tmp_path))
    shutil.copy2(ROOT / ".dvc" / "config", tmp_path / ".dvc" / "config")
    (tmp_path / "dvc.yaml").write_text("stages:\n  hello:\n    cmd: echo hi > out.txt\n    outs:\n      - out.txt\n")
    (tmp_path / "out.txt").write_text("hi\n")
    monkeypatch.chdir(tmp_path)  # DvcStages runs in its repository's root (for_config)
    DvcStages(tmp_path).commit("hello")
    status = subprocess.run(
        ["git", "status", "--porcelain", "dvc.lock"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert status.startswith("A  dvc.lock"), status
    assert not (ROOT / ".gitignore").read_text().count("dvc.lock")
