"""benchmarks/gpu_train_loop.py on the CPU: `refine train` run as subprocesses at a tiny size, the
first-step times and the loop ratio recorded, a restored archive used by the warm runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from corpus_helpers import write_corpus

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "train.device=cpu",
    "model.preset=tiny",
    "train.seq_len=512",
    "train.batch_size=1",
    "tokenizer.vocab_size=512",
    "train.val_sequences=1",  # the profile validates; this corpus has 5 sequences
]


@pytest.mark.slow
def test_the_loop_benchmark_runs_refine_train_and_records_its_figures(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tokenizer_dir, data / "tokenizer")
    write_corpus(data / "corpus", [[600, 700, 800, 900]])
    archive = tmp_path / "kernels.txz"
    (tmp_path / "kernels" / "gpu-triton0").mkdir(parents=True)
    (tmp_path / "kernels" / "gpu-triton0" / "kernel.cubin").write_bytes(b"\0")
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(tmp_path / "kernels", arcname="kernels")
    out = tmp_path / "out"
    command = [
        sys.executable, "benchmarks/gpu_train_loop.py", "--out", str(out), "--data", str(data),
        "--params", "params-gpu-small.yaml", "--steps", "7", "--work", str(tmp_path / "work"),
        "--cache", str(tmp_path / "cold-cache"), "--restore", str(archive), "--runs", "warm,ntp",
        *(part for item in TINY for part in ("--set", item)),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = {json.loads(line)["metric"]: json.loads(line) for line in (out / "results.jsonl").open()}
    assert set(figures) == {"gpu_warm_first_step_s", "gpu_train_refine_over_ntp", "gpu_train_ntp_step_s"}
    assert (
        0 < figures["gpu_warm_first_step_s"]["value"] < 600
        and figures["gpu_train_refine_over_ntp"]["value"] > 0
    )
    assert (tmp_path / "work" / "restored_kernels" / "gpu-triton0" / "kernel.cubin").is_file()
    metrics = [json.loads(x) for x in (tmp_path / "work" / "run_warm" / "metrics.jsonl").open()]
    assert len(metrics) == 7 and all(m["policy"] != 0 or m["tokens"] > 512 for m in metrics)  # ReFINE steps
