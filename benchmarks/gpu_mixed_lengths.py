"""Generation on prompts of mixed lengths: fla's norm kernels with and without row chunking.

fla's RMS-norm kernels take NB = cdiv(rows, 2048) as a compile-time constant and autotuning key,
so a prefill piece whose row count is new compiles and benchmarks them again
(refine_tasks/kernels/norms.py). Evaluation prompts have every length, so each batch brings new
row counts. This times `greedy_generate` (the product's evaluation path) on batches of prompts of
fresh random lengths, on the kernel cache the product ships (benchmarks/kernel_cache/), two
batches with the norm rows unchunked and two chunked, alternating, in one process:

    python benchmarks/gpu_mixed_lengths.py --out $OUT              # on the device machine
    python benchmarks/gpu_mixed_lengths.py --out /tmp/x --dry-run  # logic check on a CPU

Figures: `mixed_len_generate_s_unchunked`, `mixed_len_generate_s_chunked` (the later batch of
each mode, seconds) and `mixed_len_generate_unchunked_over_chunked`; the outputs of both modes
on one batch must be the same tokens (printed, and the run fails otherwise).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.record import FigureLog  # noqa: E402
from refine_tasks.evaluate.generate import GenerationRequest, greedy_generate  # noqa: E402
from refine_tasks.kernels import norms  # noqa: E402
from refine_tasks.models import build_model  # noqa: E402

COMMAND = "python benchmarks/gpu_mixed_lengths.py"


def batch(rng: random.Random, n: int, low: int, high: int, vocab: int, new: int) -> list[GenerationRequest]:
    return [
        GenerationRequest([rng.randrange(vocab) for _ in range(rng.randint(low, high))], new)
        for _ in range(n)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=8)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        device, dtype, preset, vocab, low, high = "cpu", torch.float32, "tiny", 512, 20, 60
    else:
        from refine_tasks.config import PipelineConfig
        from refine_tasks.pipeline.kernel_cache import activate

        cache = activate(PipelineConfig())
        print(f"kernel cache: {cache.root if cache else None}", flush=True)
        device, dtype, preset, vocab, low, high = "cuda", torch.bfloat16, "small", 32000, 3500, 4200
    card = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    log = FigureLog(card, COMMAND, args.out / "results.jsonl", args.out / "RESULTS.md", [])
    torch.manual_seed(0)
    model = build_model(preset, vocab).to(device=device, dtype=dtype).eval()
    rng = random.Random(0)
    chunked = norms.row_chunks

    def run(mode: str, requests: list[GenerationRequest]) -> tuple[float, list[list[int]]]:
        norms.row_chunks = chunked if mode == "chunked" else (lambda rows, unit: [rows])
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = greedy_generate(model, requests, None, batch_size=len(requests))
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        print(f"{mode}: {len(requests)} prompts of {sorted(len(r.prompt) for r in requests)} tokens, "
              f"{seconds:.1f} s", flush=True)  # fmt: skip
        return seconds, out

    times: dict[str, list[float]] = {"unchunked": [], "chunked": []}
    for mode in ("unchunked", "chunked", "unchunked", "chunked"):
        times[mode].append(run(mode, batch(rng, args.prompts, low, high, vocab, args.new_tokens))[0])
    same = batch(rng, args.prompts, low, high, vocab, args.new_tokens)
    outputs = {mode: run(mode, same)[1] for mode in ("chunked", "unchunked")}
    agree = outputs["chunked"] == outputs["unchunked"]
    summary = {"times": times, "outputs_agree": agree}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(json.dumps(summary), flush=True)
    if not agree:
        raise SystemExit("chunked and unchunked norms generated different tokens")
    note = f"{args.prompts} prompts of {low}-{high} tokens, {args.new_tokens} new tokens, {preset}, fresh lengths"
    log.emit("mixed_len_generate_s_unchunked", times["unchunked"][-1], "s", note)
    log.emit("mixed_len_generate_s_chunked", times["chunked"][-1], "s", note)
    log.emit(
        "mixed_len_generate_unchunked_over_chunked", times["unchunked"][-1] / times["chunked"][-1], "x", note
    )


if __name__ == "__main__":
    main()
