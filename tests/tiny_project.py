"""A copy of this project in a temporary git repository, with params.yaml shrunk to seconds a stage.

Used by the DVC pipeline test and the Prefect deployment test: both run the real pipeline
(`dvc repro`, flow runs from deployments) on it, never on the working tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# The same formats and file names, synthetic (tests/fixtures/README.md): a fresh clone's evaluations
# read these, so `refine evaluate` in a tiny project never points at a missing ../shared.
FIXTURE_DATA = ROOT / "tests" / "fixtures" / "data"
# What the pipeline needs of the project: its declarations, the library (DVC hashes it as deps,
# and flow runs import it from the working directory) and the flows.
PROJECT_FILES = ("dvc.yaml", "params.yaml", "prefect.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore")
PROJECT_DIRS = ("refine_tasks", "flows", "infra")
BIN = Path(sys.executable).parent


def tiny_params(params: dict, shared_data: Path) -> dict:
    """Seconds a stage: 16 documents, 6 base steps, 4 mid-training steps, one record per benchmark,
    4 QA examples of 512 tokens (2 post-training batches a variant), one TTT step a batch."""
    params["corpus"]["limit"] = 16
    params["tokenizer"]["vocab_size"] = 512
    params["lifecycle"].update(base_steps=6)
    params["train"].update(max_steps=4, seq_len=256, checkpoint_every=4)
    params["positions"].update(n_chunks=4)
    ev = params["evaluate"]
    ev.update(
        niah_variants=["niah_single_1"],
        niah_lengths=[512],
        niah_depths=[50.0],
        niah_max_new_tokens=8,
        qa_samples=1,
        qa_max_new_tokens=8,
        longbench_tasks=["trec"],
        longbench_samples=1,
        max_prompt_tokens=1024,
    )
    params["qa_data"].update(lengths=[512], samples=1)
    params["posttrain"].update(batch_size=2, max_prompt_tokens=512, max_answer_tokens=8)
    params["ttt"].update(steps=1, max_prompt_tokens=512)
    ev["ruler_qa_files"] = [str(shared_data / "ruler_qa" / Path(f).name) for f in ev["ruler_qa_files"]]
    ev["longbench_source"] = str(shared_data / "longbench")
    return params


def make_project(dest: Path) -> Path:
    """Copy the project into dest (a new git repository with one commit) with tiny params.yaml."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    for name in PROJECT_DIRS:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shared = SHARED_DATA if SHARED_DATA.is_dir() else FIXTURE_DATA
    params = tiny_params(yaml.safe_load((ROOT / "params.yaml").read_text()), shared)
    write_params(dest, params)
    (dest / ".gitignore").write_text("__pycache__/\n/data/*\n")
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "tiny project"]):
        subprocess.run(["git", *cmd], cwd=dest, check=True, env=git_env())
    return dest


def write_params(project: Path, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def read_params(project: Path) -> dict:
    return yaml.safe_load((project / "params.yaml").read_text())


def git_env() -> dict[str, str]:
    names = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost"}
    return {**os.environ, **names, "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost"}


def tool_env() -> dict[str, str]:
    """The environment for `dvc`, `refine` and `prefect` of this virtualenv."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 400) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc
