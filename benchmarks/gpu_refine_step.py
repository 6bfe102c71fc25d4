"""One ReFINE step against one NTP step on the same batch, on one GPU: branched vs naive, side by side.

Shapes: `small` and `paper-1.3b` DeltaNet, one sequence of 16,384 tokens, 8 positions,
5-token rollouts (the paper's mid-training settings). The model runs as `refine train` runs it
on a GPU: float32 weights under bf16 autocast. Timed, each after warm-up (Triton autotuning,
CUDA-graph capture), median of --reps, gradients only (the optimizer step is the same for all):
  ntp                    `ntp_backward` (the NTP-SFT step, refine.coef = 0)
  branched               entropy pass -> positions -> `refine_backward` mode branched
  fused                  entropy pass -> positions -> `refine_backward` mode fused (no separate
                         capturing prefill; the rollouts' continuation replayed from CUDA graphs)
  fused-eager            fused with refine.graph_branches off (the continuation launched op by op)
  *_precomputed          the same with cached positions (positions.policy=precomputed: no
                         entropy pass in the step)
  naive                  entropy pass -> positions -> `refine_backward` mode naive (the
                         reference way: per-prefix prefill, reward re-run, per-rollout losses)
First, unless --check-tokens 0: forward_branched against each prefix + branch run alone at the
`small` shape in bf16 (`branched_vs_naive_rel_err_*`). Mind the Triton cache: kernels of a shape
or variant not in it (the small shape; the chain's varlen call with 2V value columns) compile
and autotune cold on first use, minutes each set.
Every rep of every mode uses the same positions (the entropy pass still runs in each online
rep; its draw is salted with step 0), so no mode meets new segment or prefix lengths in its
timed reps that its warm-up did not: a fair comparison of steady-state costs.
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
from refine_tasks.kernels.state_chain import triton as state_chain  # noqa: E402
from refine_tasks.models import build_model, forward_branched_naive  # noqa: E402
from refine_tasks.models.continuation import ContinuationGraphs  # noqa: E402
from refine_tasks.rl.positions import sequence_entropy  # noqa: E402
from refine_tasks.train.positions import PositionSelector  # noqa: E402
from refine_tasks.train.starting_model import mixed_precision  # noqa: E402
from refine_tasks.train.step import (  # noqa: E402
    PhaseTimer,
    RolloutBatch,
    StepOptions,
    ntp_backward,
    refine_backward,
)

COMMAND = "python benchmarks/gpu_refine_step.py"
VOCAB = 32000
MODES = ("branched", "fused", "branched_precomputed", "fused_precomputed", "fused-eager_precomputed", "naive")


class StepBench:
    """One shape: a model, a batch, and the timed step variants."""

    def __init__(self, preset: str, tokens: int, args: argparse.Namespace, mixer: str = "deltanet") -> None:
        self.device = torch.device("cpu" if args.dry_run else "cuda")
        self.args = args
        torch.manual_seed(0)
        chain = {"state_chain": args.state_chain} if mixer == "deltanet" else {}
        self.model = build_model(preset, VOCAB, mixer=mixer, **chain).to(self.device)
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, VOCAB, (1, tokens), generator=g).to(self.device)
        self.cfg = RefineConfig(rollout_len=args.rollout_len)
        self.graphs = ContinuationGraphs()  # the fused way's CUDA graphs, as a trainer owns them
        self.timer = PhaseTimer()  # profile_refine_step.py swaps in a timing one
        positions = PositionsConfig(n_chunks=args.positions, margin=args.margin)
        self.selector = PositionSelector(positions, args.rollout_len, seed=0, base_checkpoint="bench")
        self.cached = self.positions()

    def autocast(self):
        return mixed_precision(self.device)  # what `refine train` runs under: bf16 on the GPU

    def positions(self) -> torch.Tensor:
        """The online policy's entropy pass and draw (salted with step 0: the same draw every rep)."""

        def entropy(ids: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                return sequence_entropy(self.model, ids)

        with self.timer.phase("positions"):
            return self.selector.select(self.ids, ["bench-doc"], 0, entropy).positions

    def step(self, mode: str, step: int) -> float:
        """One step's gradients; returns its loss."""
        self.model.zero_grad(set_to_none=True)
        generator = torch.Generator(self.device).manual_seed(step)
        with self.autocast():
            if mode == "ntp":
                return ntp_backward(self.model, self.ids, StepOptions(self.cfg, timer=self.timer)).loss
            way, _, cached = mode.partition("_")
            positions = self.cached if cached else self.positions()
            eager = way.endswith("-eager")  # fused-eager: the continuation launched op by op
            cfg = self.cfg.model_copy(update={"mode": way.removesuffix("-eager")})
            opts = StepOptions(cfg, timer=self.timer, graphs=None if eager else self.graphs)
            return refine_backward(self.model, RolloutBatch(self.ids, positions, generator), opts).loss

    def grads(self, mode: str, step: int) -> tuple[float, list[torch.Tensor]]:
        """One step's loss and a copy of every parameter's gradient, in host memory (at 1.3B three
        copies on the device beside a step's activations would not fit an 80 GB card)."""
        loss = self.step(mode, step)
        return loss, [
            p.grad.detach().to("cpu", copy=True) for p in self.model.parameters() if p.grad is not None
        ]

    def seconds(self, mode: str, reps: int, warmup: int) -> float:
        """Median wall seconds of `reps` timed steps after `warmup` untimed ones, device-synchronised."""
        return self.paired((mode,), reps, warmup)[0]

    def paired(self, modes: tuple[str, ...], reps: int, warmup: int) -> list[float]:
        """Median wall seconds of each mode, their timed steps interleaved (a, b, a, b, ...): a
        ratio of two modes then compares steps taken under the same host conditions (the host's
        speed drifts between runs: the same NTP step has measured 58 to 84 ms at the small shape)."""
        return [statistics.median(times) for times in self.paired_times(modes, reps, warmup)]

    def paired_times(self, modes: tuple[str, ...], reps: int, warmup: int) -> list[list[float]]:
        """Every timed step's wall seconds, per mode, interleaved as in `paired`."""
        sync: Callable[[], None] = (lambda: None) if self.args.dry_run else torch.cuda.synchronize
        out: list[list[float]] = [[] for _ in modes]
        for rep in range(warmup + reps):
            for times, mode in zip(out, modes, strict=True):
                sync()
                began = time.perf_counter()
                self.step(mode, rep)
                sync()
                if rep >= warmup:
                    times.append(time.perf_counter() - began)
        return out


def branched_errors(preset: str, tokens: int, device: torch.device) -> dict[str, float]:
    """forward_branched against each prefix + branch run alone, bf16 weights on fla's kernels (on
    the CPU: float64 and torch): relative errors of the outputs and of the parameter gradients of
    a loss weighing every output at random."""
    dtype = torch.float64 if device.type == "cpu" else torch.bfloat16
    torch.manual_seed(3)
    model = build_model(preset, VOCAB).to(device, dtype)
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, VOCAB, (1, tokens), generator=g).to(device)
    positions = (torch.randperm(tokens - 8, generator=g)[:8] + 1).view(1, 8).to(device)
    branch = torch.randint(0, VOCAB, (1, 8, 5), generator=g).to(device)
    params = list(model.parameters())
    errors: dict[str, float] = {}
    runs = [
        model.forward_branched(ids, positions, branch),
        forward_branched_naive(model, ids, positions, branch),
    ]
    weights = [
        torch.randn(t.shape, generator=g).to(device, dtype) for t in (runs[0].logits, runs[0].branch_logits)
    ]
    grads = []
    for out in runs:
        loss = (out.logits.float() * weights[0]).sum() + (out.branch_logits.float() * weights[1]).sum()
        grads.append(torch.autograd.grad(loss, params))
    for name in ("logits", "branch_logits", "branch_hidden"):
        fast, ref = (getattr(out, name).detach().double() for out in runs)
        errors[name] = float((fast - ref).norm() / ref.norm())
    diff = sum(float((a.double() - b.double()).norm() ** 2) for a, b in zip(*grads, strict=True))
    errors["grads"] = (diff / sum(float(b.double().norm() ** 2) for b in grads[1])) ** 0.5
    return errors


