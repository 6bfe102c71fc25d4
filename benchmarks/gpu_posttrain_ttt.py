"""Post-training and test-time training on a GPU (issue 19's benchmarks), `small` preset, 4K prompts:

  ttt_overhead_x           TTT time per sample (ttt.steps inner steps through the fused ReFINE step,
                           the product's default, then greedy generation) over plain greedy
                           generation per sample
  ttt_overhead_naive_x     the same with refine.mode=naive (the reference implementation's step)
  posttrain_step_over_sft  one nested-ReFINE post-training step over one task-SFT step (variant
                           sft), median of several steps after warm-up, side by side in one run

The model is random-init and the prompts are random token ids (the step's cost does not depend on
what the tokens say); nothing is read but the repository. `--dry` runs it on the CPU at tiny sizes.

    python benchmarks/gpu_posttrain_ttt.py --out DIR [--dry]
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

from benchmarks.record import FigureLog  # noqa: E402
from refine_tasks.config import PipelineConfig  # noqa: E402
from refine_tasks.evaluate.generate import GenerationRequest, greedy_generate  # noqa: E402
from refine_tasks.models.presets import build_model  # noqa: E402
from refine_tasks.pipeline.kernel_cache import activate  # noqa: E402
from refine_tasks.train.posttrain import inner_steps, nested_step  # noqa: E402
from refine_tasks.train.starting_model import mixed_precision  # noqa: E402
from refine_tasks.train.trainer import make_optimizer  # noqa: E402
from refine_tasks.train.ttt import TestTimeTrainer  # noqa: E402

VOCAB = 32000


class _Tokens:
    """The generation loop's tokenizer: no token is a newline, so every answer runs its budget."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "x"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def median_time(fn: Callable[[], object], device: torch.device, warmup: int, reps: int, label: str) -> float:
    for _ in range(warmup):
        timed(fn, device)
    times = []
    for r in range(reps):
        times.append(timed(fn, device))
        print(f"  {label} rep {r + 1}/{reps}: {times[-1] * 1e3:.1f} ms", flush=True)
    return statistics.median(times)


def config(args: argparse.Namespace, **sections: dict) -> PipelineConfig:
    base = {
        "seed": 0,
        "train": {"device": args.device, "grad_clip": 1.0},
        "refine": {"rollout_len": args.rollout_len},
        "positions": {"n_chunks": args.n_chunks, "margin": args.rollout_len},
        "evaluate": {"batch_size": args.batch},
        "posttrain": {"batch_size": args.batch, "inner_mini_batch": args.batch},
        "ttt": {"objective": "refine", "steps": args.ttt_steps, "max_prompt_tokens": args.prompt_tokens},
    }
    for name, update in sections.items():
        base[name] = {**base.get(name, {}), **update}
    return PipelineConfig.model_validate(base)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry", action="store_true", help="CPU, tiny preset, short prompts, one rep")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--prompt-tokens", type=int, default=4096)
    parser.add_argument(
        "--answer-tokens", type=int, default=32, help="generated tokens and SFT answer tokens"
    )
    parser.add_argument("--batch", type=int, default=2, help="samples per TTT batch / post-training batch")
    parser.add_argument("--ttt-steps", type=int, default=2)
    parser.add_argument("--rollout-len", type=int, default=16)
    parser.add_argument("--n-chunks", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    if args.dry:
        args.device, args.preset, args.prompt_tokens, args.answer_tokens = "cpu", "tiny", 96, 4
        args.rollout_len, args.n_chunks, args.reps, args.warmup, args.ttt_steps = 4, 2, 2, 0, 1
        args.batch = 2
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda":  # the product's kernel cache (data/cache/kernels), as `refine` uses it
        activate(PipelineConfig())
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows: list[tuple[str, str, str]] = []
    command = "python benchmarks/gpu_posttrain_ttt.py " + " ".join(argv if argv is not None else sys.argv[1:])
    log = FigureLog(card, command, args.out / "results.jsonl", args.out / "RESULTS.md", rows)

    torch.manual_seed(0)
    model = build_model(args.preset, vocab_size=VOCAB).to(device)
    gen = torch.Generator().manual_seed(1)
    prompts = [
        torch.randint(0, VOCAB, (args.prompt_tokens,), generator=gen).tolist() for _ in range(args.batch)
    ]
    answers = [
        torch.randint(0, VOCAB, (args.answer_tokens,), generator=gen).tolist() for _ in range(args.batch)
    ]
    requests = [GenerationRequest(p, args.answer_tokens) for p in prompts]
    amp = lambda: mixed_precision(device)  # noqa: E731
    print(f"{card}: preset {args.preset}, {args.batch} x {args.prompt_tokens}-token prompts", flush=True)

    def generate() -> None:
        model.eval()
        with amp():
            greedy_generate(model, requests, _Tokens(), batch_size=args.batch)

    plain = median_time(generate, device, args.warmup, args.reps, "generation") / args.batch
    for mode, metric in (("fused", "ttt_overhead_x"), ("naive", "ttt_overhead_naive_x")):
        ttt = TestTimeTrainer(model, config(args, refine={"mode": mode, "rollout_len": args.rollout_len}))

        def adapt_and_generate(ttt: TestTimeTrainer = ttt) -> None:
            ttt(prompts)
            generate()

        per_sample = (
            median_time(adapt_and_generate, device, args.warmup, args.reps, f"ttt {mode}") / args.batch
        )
        ttt.restore()
        log.emit(
            metric, per_sample / plain, "x",
            f"TTT {args.ttt_steps} steps ({mode}) + generation {per_sample * 1e3:.1f} ms/sample over "
            f"generation {plain * 1e3:.1f} ms/sample; {args.preset}, {args.prompt_tokens}-token prompts",
        )  # fmt: skip

    batch = list(zip(prompts, answers, strict=True))
    step_s = {}
    for variant in ("sft", "nested-refine"):
        cfg = config(args, posttrain={"variant": variant})
        optimizer = make_optimizer(model, cfg)
        inner = inner_steps(cfg, device)
        model.train()
        salts = iter(range(1, 10**6))

        def step(
            cfg: PipelineConfig = cfg, opt: torch.optim.Optimizer = optimizer, inner=inner, salts=salts
        ) -> None:
            nested_step(model, opt, batch, inner, cfg.train.grad_clip, next(salts), amp)

        step_s[variant] = median_time(step, device, args.warmup, args.reps, f"posttrain {variant}")
    log.emit(
        "posttrain_step_over_sft", step_s["nested-refine"] / step_s["sft"], "x",
        f"nested-refine {step_s['nested-refine'] * 1e3:.1f} ms over sft {step_s['sft'] * 1e3:.1f} ms per step "
        f"({args.batch} examples, {args.prompt_tokens}-token prompts, {args.preset})",
    )  # fmt: skip
    print("\nmetric | value | verdict")
    for name, value, verdict in rows:
        print(f"{name} | {value} | {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
