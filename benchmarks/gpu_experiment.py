"""Issue 17's GPU run in one command: the lifecycle timed, then the further seeds and the page.

    python benchmarks/gpu_experiment.py --out DIR [--params params-gpu-small.yaml] [--set k=v ...]

1. `refine run -p PARAMS` (tokenizer, corpus, base pretraining, positions, SFT, ReFINE, every
   evaluation, the report), timed: `gpu_lifecycle_wall_s`; the base run's summary gives
   `gpu_pretrain_tokens_per_s` (base pretraining's tokens per second of step time).
2. `refine experiment -p PARAMS --seeds-only`: SFT and ReFINE at lifecycle.seeds from the same
   base, then lifecycle.results_dir/results.md and results.json.
Figures go to DIR/results.jsonl and DIR/RESULTS.md (`python benchmarks/record.py --import` here),
the results page's files and both commands' logs to DIR as well. For DVC to track the run (so that
`dvc repro` afterwards re-runs nothing), make the profile the repository's parameters first:
`refine config -p params-gpu-small.yaml > params.yaml`, then `--params params.yaml`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from record import FigureLog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def refine(args: list[str], log: Path) -> float:
    """Run `refine ARGS` (this checkout's), its output to log; the seconds it took."""
    began = time.perf_counter()
    cmd = [sys.executable, "-c", "from refine_tasks.pipeline.cli import app; app()", *args]
    with log.open("w") as f:
        code = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - began
    if code != 0:
        sys.exit(f"refine {' '.join(args)} exited {code} after {seconds:.0f} s; see {log}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params-gpu-small.yaml"))
    parser.add_argument("--set", dest="extra", action="append", default=[], help="overrides, both commands")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import json

    import torch

    from refine_tasks.config import load_config
    from refine_tasks.pipeline.lifecycle import SUMMARY_FILE, run_dir

    cfg = load_config(args.params, args.extra)
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    overrides = [w for item in args.extra for w in ("--set", item)]
    command = f"python benchmarks/gpu_experiment.py --params {args.params} {' '.join(overrides)}".strip()
    log = FigureLog(card, command, args.out / "results.jsonl", args.out / "RESULTS.md", [])
    seconds = refine(["run", "-p", str(args.params), *overrides], args.out / "lifecycle.log")
    log.emit("gpu_lifecycle_wall_s", seconds, "s", f"refine run -p {args.params}: the whole lifecycle")
    base = json.loads((run_dir(cfg, "base") / SUMMARY_FILE).read_text())
    if "tokens_per_s" in base:
        note = f"base pretraining, {cfg.model.preset} {cfg.model.mixer}, {base.get('steps')} steps"
        log.emit("gpu_pretrain_tokens_per_s", base["tokens_per_s"], "tokens/s", note)
    refine(["experiment", "-p", str(args.params), "--seeds-only", *overrides], args.out / "experiment.log")
    results = Path(cfg.lifecycle.results_dir)
    shutil.copytree(results, args.out / "results", dirs_exist_ok=True)
    print(f"results: {results / 'results.md'} (copied to {args.out / 'results'})", flush=True)


if __name__ == "__main__":
    main()
