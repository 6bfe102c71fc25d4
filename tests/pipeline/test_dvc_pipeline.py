"""dvc.yaml end to end on the tiny configuration, in a temporary git repository: a full `dvc repro`,
a no-op second one, one parameter changed by `dvc exp run -S` (only its dependants re-run), a
failing stage that leaves no half-written output and a fixed rerun; metrics, plots, the local remote."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tiny_project import make_project, read_params, run, write_params

from refine_tasks.pipeline.lifecycle import EVAL_STAGES, MODELS, stage_names

# Post-training and its evaluations: downstream of the ReFINE model (qa_data is not).
POST_STAGES = [n for n in stage_names() if n.split("@")[0] in ("posttrain", "eval_qa_post", "eval_qa_ttt")]

pytestmark = pytest.mark.slow

RAN = re.compile(r"Running stage '([^']+)'")
RESTORED = re.compile(r"Stage '([^']+)' is cached - skipping run")  # DVC's run-cache


def ran(output: str) -> set[str]:
    return set(RAN.findall(output))


def ran_or_restored(output: str) -> set[str]:
    return ran(output) | set(RESTORED.findall(output))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("dvc") / "project")


def test_repro_all_then_nothing_then_only_dependants(project: Path) -> None:
    first = run(["dvc", "repro"], project, timeout=900)  # 26 stages, each a process of its own
    assert ran(first.stdout) == set(stage_names()), first.stdout
    assert "Data and pipelines are up to date" in run(["dvc", "status"], project).stdout
    report = (project / "data" / "reports" / "comparison.md").read_text()
    assert "| RULER NIAH | niah_single_1 |" in report and "base | sft | refine" in report
    skipped_or_run = json.loads((project / "data" / "eval" / "ruler_qa" / "sft" / "scores.json").read_text())
    assert skipped_or_run["cells"] or "not found" in skipped_or_run["skipped"]

    again = run(["dvc", "repro"], project)
    assert ran(again.stdout) == set(), again.stdout

    changed = run(["dvc", "exp", "run", "-S", "refine.coef=0.5"], project)  # an experiment on one value
    assert read_params(project)["refine"]["coef"] == 0.5
    refine_chain = {"midtrain_refine", "eval_niah@refine", "eval_qa@refine", "eval_longbench@refine"}
    refine_chain |= set(POST_STAGES)  # post-training starts from the ReFINE model
    # the report re-runs only when an evaluation output changed (a tiny model may answer the same)
    assert ran(changed.stdout) - {"report"} == refine_chain, changed.stdout

    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    flat = json.dumps(metrics)
    for key in ("final_ntp", "last_loss", '"niah"'):
        assert key in flat
    summary = json.loads((project / "data" / "runs" / "refine" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["last_loss"] > 0
    plots = run(["dvc", "plots", "show", "--json"], project).stdout
    assert "curve.json" in plots and "base_niah.png" in plots
    run(["dvc", "push"], project)
    assert any((project / ".dvc" / "remote").rglob("*")), "the default local remote holds the outputs"


def test_failing_stage_leaves_no_output_and_a_fixed_rerun_completes(project: Path) -> None:
    params = read_params(project)
    good_lr = params["train"]["lr"]
    params["train"]["lr"] = 1e30  # weights blow up after the first step: non-finite losses
    write_params(project, params)
    failed = run(["dvc", "repro"], project, check=False)
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    assert "non-finite loss" in output
    failing = {"midtrain_sft", "midtrain_refine"} & ran(output)
    assert failing, output
    for stage in failing:
        model = stage.removeprefix("midtrain_")
        assert not (project / "data" / "runs" / model).exists(), f"{stage} left a half-written output"

    params["train"]["lr"] = good_lr
    write_params(project, params)
    fixed = run(["dvc", "repro"], project)
    assert failing <= ran_or_restored(fixed.stdout), fixed.stdout
    assert not ran_or_restored(fixed.stdout) & {"tokenizer", "corpus", "base"}
    assert "Data and pipelines are up to date" in run(["dvc", "status"], project).stdout
    assert (project / "data" / "runs" / "sft" / "checkpoints" / "latest").is_file()


def test_a_model_change_marks_positions_training_and_evaluation_stale(project: Path) -> None:
    run(["dvc", "repro"], project)  # nothing to do after the tests above; the whole pipeline alone
    forward = project / "refine_tasks" / "models" / "modeling.py"
    source = forward.read_text()
    forward.write_text(source + "\n# an edit of the model's forward\n")
    try:
        stale = json.loads(run(["dvc", "status", "--json"], project).stdout)
    finally:
        forward.write_text(source)
    evaluations = {f"{stage}@{model}" for stage in EVAL_STAGES for model in MODELS}
    training = {"kernels", "base", "positions", "midtrain_sft", "midtrain_refine"}
    assert set(stale) == {*training, *evaluations, *POST_STAGES}, stale
    assert all(change == {"changed deps": {"refine_tasks/models": "modified"}} for [change] in stale.values())
    assert "Data and pipelines are up to date" in run(["dvc", "status"], project).stdout
