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
def test_ablations_after_a_finished_comparison_train_only_the_ablation(tmp_path: Path) -> None:
    d = tmp_path / "data"
    tiny = [
        f"paths.data_dir={d}", f"paths.corpus_dir={d / 'corpus'}", f"paths.tokenizer_dir={d / 'tokenizer'}",
        f"paths.catalog={d / 'cache' / 'refine.duckdb'}", f"paths.kernel_cache={d / 'cache' / 'kernels'}",
        f"lifecycle.runs_dir={d / 'runs'}", f"lifecycle.positions_dir={d / 'positions'}",
        f"lifecycle.eval_dir={d / 'eval'}", f"lifecycle.experiment_dir={d / 'experiment'}",
        f"lifecycle.results_dir={tmp_path / 'docs'}", f"evaluate.report_dir={d / 'reports'}",
        "tokenizer.path=null", "tokenizer.vocab_size=512", "corpus.limit=6", "corpus.retrieval_chars=3000",
        "model.preset=tiny", "train.device=cpu", "evaluate.device=cpu", "train.seq_len=256",
        "train.max_steps=2", "train.val_sequences=2", "train.val_every=1", "lifecycle.base_steps=2",
        "lifecycle.seeds=[1]", "positions.n_chunks=2", "refine.rollout_len=3", "evaluate.niah_lengths=[512]",
        "evaluate.niah_variants=[niah_single_1]", "evaluate.niah_depths=[50.0]", "evaluate.niah_samples=1",
        "evaluate.niah_max_new_tokens=8", "evaluate.max_prompt_tokens=512",
        "evaluate.ruler_qa_files=[missing.parquet]", "evaluate.longbench_source=missing",
        "lifecycle.ablations={coef-0p4: [refine.coef=0.4]}",
    ]  # fmt: skip
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
