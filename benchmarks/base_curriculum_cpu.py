"""Does a short-sequence start teach a base model to retrieve? A check small enough for a CPU.

Two tiny DeltaNets are trained from scratch with the same seed, steps, tokens and learning-rate
schedule, each batch half windows of State of the Union addresses and half windows of generated
retrieval documents (refine_tasks.corpus.retrieval_docs):

  flat:       every step at --seq-len tokens, --batch windows;
  curriculum: the first --short-share of the steps at --short-len tokens, with --batch x
              seq-len / short-len windows (the same tokens a step) and generated documents short
              enough that each record's statement and its uses fall in one short window; then as
              flat.

Both are then scored as benchmarks/base_recall_cpu.py scores its arms: the recall probe
(refine_tasks.train.recall_probe, generated documents from addresses neither arm read) and RULER's
NIAH single_1/2 at --length tokens (the answer's log-prob margin over another 7-digit value, and
greedy exact match). A study at a few million tokens on a 2-core CPU (issue 17's base scored 0 on
every NIAH cell on the H200; a study of MQAR found our DeltaNet learns recall at short lengths and
carries it to long ones, but stays at chance when started at long lengths with a large vocabulary):

    python benchmarks/base_curriculum_cpu.py [--steps 400]

Records `cpu_tiny_curriculum_{niah_margin,niah_exact,recall_use_exact}_{flat,curriculum}` (one
process, side by side) in benchmarks/results.jsonl and RESULTS.md.

2026-12-04, 800 steps (2 CPU cores, 26 min): neither arm retrieves. Recall probe 0 of 129 used
values in both; NIAH exact 0 in both; margins +0.023 (flat) and -0.004 (curriculum) nats/token;
last losses about 1.9 in both. At this scale a short start alone does not begin retrieval.
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
    score_niah,
    short_paragraphs,
    study_texts,
    train_phases,
    windows,
)
from refine_tasks.corpus import retrieval_docs  # noqa: E402
from refine_tasks.train.recall_probe import recall_probe  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_training_options(parser, steps=400)
    parser.add_argument("--short-len", type=int, default=256)
    parser.add_argument("--short-share", type=float, default=0.5, help="share of the steps at --short-len")
    parser.add_argument("--chars", type=int, default=3500, help="generated document length (long windows)")
    parser.add_argument("--short-chars", type=int, default=400, help="the same in the short phase")
    parser.add_argument("--ratio", type=float, default=3.0, help="generated documents per address")
    parser.add_argument("--facts", type=int, default=16)
    parser.add_argument("--short-facts", type=int, default=4)
    add_study_options(parser)
    args = parser.parse_args(argv)
    if args.seq_len % args.short_len:
        parser.error(f"--seq-len {args.seq_len} is no multiple of --short-len {args.short_len}")
    natural, unseen, tokenizer = study_texts(args.addresses, 16)
    long_gen = generated_texts(retrieval_docs, natural, args.ratio, args.chars, args.facts)
    # short paragraphs, so that a generated document of --short-chars holds several of them
    small = [short_paragraphs(t, most=args.short_chars // 4) for t in natural]
    short_gen = generated_texts(retrieval_docs, small, args.ratio, args.short_chars, args.short_facts)
    nat_long, gen_long = (
        windows(natural, tokenizer, args.seq_len),
        windows(long_gen, tokenizer, args.seq_len),
    )
    nat_short = windows(natural, tokenizer, args.short_len)
    gen_short = windows(short_gen, tokenizer, args.short_len)
    wide = args.batch * args.seq_len // args.short_len
    first = round(args.steps * args.short_share)
    arms = {
        "flat": [(nat_long, gen_long, args.batch, args.steps)],
        "curriculum": [
            (nat_short, gen_short, wide, first),
            (nat_long, gen_long, args.batch, args.steps - first),
        ],
    }
    results = {}
    for arm, phases in arms.items():
        model = train_phases(arm, phases, args, len(tokenizer))
        probe = recall_probe(model, tokenizer, unseen, facts=4, chars=args.seq_len // 2, seq_len=args.seq_len)
        print(f"[{arm}] recall probe: {probe}", flush=True)
        results[arm] = (*score_niah(arm, model, tokenizer, args), probe)
    if args.no_record:
        return
    log = cpu_figures(f"python benchmarks/base_curriculum_cpu.py --steps {args.steps}")
    note = (
        f"tiny DeltaNet {args.hidden}x{args.layers}, {args.steps} steps of {args.batch}x{args.seq_len} "
        f"tokens (half generated); curriculum: the first {first} at {wide}x{args.short_len} on "
        f"{args.short_chars}-character generated documents; NIAH single_1/2 at {args.length}"
    )
    for arm, (margin, hit, probe) in results.items():
        log.emit(f"cpu_tiny_curriculum_niah_margin_{arm}", margin, "nats/token", note)
        log.emit(f"cpu_tiny_curriculum_niah_exact_{arm}", hit, "fraction", note)
        if probe["use_exact"] is not None:
            log.emit(
                f"cpu_tiny_curriculum_recall_use_exact_{arm}", probe["use_exact"], "fraction",
                f"{note}; recall probe over {probe['uses']} used values",
            )  # fmt: skip


if __name__ == "__main__":
    main()