def graph_errors(bench: StepBench) -> dict[str, float]:
    """The fused step with its continuation replayed from CUDA graphs against launched op by op:
    same positions, same rollouts (same seed): |loss difference| and the gradients' relative
    error over all parameters, beside that of the eager step run twice (the kernels' own
    run-to-run noise). Two graphed steps run first (capture, then a replay)."""
    for step in range(2):
        bench.step("fused_precomputed", step)
    graphed_loss, graphed = bench.grads("fused_precomputed", 7)
    eager_loss, eager = bench.grads("fused-eager_precomputed", 7)
    _, rerun = bench.grads("fused-eager_precomputed", 7)

    return {
        "loss_abs_diff": abs(graphed_loss - eager_loss),
        "grads_rel_err": grads_rel_err(graphed, eager),
        "eager_rerun_grads_rel_err": grads_rel_err(rerun, eager),
    }


def chain_errors(bench: StepBench) -> dict[str, float]:
    """The fused step with the chained delta rule's chain and correction on our Triton kernels
    against their torch path (the model config's state_chain): same positions, same rollouts; |loss
    difference| and the gradients' relative error, beside the kernels' step run twice. Nothing for
    key dims the kernels do not take (both runs would be the torch path)."""
    if bench.model.model.layers[0].attn.head_k > state_chain.MAX_KEY_DIM:
        return {}
    layers = [layer.attn for layer in bench.model.model.layers]
    chosen = layers[0].state_chain
    runs = {}
    try:
        for name, path in (("kernels", "triton"), ("torch", "torch"), ("rerun", "triton")):
            for attn in layers:
                attn.state_chain = path
            runs[name] = bench.grads("fused_precomputed", 7)
    finally:
        for attn in layers:
            attn.state_chain = chosen
    return {
        "loss_abs_diff": abs(runs["kernels"][0] - runs["torch"][0]),
        "grads_rel_err": grads_rel_err(runs["kernels"][1], runs["torch"][1]),
        "kernels_rerun_grads_rel_err": grads_rel_err(runs["rerun"][1], runs["kernels"][1]),
    }


