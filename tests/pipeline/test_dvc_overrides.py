"""`refine run --set` in a DVC repository behaves as `dvc exp run -S`: the override lands in
params.yaml, only the stages whose parameters it changes run (none upstream of them), and dvc.lock
records the values used, so `dvc status` is clean afterwards (issue 18, item 9)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from tiny_project import BIN, make_project, read_params, run

pytestmark = pytest.mark.slow

UP_TO_DATE = re.compile(r"^(\S+) *\n +up to date", re.MULTILINE)
STAGES = ["tokenizer", "corpus", "kernels", "base", "positions", "midtrain_sft"]


def test_an_override_reruns_only_the_stages_it_changes_and_leaves_dvc_clean(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    refine = str(BIN / "refine")
    run([refine, "run", "--until", "midtrain_sft"], project)
    assert "Data and pipelines are up to date" in run(["dvc", "status", *STAGES], project).stdout

    again = run([refine, "run", "--until", "midtrain_sft", "--set", "train.max_steps=5"], project)
    skipped = set(UP_TO_DATE.findall(again.stdout))
    # train.max_steps is a parameter of mid-training only: the base model is not retrained
    assert skipped == {"tokenizer", "corpus", "kernels", "base", "positions"}, again.stdout
    assert read_params(project)["train"]["max_steps"] == 5  # as `dvc exp run -S` leaves it
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert lock["midtrain_sft"]["params"]["params.yaml"]["train"]["max_steps"] == 5
    assert "Data and pipelines are up to date" in run(["dvc", "status", *STAGES], project).stdout
    summary = (project / "data" / "runs" / "sft" / "summary.json").read_text()
    assert '"steps": 5' in summary

    refused = run([refine, "run", "--until", "base", "--set", "train.no_such_field=1"], project, check=False)
    assert refused.returncode == 2 and "train.no_such_field" in refused.stdout
    assert (
        read_params(project)["train"]["max_steps"] == 5
        and "no_such_field" not in (project / "params.yaml").read_text()
    )
