"""One ReFINE step against one NTP step on the same batch, on one GPU: branched vs naive, side by side.

Shapes: `small` and `paper-1.3b` DeltaNet, one sequence of 16,384 tokens, 8 positions,
5-token rollouts (the paper's mid-training settings). The model runs as `refine train` runs it
on a GPU: float32 weights under bf16 autocast. Timed, each after warm-up (Triton autotuning,
CUDA-graph capture), median of --reps, gradients only (the optimizer step is the same for all):
  ntp                    `ntp_backward` (the NTP-SFT step, refine.coef = 0)
  branched               entropy pass -> positions -> `refine_backward` mode branched
  fused                  entropy pass -> positions -> `refine_backward` mode fused (no separate
                         capturing prefill)
  *_precomputed          the same with cached positions (positions.policy=precomputed: no
                         entropy pass in the step)
  naive                  entropy pass -> positions -> `refine_backward` mode naive (the
                         reference way: per-prefix prefill, reward re-run, per-rollout losses)
Records per shape `refine_over_ntp_<mode>_<shape>` (goal: branched <= 1.5), the step times in ms
and peak memory, as JSON lines in OUT/results.jsonl (import with
`python benchmarks/record.py --import OUT/results.jsonl`).

    python benchmarks/gpu_refine_step.py --out $OUT               # on the device machine
    python benchmarks/gpu_refine_step.py --out /tmp/x --dry-run   # CPU, tiny shapes: logic check
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.record import record  # noqa: E402
from refine_tasks.config import PositionsConfig, RefineConfig  # noqa: E402
from refine_tasks.models import build_model  # noqa: E402
from refine_tasks.position_cache import PositionSelector  # noqa: E402
from refine_tasks.positions import sequence_entropy  # noqa: E402
from refine_tasks.refine_step import ntp_backward, refine_backward  # noqa: E402
from refine_tasks.starting_model import mixed_precision  # noqa: E402

COMMAND = "python benchmarks/gpu_refine_step.py"
VOCAB = 32000
MODES = ("branched", "fused", "branched_precomputed", "fused_precomputed", "naive")


class StepBench:
    """One shape: a model, a batch, and the timed step variants."""

    def __init__(self, preset: str, tokens: int, args: argparse.Namespace) -> None:
        self.device = torch.device("cpu" if args.dry_run else "cuda")
        self.args = args
        torch.manual_seed(0)
        self.model = build_model(preset, VOCAB).to(self.device)
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, VOCAB, (1, tokens), generator=g).to(self.device)
        self.cfg = RefineConfig(rollout_len=args.rollout_len)
        positions = PositionsConfig(n_chunks=args.positions, margin=args.margin)
        self.selector = PositionSelector(positions, args.rollout_len, seed=0, base_checkpoint="bench")
        self.cached = self.positions(0)

    def autocast(self):
        return mixed_precision(self.device)  # what `refine train` runs under: bf16 on the GPU

    def positions(self, step: int) -> torch.Tensor:
        def entropy(ids: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                return sequence_entropy(self.model, ids)

        return self.selector.select(self.ids, ["bench-doc"], step, entropy).positions

    def step(self, mode: str, step: int) -> float:
        """One step's gradients; returns its loss."""
        self.model.zero_grad(set_to_none=True)
        generator = torch.Generator(self.device).manual_seed(step)
        with self.autocast():
            if mode == "ntp":
                return ntp_backward(self.model, self.ids).loss
            way, _, cached = mode.partition("_")
            positions = self.cached if cached else self.positions(step)
            cfg = self.cfg.model_copy(update={"mode": way})
            return refine_backward(self.model, self.ids, positions, cfg, generator).loss

    def seconds(self, mode: str, reps: int, warmup: int) -> float:
        """Median wall seconds of `reps` timed steps after `warmup` untimed ones, device-synchronised."""
        sync: Callable[[], None] = (lambda: None) if self.args.dry_run else torch.cuda.synchronize
        out = []
        for rep in range(warmup + reps):
            sync()
            began = time.perf_counter()
            self.step(mode, rep)
            sync()
            if rep >= warmup:
                out.append(time.perf_counter() - began)
        return statistics.median(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.jsonl / RESULTS.md")
    parser.add_argument("--shapes", default="small,paper-1.3b")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--positions", type=int, default=8)
    parser.add_argument("--rollout-len", type=int, default=5)
    parser.add_argument("--margin", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--naive-reps", type=int, default=1, help="timed repetitions of the slow naive step")
    parser.add_argument("--budget-s", type=float, default=540.0, help="skip what would run past this")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny preset, 512 tokens")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    card = "cpu-dry-run" if args.dry_run else torch.cuda.get_device_name()
    shapes = ["tiny"] if args.dry_run else args.shapes.split(",")
    tokens = 512 if args.dry_run else args.tokens

    def emit(metric: str, value: float, unit: str, note: str) -> None:
        record(
            metric,
            value,
            unit,
            card,
            COMMAND,
            note,
            jsonl=args.out / "results.jsonl",
            md=args.out / "RESULTS.md",
        )
        print(f"{metric} = {value:.4g} {unit}  ({note})", flush=True)

    for preset in shapes:
        bench = StepBench(preset, tokens, args)
        note = (
            f"{preset} deltanet, 1x{tokens} tokens, {args.positions} positions x {args.rollout_len}-token rollouts, "
            f"fp32 weights + {'no' if args.dry_run else 'bf16'} autocast, gradients only, median of timed reps"
        )
        ntp = None
        for mode in ("ntp", *MODES):
            if time.time() - started > args.budget_s:
                print(f"skipped {mode} at {preset}: past --budget-s {args.budget_s:.0f}", flush=True)
                continue
            if not args.dry_run:
                torch.cuda.reset_peak_memory_stats()
            slow = mode == "naive"
            seconds = bench.seconds(mode, args.naive_reps if slow else args.reps, 1 if slow else args.warmup)
            emit(f"{mode}_step_ms_{preset}", seconds * 1e3, "ms", note)
            if not args.dry_run:
                emit(f"{mode}_peak_gib_{preset}", torch.cuda.max_memory_allocated() / 2**30, "GiB", note)
            if mode == "ntp":
                ntp = seconds
            else:
                emit(f"refine_over_ntp_{mode}_{preset}", seconds / ntp, "ratio", note)
        del bench
        if not args.dry_run:
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
