"""refine_tasks.pipeline.dvc_state: a stage committed outside `dvc repro` leaves dvc.lock staged in git;
overrides go into the repository's params.yaml."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
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


KILLED_COMMIT = textwrap.dedent(
    """
    import os, signal
    from pathlib import Path
    from dvc.utils.serialize import _common
    from refine_tasks.pipeline.dvc_state import DvcStages

    def half_then_die(path, data, dumper, fs=None, **kwargs):  # DVC writes dvc.lock in place
        if str(path).endswith("dvc.lock"):
            with open(path, "w") as f:
                f.write("schema: '2.0'\\nstages:\\n  hello:\\n    cmd: ech")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, data, dumper, fs=fs, **kwargs)

    real, _common._dump_data = _common._dump_data, half_then_die
    DvcStages(Path.cwd()).commit("hello")
    """
)


def test_a_commit_killed_while_dvc_writes_dvc_lock_leaves_the_last_good_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Found by tests/pipeline/test_faults.py: kill -9 of `refine run` while DVC rewrote dvc.lock
    left it truncated, and every later `refine run` and `dvc status` failed on it."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=git_env())
    Repo.init(str(tmp_path))
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  hello:\n    cmd: echo hi > out.txt\n    outs:\n      - out.txt\n"
    )
    (tmp_path / "out.txt").write_text("hi\n")
    monkeypatch.chdir(tmp_path)
    DvcStages(tmp_path).commit("hello")
    good = (tmp_path / "dvc.lock").read_text()
    assert not list(tmp_path.glob("dvc.lock.*"))
    (tmp_path / "out.txt").write_text("hello again\n")
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_COMMIT], cwd=tmp_path, capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (tmp_path / "dvc.lock").read_text() != good  # truncated by the killed write

    stages = DvcStages(tmp_path)  # the next command that reads the repository
    assert (tmp_path / "dvc.lock").read_text() == good
    assert not list(tmp_path.glob("dvc.lock.*"))
    assert not stages.up_to_date("hello")  # out.txt changed after the good commit: it is stale
    stages.commit("hello")
    assert stages.up_to_date("hello") and not list(tmp_path.glob("dvc.lock.*"))
