"""benchmarks/gpu_lifecycle_flow.py's reading of `refine run`'s summary: which stages ran again after
the flow runs (the check behind "dvc repro / refine run re-run nothing afterwards"); what a run lost
mid-way still gives: the base figure from the worker's log, the finished stages copied on every poll."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from gpu_lifecycle_flow import seconds_between, stages_run  # noqa: E402

SUMMARY = """tokenizer
  up to date    dvc status: nothing changed
kernels
  up to date    dvc status: nothing changed
base
  steps                 6
  tokens/s         6,801
eval_niah@sft
  up to date    dvc status: nothing changed
posttrain@nested-refine
  steps                 2
comparison
  report    data/reports/comparison.md
"""


def test_stages_without_an_up_to_date_row_ran_and_the_comparison_is_no_stage() -> None:
    assert stages_run(SUMMARY) == ["base", "posttrain@nested-refine"]
    everything_skipped = "\n".join(line for line in SUMMARY.splitlines() if "steps" not in line)
    assert stages_run(everything_skipped.replace("tokens/s         6,801", "up to date")) == [
        "posttrain@nested-refine"
    ]


def test_flow_run_wall_time_from_its_own_start_and_end() -> None:
    assert seconds_between("2026-12-02T18:59:14.320000Z", "2026-12-02T19:01:35.520000Z") == 141.2


# Lines as the Prefect worker wrote them on the H200 (flow run 6d956ac8, 2026-12-03), shortened.
WORKER_LOG = """23:29:24.609 | INFO    | Task run 'kernels' - kernels: GPU NVIDIA H200, seconds 245.1
23:35:09.130 | INFO    | Task run 'base' - base: run base-20261203-232925, steps 2,000, skipped (non-finite) 0, \
last loss 2.7395, tokens/s 73,531, metrics data/runs/base/metrics.jsonl, dvc outputs committed (dvc.lock)
23:35:50.982 | INFO    | Task run 'midtrain_sft' - midtrain_sft: run sft-20261203-233511, steps 200, \
skipped (non-finite) 0, last loss 3.1794, tokens/s 65,314, metrics data/runs/sft/metrics.jsonl
23:36:02.859 | INFO    | Task run 'base' - base: up to date dvc status: nothing changed
"""


def test_the_base_stage_line_of_a_worker_log_gives_its_run_steps_and_tokens_per_s() -> None:
    from gpu_lifecycle_flow import base_from_worker_log

    assert base_from_worker_log(WORKER_LOG) == {
        "run": "base-20261203-232925",
        "steps": 2000,
        "tokens_per_s": 73531.0,
    }
    # the SFT line's figure is not taken for the base's, and a log without a finished base says so
    with pytest.raises(ValueError, match="no line of a finished base stage"):
        base_from_worker_log(WORKER_LOG.replace("Task run 'base' - base: run", "Task run 'base' - base: ran"))


def test_import_worker_log_records_the_figure_with_the_runs_card_and_date(tmp_path, monkeypatch) -> None:
    import gpu_lifecycle_flow
    import record

    log = tmp_path / "gpu-worker.log"
    log.write_text(WORKER_LOG)
    monkeypatch.setattr(record, "RESULTS_JSONL", tmp_path / "results.jsonl")
    monkeypatch.setattr(record, "RESULTS_MD", tmp_path / "RESULTS.md")
    gpu_lifecycle_flow.main(
        ["--import-worker-log", str(log), "--card", "NVIDIA H200", "--date", "2026-12-03"]
    )
    (entry,) = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert (entry["metric"], entry["value"], entry["card"], entry["date"]) == (
        "gpu_pretrain_tokens_per_s",
        73531.0,
        "NVIDIA H200",
        "2026-12-03",
    )
    assert "2000 steps" in entry["note"] and "base-20261203-232925" in entry["note"]
    with pytest.raises(SystemExit):  # a run's card and day are not guessed
        gpu_lifecycle_flow.main(["--import-worker-log", str(log)])


def test_progress_copies_finished_stages_and_records_the_base_figure_once(tmp_path, monkeypatch) -> None:
    import gpu_lifecycle_flow
    from record import FigureLog

    from refine_tasks.config import load_config

    root = tmp_path / "repo"
    cfg = load_config(None).model_copy(deep=True)
    cfg.lifecycle.runs_dir = root / "data/runs"
    cfg.lifecycle.eval_dir = root / "data/eval"
    monkeypatch.setattr(gpu_lifecycle_flow, "ROOT", root)
    out = tmp_path / "out"
    log = FigureLog("NVIDIA H200", "cmd", out / "results.jsonl", out / "RESULTS.md", [])
    out.mkdir()
    progress = gpu_lifecycle_flow.Progress(cfg, out, log)
    progress()  # nothing finished yet: nothing recorded
    assert not (out / "results.jsonl").exists()
    base = root / "data/runs/base"
    base.mkdir(parents=True)
    (base / "metrics.jsonl").write_text('{"step": 1}\n')
    (base / "checkpoints").mkdir()
    (base / "checkpoints" / "weights.bin").write_bytes(b"x" * 10)
    (base / "summary.json").write_text(json.dumps({"steps": 2000, "tokens_per_s": 73531.0}))
    (root / "data/eval/niah").mkdir(parents=True)
    (root / "data/eval/niah/base.json").write_text("{}")
    (root / "dvc.lock").write_text("schema: '2.0'\n")
    progress()
    progress()
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["value"] for x in lines] == [73531.0]
    copied = sorted(
        str(p.relative_to(out / "progress")) for p in (out / "progress").rglob("*") if p.is_file()
    )
    assert copied == ["dvc.lock", "eval/niah/base.json", "runs/base/metrics.jsonl", "runs/base/summary.json"]