def grads_rel_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Relative error of gradient list a against b, over all parameters together."""
    diff = sum(float((x.double() - y.double()).norm() ** 2) for x, y in zip(a, b, strict=True))
    return (diff / sum(float(y.double().norm() ** 2) for y in b)) ** 0.5


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The batch and ReFINE settings a StepBench reads (shared with profile_refine_step.py)."""
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--positions", type=int, default=8)
    parser.add_argument("--rollout-len", type=int, default=5)
    parser.add_argument("--margin", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny preset, 512 tokens")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.jsonl / RESULTS.md")
    parser.add_argument("--shapes", default="small,paper-1.3b")
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"ReFINE modes to time after ntp ({', '.join(MODES)})"
    )
    add_batch_arguments(parser)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--naive-reps", type=int, default=1, help="timed repetitions of the slow naive step")
    parser.add_argument("--budget-s", type=float, default=540.0, help="skip what would run past this")
    parser.add_argument(
        "--graph-check", type=int, default=1, help="1: check graphed vs eager continuation first"
    )
    parser.add_argument(
        "--chain-check",
        type=int,
        default=1,
        help="1: check the state-chain kernels vs their torch path first",
    )
    parser.add_argument(
        "--state-chain",
        choices=("auto", "torch", "triton"),
        default="auto",
        help="the DeltaNet config's state_chain: torch times the chain's torch path under its own metric names",
    )
    parser.add_argument(
        "--check-tokens", type=int, default=2048, help="sequence length of the exactness check (0: skip it)"
    )
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

    check = "tiny" if args.dry_run else "small"
    errors = {}
    if args.check_tokens > 0:
        errors = branched_errors(
            check, 256 if args.dry_run else args.check_tokens, torch.device(device_name(args))
        )
    for name, err in errors.items():
        emit(
            f"branched_vs_naive_rel_err_{name}_{check}",
            err,
            "ratio",
            f"{check} deltanet, forward_branched vs each prefix + branch alone, 8 positions x 5 tokens, "
            f"{'float64 torch' if args.dry_run else 'bf16 fla'}; grads: all parameters together",
        )
    for preset in shapes:
        bench = StepBench(preset, tokens, args)
        note = (
            f"{preset} deltanet, 1x{tokens} tokens, {args.positions} positions x {args.rollout_len}-token rollouts, "
            f"fp32 weights + {'no' if args.dry_run else 'bf16'} autocast, gradients only, median of timed reps"
        )
        chain = "" if args.dry_run else args.state_chain
        if chain == "torch":  # the chain's torch path: its own metric names, beside the kernels' figures
            note += "; state chain and correction on torch ops (--state-chain torch)"
            preset_tag = f"{preset}_torchchain"
        else:
            preset_tag = preset
        checks = [  # (run it, metric prefix, what it compares)
            (
                args.chain_check and chain != "torch",  # once, in the kernels' own run
                chain_errors,
                "chain_kernels_vs_torch",
                "state chain and correction on our Triton kernels vs torch ops",
            ),
            (
                args.graph_check,
                graph_errors,
                "fused_graph_vs_eager",
                "continuation from CUDA graphs vs eager, same rollouts",
            ),
        ]
        for wanted, errors_of, prefix, what in checks:
            for name, err in (errors_of(bench) if wanted else {}).items():
                unit = "ratio" if "rel" in name else "nats"
                emit(f"{prefix}_{name}_{preset}", err, unit, f"{note}; fused step, {what}")
        for mode in ("ntp", *args.modes.split(",")):
            if time.time() - started > args.budget_s:
                print(f"skipped {mode} at {preset}: past --budget-s {args.budget_s:.0f}", flush=True)
                continue
            if not args.dry_run:
                torch.cuda.reset_peak_memory_stats()
            slow = mode == "naive"
            reps, warmup = (args.naive_reps, 1) if slow else (args.reps, args.warmup)
            if mode == "ntp":  # alone: its peak memory; its time in each pair below
                emit(f"ntp_step_ms_{preset}", bench.seconds(mode, reps, warmup) * 1e3, "ms", note)
                if not args.dry_run:
                    emit(f"ntp_peak_gib_{preset}", torch.cuda.max_memory_allocated() / 2**30, "GiB", note)
                continue
            ntp_times, times = bench.paired_times(("ntp", mode), reps, warmup)
            ntp, seconds = statistics.median(ntp_times), statistics.median(times)
            if not args.dry_run:
                emit(f"{mode}_peak_gib_{preset_tag}", torch.cuda.max_memory_allocated() / 2**30, "GiB", note)
            paired = f"{note}; {mode} and NTP steps interleaved"
            emit(f"ntp_paired_{mode}_step_ms_{preset_tag}", ntp * 1e3, "ms", paired)
            emit(f"{mode}_step_ms_{preset_tag}", seconds * 1e3, "ms", paired)
            emit(f"refine_over_ntp_{mode}_{preset_tag}", seconds / ntp, "ratio", paired)
            # the fastest of each: a host-bound step's time only grows with interference, so the
            # minimum estimates its own cost (shown beside the medians, never instead of them)
            fastest = f"{paired}; fastest of {reps} steps each"
            emit(f"refine_over_ntp_{mode}_{preset_tag}_min", min(times) / min(ntp_times), "ratio", fastest)
        del bench
        if not args.dry_run:
            torch.cuda.empty_cache()
    return 0


def device_name(args: argparse.Namespace) -> str:
    return "cpu" if args.dry_run else "cuda"


if __name__ == "__main__":
    sys.exit(main())
