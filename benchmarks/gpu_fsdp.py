"""FSDP2 on one GPU: a ReFINE step's time and peak memory sharded (world size 1) against plain, with
and without activation checkpointing, and the longest sequence that fits with it.

Trains with the product's trainers in this process (`MidTrainer` for plain; `train_here` as the
only rank of a one-process group for FSDP2, as torchrun would start it) on a prepared data folder
(tokenizer, corpus with documents of at least the longest length; see --data) and records:

  fsdp1_over_plain_step     median step time, FSDP2 (world size 1) over plain, same settings
  fsdp1_peak_gib_1p3b_16k   peak GPU memory of the FSDP2 run (GiB)
  ac_peak_gib_1p3b_16k      the same with train.activation_checkpointing
  max_seq_len_1p3b_ac       the longest of --lengths whose FSDP2 + activation checkpointing step ran
                            without running out of memory (each tried in increasing order)

    python benchmarks/gpu_fsdp.py --out DIR --data DIR --set model.preset=paper-1.3b

The metric names say 1p3b / 16k: run it with `model.preset=paper-1.3b` and --seq-len 16384 (the
defaults) for the figures the issue asks for; any other settings record under the same names
with the command line beside them. `--probes-only` runs the longest-length search alone.

Measured on the H200, 2026-12-04 (benchmarks/RESULTS.md): FSDP2 at world size 1 takes 1.42x the
plain step (0.872 s over 0.616 s; the plain step replays its rollouts as CUDA graphs, which FSDP2
turns off), at a 67.8 GiB peak; with activation checkpointing 41.8 GiB; 131,072 tokens ran with it
at a 99.2 GiB peak (step 2: 5.8 s). A cold machine's first plain step compiled for 423-542 s; with
the kernel cache of an earlier call carried in .kc/, 7.3 s.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.record import FigureLog  # noqa: E402

SKIP_STEPS = 2  # steps left out of the median: compiling, autotuning, allocator warm-up


def config(args: argparse.Namespace, name: str, seq_len: int, extra: list[str]):
    from refine_tasks.config import load_config

    data = args.data
    settings = [
        f"paths.data_dir={data}",
        f"paths.corpus_dir={data / 'corpus'}",
        f"paths.tokenizer_dir={data / 'tokenizer'}",
        f"paths.catalog={args.work / name / 'refine.duckdb'}",
        f"train.out_dir={args.work / name / 'run'}",
        f"train.seq_len={seq_len}",
        "train.batch_size=1",
        "train.packing=pack",
        f"train.max_steps={args.steps}",
        f"train.checkpoint_every={args.steps}",
        "positions.policy=online",
        *args.extra,
        *extra,
    ]
    return load_config(args.params, settings)


def run(
    args: argparse.Namespace, name: str, seq_len: int, sharded: bool, extra: list[str]
) -> tuple[float, float]:
    """One run: (median step seconds after SKIP_STEPS, peak GiB). Raises torch.OutOfMemoryError."""
    import torch

    from refine_tasks.train.distributed import train_here
    from refine_tasks.train.trainer import MidTrainer

    shutil.rmtree(args.work / name, ignore_errors=True)
    cfg = config(args, name, seq_len, extra)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    steps: list[float] = []
    began = time.perf_counter()
    print(f"[{name}] seq_len {seq_len:,}, {args.steps} steps", flush=True)

    def on_step(line: dict) -> None:  # a line a step: a cold machine's minutes of compiling show up
        steps.append(line["step_s"])
        print(
            f"[{name}] step {len(steps)}: {line['step_s']:.3f} s ({time.perf_counter() - began:.0f} s in)",
            flush=True,
        )

    if sharded:  # the only rank of a one-process group, as `torchrun --nproc_per_node=1` starts it
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(args.port))
        try:
            train_here(cfg, on_step)
        finally:
            for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
                os.environ.pop(key)
    else:
        MidTrainer(cfg).run(on_step)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    shutil.rmtree(args.work / name / "run" / "checkpoints", ignore_errors=True)  # 1.3B: GBs; metrics kept
    kept = steps[SKIP_STEPS:] or steps
    return statistics.median(kept), peak


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="tokenizer/, corpus/ (long documents)")
    parser.add_argument("--params", type=Path, default=Path("params-gpu-small.yaml"))
    parser.add_argument(
        "--work", type=Path, default=None,
        help="the runs' catalogs, metrics and checkpoints (removed after each run) (default: a temporary folder, "
        "not under --out: 2026-12-04, H200, paper-1.3b's checkpoint in --out made device_bg.sh's archive "
        "of it outlast the call)",
    )  # fmt: skip
    parser.add_argument("--seq-len", type=int, default=16384)
    # 2026-12-04, H200: 131,072 ran at a 99.2 GiB peak, so the search goes on past it
    parser.add_argument(
        "--lengths", default="16384,24576,32768,49152,65536,98304,131072,163840,196608,262144"
    )
    parser.add_argument(
        "--probes-only", action="store_true",
        help="the longest-length search alone, without the plain / FSDP2 / activation-checkpointing runs",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--probe-steps", type=int, default=2, help="steps of each longest-length probe")
    parser.add_argument(
        "--budget-s", type=float, default=None,
        help="stop the longest-length search before a probe that would not end in this many seconds "
        "from the start (each probe guessed from the last one's time, scaled by length)",
    )  # fmt: skip
    parser.add_argument("--port", type=int, default=29517)
    parser.add_argument("--set", dest="extra", action="append", default=[], help="overrides, all runs")
    args = parser.parse_args(argv)
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="gpu-fsdp-"))
    began = time.perf_counter()
    import torch  # after argparse: --help stays quick

    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    # The product's kernel cache, as `refine train` uses it (compiled kernels and autotune results kept).
    from refine_tasks.pipeline.kernel_cache import activate

    activate(config(args, "plain", args.seq_len, []))
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str]] = []
    log = FigureLog(card, " ".join(sys.argv), args.out / "results.jsonl", args.out / "RESULTS.md", rows)
    fsdp = ["train.parallel=fsdp"]
    ac = [*fsdp, "train.activation_checkpointing=true"]
    note = f"seq_len {args.seq_len}, median of steps after {SKIP_STEPS}"
    # Each figure as soon as its runs are done: a run cut short by the device call's limit keeps them.
    if not args.probes_only:
        plain_s, _ = run(args, "plain", args.seq_len, False, [])
        fsdp_s, fsdp_peak = run(args, "fsdp", args.seq_len, True, fsdp)
        log.emit(
            "fsdp1_over_plain_step", fsdp_s / plain_s, "x", f"{fsdp_s:.4f} s over {plain_s:.4f} s; {note}"
        )
        log.emit("fsdp1_peak_gib_1p3b_16k", fsdp_peak, "GiB", note)
        _, ac_peak = run(args, "fsdp_ac", args.seq_len, True, ac)
        log.emit("ac_peak_gib_1p3b_16k", ac_peak, "GiB", note)
    # A probe trains probe_steps steps and never validates: one held-out sequence, not the profile's 16
    # (2026-12-04, H200: .gpu_data holds 12 sequences of 32,768 tokens, and the 32K probe stopped on it).
    probe_set = [*ac, "train.val_sequences=1"]
    fits, stopped, last, peak = 0, "every length ran", None, 0.0
    probe = argparse.Namespace(**{**vars(args), "steps": args.probe_steps})
    for length in (int(x) for x in args.lengths.split(",")):
        elapsed = time.perf_counter() - began
        guess = last[1] * length / last[0] if last else 0.0
        if args.budget_s is not None and elapsed + guess > args.budget_s:
            stopped = f"stopped before {length:,} (budget {args.budget_s:.0f} s; a probe ~{guess:.0f} s)"
            break
        print(f"probe {length:,} tokens ({elapsed:.0f} s in)", flush=True)
        t0 = time.perf_counter()
        try:
            _, peak_now = run(probe, f"ac_{length}", length, True, probe_set)
        except torch.OutOfMemoryError:
            stopped = f"out of memory at {length:,}"
            break
        finally:  # an OOM's traceback holds the run's tensors: free them before the next probe
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        fits, last, peak = length, (length, time.perf_counter() - t0), peak_now
    note = (
        f"largest of {args.lengths} that ran ({args.probe_steps} steps each, peak {peak:.1f} GiB); "
        f"0: none; {stopped}"
    )
    log.emit("max_seq_len_1p3b_ac", fits, "tokens", note)


if __name__ == "__main__":
    main()
