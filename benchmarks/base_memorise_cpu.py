"""Does a base that reads its generated retrieval documents many times learn to retrieve less than one
that reads each about once? A check small enough for a CPU.

The H200 base of flow run a62998b7 made ~15 passes over a 4.2M-token corpus (one generated document
per address), ended at loss 0.24 and scored 0 on NIAH: a record's value can be learnt by heart from
its subject instead of read back from where it was stated. Two tiny DeltaNets are trained from
scratch with the same seed, steps and tokens, each batch half windows of State of the Union
addresses and half windows of generated documents (the working tree's generator):

  repeated: --ratio-repeated documents per address (few documents, many passes over them);
  fresh:    --ratio-fresh documents per address (about one pass).

Both are scored on generated documents of addresses neither saw (--held-out of them) and on NIAH:

  retrieval gain: mean log-probability of a record's value tokens where it is used, minus where it
                  is stated (nats/token): the value is random, so only reading it back from the
                  statement raises the first above the second (the recall probe's gain,
                  refine_tasks.train.recall_probe.probe_documents);
  margin, exact:  as in benchmarks/base_recall_cpu.py (NIAH single_1/2 at --length tokens).

    python benchmarks/base_memorise_cpu.py [--steps 1000]

Records `cpu_tiny_retrieval_gain_{repeated,fresh}`, `cpu_tiny_niah_margin_{repeated,fresh}` and
`cpu_tiny_passes_{repeated,fresh}` (one process, side by side) in benchmarks/results.jsonl and
RESULTS.md. A tiny model at a few million tokens is far from the `small` base on the GPU: this
tests the direction of the change, not the GPU base's scores.
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
    study_texts,
    train_tiny,
    windows,
)
from refine_tasks.corpus import retrieval_docs  # noqa: E402
from refine_tasks.train.recall_probe import probe_documents  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_training_options(parser, steps=1000)
    parser.add_argument("--chars", type=int, default=1500, help="generated document length before records")
    parser.add_argument("--facts", type=int, default=8)
    parser.add_argument("--ratio-repeated", type=float, default=1.0)
    parser.add_argument("--ratio-fresh", type=float, default=20.0)
    parser.add_argument(
        "--held-out", type=int, default=40, help="generated documents scored (unseen addresses)"
    )
    add_study_options(parser)
    args = parser.parse_args(argv)
    natural, unseen, tokenizer = study_texts(args.addresses, 10)
    nat = windows(natural, tokenizer, args.seq_len)
    held_out = generated_texts(retrieval_docs, unseen, args.held_out / len(unseen), args.chars, args.facts)
    results = {}
    for arm, ratio in (("repeated", args.ratio_repeated), ("fresh", args.ratio_fresh)):
        generated = generated_texts(retrieval_docs, natural, ratio, args.chars, args.facts)
        gen = windows(generated, tokenizer, args.seq_len)
        passes = args.steps * (args.batch // 2) / len(gen)
        print(
            f"[{arm}] {len(generated)} generated documents, {len(gen)} windows, {passes:.1f} passes",
            flush=True,
        )
        model = train_tiny(arm, nat, gen, args, len(tokenizer))
        probe = probe_documents(model, tokenizer, held_out, args.seq_len)
        gain = probe["gain"]
        print(f"[{arm}] retrieval gain {gain:+.4f} nats/token over {probe['uses']} uses", flush=True)
        margin, _ = score_niah(arm, model, tokenizer, args)
        results[arm] = (passes, gain, margin)
    if args.no_record:
        return
    log = cpu_figures(f"python benchmarks/base_memorise_cpu.py --steps {args.steps}")
    note = (
        f"tiny DeltaNet {args.hidden}x{args.layers}, {args.steps} steps of {args.batch}x{args.seq_len} (half "
        f"generated: {args.ratio_repeated:g} vs {args.ratio_fresh:g} documents per address), gain on "
        f"{len(held_out)} generated documents of unseen addresses, NIAH single_1/2 at {args.length}"
    )
    for arm, (passes, gain, margin) in results.items():
        log.emit(f"cpu_tiny_passes_{arm}", passes, "passes", note)
        log.emit(f"cpu_tiny_retrieval_gain_{arm}", gain, "nats/token", note)
        log.emit(f"cpu_tiny_niah_margin_{arm}", margin, "nats/token", note)


if __name__ == "__main__":
    main()
