"""benchmarks/gpu_lifecycle_flow.py's reading of `refine run`'s summary: which stages ran again after
the flow runs (the check behind "dvc repro / refine run re-run nothing afterwards")."""

from __future__ import annotations

import sys
from pathlib import Path

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
