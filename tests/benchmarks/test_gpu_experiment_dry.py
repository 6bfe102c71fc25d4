"""benchmarks/gpu_experiment.py on the CPU at a tiny size: the lifecycle timed, a further seed, the
results page, and the two figures recorded (under a minute alone on 2 cores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_experiment_benchmark_records_the_lifecycle_and_writes_the_page(
    tmp_path: Path, tiny_lifecycle: list[str]
) -> None:
    tiny = [
        *tiny_lifecycle,
        # post-training at the tiny project's sizes (at the defaults, 4K-16K prompts, it took 108 of 150 s)
        "qa_data.lengths=[512]", "qa_data.samples=1", "posttrain.batch_size=2",
        "posttrain.max_prompt_tokens=512", "posttrain.max_answer_tokens=8", "ttt.steps=1",
        "ttt.max_prompt_tokens=512",
        # one ablation, always run (a tiny model's scores would call for all eight)
        "lifecycle.ablate=always", "lifecycle.ablations={coef-0p4: [refine.coef=0.4]}",
    ]  # fmt: skip
    out = tmp_path / "out"
    command = [sys.executable, "benchmarks/gpu_experiment.py", "--out", str(out)]
    command += [w for item in tiny for w in ("--set", item)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr + (out / "lifecycle.log").read_text()
    figures = {json.loads(x)["metric"]: json.loads(x) for x in (out / "results.jsonl").open()}
    assert set(figures) == {"gpu_lifecycle_wall_s", "gpu_pretrain_tokens_per_s"}
    assert figures["gpu_lifecycle_wall_s"]["value"] > 0 and figures["gpu_pretrain_tokens_per_s"]["value"] > 0
    page = json.loads((out / "results" / "results.json").read_text())
    assert page["seeds"] == [0, 1] and "sft seed 1" in page["runs"] and "refine seed 1" in page["runs"]
    assert any(r["metric"] == "S-NIAH 512" for r in page["headline"])
    [ablation] = page["ablations"]  # trained and evaluated from the same base, compared with seed 0's SFT
    assert ablation["ablation"] == "coef-0p4" and ablation["compared_sft"] == "sft"
    assert "S-NIAH 512" in ablation["metrics"] and page["runs"]["ablation coef-0p4"]["summary"]["steps"] == 2
    assert "## Ablations" in (out / "results" / "results.md").read_text()
