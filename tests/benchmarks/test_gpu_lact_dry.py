"""benchmarks/gpu_lact.py's logic on the CPU (--dry-run: tiny shapes, the Triton interpreter), for
the phases this machine can run in seconds: a broken phase would otherwise first fail on a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_dry_run_of_layer_inductor_bound_attention_model_exactness_and_refine(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFINE_")}
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_lact.py", "--out", str(tmp_path), "--dry-run"]
        + ["--phases", "layer,inductor,bound,attention,model,exact,refine"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = done.stdout[done.stdout.rindex("metric") :]
    assert "FAIL" not in table and "skipped" not in table, table
    metrics = {json.loads(line)["metric"] for line in (tmp_path / "results.jsonl").read_text().splitlines()}
    expected = {
        "lact_triton_vs_reference_max_rel_err",
        "lact_fastweight_util",
        "lact_fastweight_util_cublas_bound",
        "lact_fastweight_util_inductor_default",
        "lact_inductor_vs_reference_max_rel_err_default",
        "lact_window_attn_max_rel_err_flex",
        "lact_window_attn_flex_speedup",
        "lact_760m_tok_s",
        "lact_760m_tok_s_compile0",
        "lact_760m_tok_s_band_attention",
        "lact_760m_2layer_fp32_grad_rel_err_torch_kernels",
        "lact_760m_2layer_bf16_grad_rel_err_default",
        "lact_refine_grad_rel_err_fused",
        "lact_refine_over_ntp_branched",
    }
    assert expected <= metrics, expected - metrics
    assert (tmp_path / "bound.txt").read_text().count("TFLOP/s") == 8  # the pass's distinct products
