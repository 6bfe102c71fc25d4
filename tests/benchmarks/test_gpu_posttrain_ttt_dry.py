"""benchmarks/gpu_posttrain_ttt.py's logic on the CPU (--dry: tiny preset, short prompts): its three
figures are written, positive, and each is the ratio of the two times its note reports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_writes_the_three_timed_ratios(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFINE_")}
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_posttrain_ttt.py", "--out", str(tmp_path), "--dry"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    figures = {e["metric"]: e for e in lines}
    assert set(figures) == {"ttt_overhead_x", "ttt_overhead_naive_x", "posttrain_step_over_sft"}
    for entry in figures.values():
        assert entry["value"] > 0 and entry["card"] == "cpu" and entry["date"]
        # The value is the ratio of the two measured times in its note (not a constant).
        top, bottom = (float(x) for x in re.findall(r"([0-9.]+) ms", entry["note"])[:2])
        assert bottom > 0 and abs(entry["value"] - top / bottom) <= 0.01 * entry["value"] + 0.05 / bottom
    # Per-rep timings are printed, and they differ from rep to rep (measured, not fixed).
    reps = [float(x) for x in re.findall(r"rep \d+/\d+: ([0-9.]+) ms", done.stdout)]
    assert len(reps) >= 10 and len(set(reps)) > 1
