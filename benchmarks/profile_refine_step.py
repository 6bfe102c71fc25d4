"""Where the time of one ReFINE step goes, on one GPU: per-phase wall times and the top ops.

For each mode (the same batch, model and settings as `gpu_refine_step.py`): warm-up steps, then
one step under a timing `PhaseTimer` (the device synchronised around each phase:
positions, prefill, rollouts, rewards, loss_forward, backward), then one step under
torch.profiler, whose top ops by device time and by host time are printed. Modes in
--no-profile-modes (default: naive, whose trace would be huge) get the phase times only.
Phase times are recorded as `<mode>_phase_<phase>_ms_<shape>` in OUT/results.jsonl; the
profiler tables go to OUT/profile.txt.

    python benchmarks/profile_refine_step.py --out $OUT --shape paper-1.3b   # device machine
    python benchmarks/profile_refine_step.py --out /tmp/x --dry-run          # CPU logic check
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_refine_step import StepBench, add_batch_arguments  # noqa: E402
from benchmarks.record import record  # noqa: E402
from refine_tasks.train.step import PhaseTimer  # noqa: E402

COMMAND = "python benchmarks/profile_refine_step.py"


def _sync(dry_run: bool) -> None:
    if not dry_run:
        torch.cuda.synchronize()


def phase_breakdown(bench: StepBench, mode: str, step: int) -> tuple[dict[str, float], float]:
    """({phase: seconds}, whole step seconds) of one step with the device synchronised between phases."""
    _sync(bench.args.dry_run)
    began = time.perf_counter()
    bench.timer = PhaseTimer(timing=True)
    try:
        bench.step(mode, step)
    finally:
        phases, bench.timer = bench.timer.seconds, PhaseTimer()
    _sync(bench.args.dry_run)
    return dict(phases), time.perf_counter() - began


def top_ops(bench: StepBench, mode: str, step: int, rows: int, trace: Path | None = None) -> str:
    """The profiler's tables of one step: top ops by self device time and by total host time;
    with `trace`, also its Chrome trace there, Python frames included (where host time goes)."""
    activities = [ProfilerActivity.CPU] + ([] if bench.args.dry_run else [ProfilerActivity.CUDA])
    with profile(activities=activities, with_stack=trace is not None) as prof:
        bench.step(mode, step)
        _sync(bench.args.dry_run)
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    averages = prof.key_averages()
    tables = []
    if not bench.args.dry_run:
        tables.append(f"-- {mode}: top {rows} by self device time\n")
        tables.append(
            averages.table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=60)
        )
    tables.append(f"\n-- {mode}: top {rows} by total host time\n")
    tables.append(averages.table(sort_by="cpu_time_total", row_limit=rows, max_name_column_width=60))
    return "".join(tables)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for results.jsonl, RESULTS.md, profile.txt"
    )
    parser.add_argument("--shape", default="paper-1.3b")
    parser.add_argument("--modes", default="ntp,branched,fused")
    parser.add_argument("--no-profile-modes", default="naive", help="modes timed by phase only")
    add_batch_arguments(parser)
    parser.add_argument("--top", type=int, default=20, help="rows of each profiler table")
    parser.add_argument(
        "--trace", action="store_true", help="also write OUT/trace_<shape>_<mode>.json (with Python frames)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    card = "cpu-dry-run" if args.dry_run else torch.cuda.get_device_name()
    preset = "tiny" if args.dry_run else args.shape
    tokens = 512 if args.dry_run else args.tokens
    bench = StepBench(preset, tokens, args)
    note = (
        f"{preset} deltanet, 1x{tokens} tokens, {args.positions} positions x {args.rollout_len}-token rollouts, "
        f"fp32 weights + {'no' if args.dry_run else 'bf16'} autocast; device synchronised between phases"
    )
    summary = []
    with (args.out / "profile.txt").open("a", encoding="utf-8") as report:
        for mode in args.modes.split(","):
            for step in range(args.warmup):
                bench.step(mode, step)
            phases, total = phase_breakdown(bench, mode, args.warmup)
            for name, seconds in {**phases, "total": total}.items():
                metric = f"{mode}_phase_{name}_ms_{preset}"
                record(
                    metric,
                    seconds * 1e3,
                    "ms",
                    card,
                    COMMAND,
                    note,
                    jsonl=args.out / "results.jsonl",
                    md=args.out / "RESULTS.md",
                )
            summary.append((mode, phases, total))
            if mode not in args.no_profile_modes.split(","):
                trace = args.out / f"trace_{preset}_{mode}.json" if args.trace else None
                text = top_ops(bench, mode, args.warmup + 1, args.top, trace)
                report.write(f"\n==== {preset} {mode}\n{text}\n")
                print(text, flush=True)
    print(f"\nphases of one step ({preset}, ms, device synchronised between phases)")
    for mode, phases, total in summary:
        parts = "  ".join(f"{name} {seconds * 1e3:.1f}" for name, seconds in phases.items())
        print(f"{mode:>10}: total {total * 1e3:.1f} | {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
