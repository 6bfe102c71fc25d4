"""benchmarks/gpu_fsdp.py on the CPU: plain, FSDP2 (one rank) and FSDP2 with activation
checkpointing at a tiny size, every figure recorded (peak memory reads 0 without a GPU)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from corpus_helpers import write_corpus

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_fsdp_benchmark_trains_sharded_and_records_its_figures(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tokenizer_dir, data / "tokenizer")
    write_corpus(data / "corpus", [[600, 700, 800, 900]])
    out = tmp_path / "out"
    sets = ["train.device=cpu", "model.preset=tiny", "refine.coef=0.2", "positions.n_chunks=2"]
    command = [
        sys.executable, "benchmarks/gpu_fsdp.py", "--out", str(out), "--work", str(out / "work"), "--data", str(data),
        "--params", "params.yaml", "--seq-len", "128", "--lengths", "128,256", "--steps", "3",
        "--port", str(free_port()), *(part for item in sets for part in ("--set", item)),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = {json.loads(line)["metric"]: json.loads(line) for line in (out / "results.jsonl").open()}
    assert set(figures) == {
        "fsdp1_over_plain_step", "fsdp1_peak_gib_1p3b_16k", "ac_peak_gib_1p3b_16k", "max_seq_len_1p3b_ac"
    }  # fmt: skip
    assert figures["fsdp1_over_plain_step"]["value"] > 0 and figures["max_seq_len_1p3b_ac"]["value"] == 256
    for name, steps in (("fsdp", 3), ("fsdp_ac", 3), ("ac_256", 2)):  # each sharded run trained its steps
        assert len((out / "work" / name / "run" / "metrics.jsonl").read_text().splitlines()) == steps
        assert not (out / "work" / name / "run" / "checkpoints").exists()  # GBs at paper-1.3b
    assert "every length ran" in figures["max_seq_len_1p3b_ac"]["note"]

    # The search alone (--probes-only: no comparison runs, one figure more), under a budget already
    # used up: it stops before the first length, and says so.
    before = len((out / "results.jsonl").read_text().splitlines())
    done = subprocess.run(
        [*command, "--probes-only", "--budget-s", "0.001"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == before + 1 and "[plain]" not in done.stdout
    last = json.loads(lines[-1])
    assert last["metric"] == "max_seq_len_1p3b_ac" and last["value"] == 0
    assert "stopped before 128" in last["note"]
