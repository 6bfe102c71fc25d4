"""benchmarks/gpu_midtrain_experiment.sh on the CPU at a tiny size: the comparison, then ABLATIONS=1
in the same folders runs the ablations alone (the lifecycle and the seeds are not trained again)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ablations_after_a_finished_comparison_train_only_the_ablation(
    tmp_path: Path, tiny_lifecycle: list[str]
) -> None:
    d = tmp_path / "data"
    tiny = [*tiny_lifecycle, "lifecycle.ablations={coef-0p4: [refine.coef=0.4]}"]
    sets = [w for item in tiny for w in ("--set", item)]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }

    def run(out: str, ablate: str, **extra: str) -> str:
        command = ["bash", "benchmarks/gpu_midtrain_experiment.sh", str(tmp_path / out), *sets]
        command += ["--set", f"lifecycle.ablate={ablate}"]
        done = subprocess.run(
            command, cwd=ROOT, env={**env, **extra}, capture_output=True, text=True, timeout=600
        )
        logs = "".join(p.read_text() for p in sorted((tmp_path / out).glob("*.log")))
        assert done.returncode == 0, done.stdout + done.stderr + logs
        return (tmp_path / out / "experiment.log").read_text()

    run("first", "never")
    base = (d / "runs" / "base" / "summary.json").read_text()
    log = run("again", "always", ABLATIONS="1")
    assert "ablation coef-0p4: midtrain_refine" in log
    for stage in ("\nbase ", "\nmidtrain_sft ", "seed 1: midtrain_refine "):
        assert stage not in log, f"{stage.strip()} trained again"
    assert (d / "runs" / "base" / "summary.json").read_text() == base
    page = json.loads((tmp_path / "docs" / "results.json").read_text())
    assert [a["ablation"] for a in page["ablations"]] == ["coef-0p4"] and page["seeds"] == [0, 1]
