"""Does a tiny base learn more retrieval when each generated document begins its own window? A check
small enough for a CPU.

Packed as a stream (concatenated and cut, as natural text), many of a generated document's uses fall
in a later window than their statement, where the state starts anew: there the value can only be
guessed from its prior (benchmarks/retrieval_windows.py counts 32.6% at the GPU profile). Aligned
(train.synthetic_windows=aligned), every window begins at a document. Two tiny DeltaNets are trained
from scratch with the same seed, steps and tokens a step, each batch half windows of State of the
Union addresses and half windows of short generated documents (--chars characters of paragraphs and
--facts records, ~820 tokens of the 512-piece tokenizer at the defaults), cut each way, and scored by
the recall probe (refine_tasks.train.recall_probe) on documents built from addresses neither read:

  gain       the value tokens' mean log-probability where used minus where stated (nats/token);
  use_exact  the share of uses whose whole value the model predicts.

    python benchmarks/base_windows_cpu.py [--steps 500]

Records `cpu_tiny_windows_{gain,use_exact}_{stream,aligned}` (one process, side by side) in
benchmarks/results.jsonl and RESULTS.md. A tiny model at a few million tokens is far from the
`small` base on the GPU: this tests the direction of the change, not the GPU base's scores.

2026-12-04, 500 steps (2 CPU cores, ~14 min a seed): the gain is 0.074 / 0.073 nats/token streamed
and 0.029 / 0.038 aligned (seeds 0 / 1); no whole value either way. Aligned windows are therefore
not the default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.base_recall_cpu import (  # noqa: E402
    add_study_options,
    add_training_options,
    cpu_figures,
    generated_texts,
    short_paragraphs,
    study_texts,
    train_phases,
    windows,
)
from refine_tasks.corpus import retrieval_docs  # noqa: E402
from refine_tasks.train.recall_probe import recall_probe  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_training_options(parser, steps=500)
    parser.add_argument("--chars", type=int, default=400, help="generated documents' paragraphs, characters")
    parser.add_argument("--facts", type=int, default=4, help="records a generated document")
    parser.add_argument("--ratio", type=float, default=10.0, help="generated documents per address")
    add_study_options(parser)
    args = parser.parse_args(argv)
    natural, unseen, tokenizer = study_texts(args.addresses, 16)
    small = [short_paragraphs(t, most=args.chars // 4) for t in natural]
    generated = generated_texts(retrieval_docs, small, args.ratio, args.chars, args.facts)
    nat = windows(natural, tokenizer, args.seq_len)
    probe_texts = [short_paragraphs(t, most=args.chars // 4) for t in unseen]
    results = {}
    for arm in ("stream", "aligned"):
        gen = windows(generated, tokenizer, args.seq_len, aligned=arm == "aligned")
        print(f"[{arm}] {len(gen)} generated windows of {args.seq_len} tokens", flush=True)
        model = train_phases(arm, [(nat, gen, args.batch, args.steps)], args, len(tokenizer))
        probe = recall_probe(
            model, tokenizer, probe_texts * 4, facts=args.facts, chars=args.chars, seq_len=args.seq_len
        )
        print(f"[{arm}] recall probe: {probe}", flush=True)
        results[arm] = probe
    if args.no_record:
        return
    seed = f" --seed {args.seed}" if args.seed else ""
    log = cpu_figures(f"python benchmarks/base_windows_cpu.py --steps {args.steps}{seed}")
    note = (
        f"tiny DeltaNet {args.hidden}x{args.layers}, {args.steps} steps of {args.batch}x{args.seq_len} "
        f"(half generated: {len(generated)} documents of {args.chars} characters of paragraphs and "
        f"{args.facts} records); recall probe over {results['aligned']['uses']} uses of 64 documents "
        "from unseen addresses"
    )
    for arm, probe in results.items():
        if probe["gain"] is not None:
            log.emit(f"cpu_tiny_windows_gain_{arm}", probe["gain"], "nats/token", note)
        if probe["use_exact"] is not None:
            log.emit(f"cpu_tiny_windows_use_exact_{arm}", probe["use_exact"], "fraction", note)


if __name__ == "__main__":
    main()
