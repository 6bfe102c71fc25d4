"""How many of the base's record uses share a training sequence with their statement? Windows of the
GPU profile's generated retrieval documents, packed `stream` (concatenated and cut) and `aligned`
(train.synthetic_windows: every generated document begins a window).

A use whose statement lies in an earlier window cannot be retrieved: the fast-weight state starts
anew with each sequence, so the model can only learn the value's prior there. The script ingests the
GPU profile's corpus (params-gpu-small.yaml: its tokenizer, retrieval_chars, retrieval_facts,
retrieval_ratio and midtrain_share) for the first --addresses State of the Union addresses into a
temporary folder with the product's `ingest`, builds the base's LongDocumentLoader both ways at
train.seq_len, and for every window finds the record values it holds (the generator's own sentence
patterns, refine_tasks.train.recall_probe.value_spans, matched to token offsets). No model runs.

    python benchmarks/retrieval_windows.py [--addresses 8]

Records `retrieval_uses_with_statement_{stream,aligned}` (of the uses read in an epoch's windows,
the share whose statement is in the same window), `retrieval_uses_covered_{stream,aligned}` (the
share of all the documents' uses read with their statement at least once) and
`retrieval_windows_per_document_{stream,aligned}` in benchmarks/results.jsonl and RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.record import FigureLog  # noqa: E402
from refine_tasks.config import load_config  # noqa: E402
from refine_tasks.corpus import shard_paths  # noqa: E402
from refine_tasks.corpus.clean import SYNTHETIC_PREFIX  # noqa: E402
from refine_tasks.corpus.ingestion import ingest  # noqa: E402
from refine_tasks.corpus.loader import LongDocumentLoader  # noqa: E402
from refine_tasks.corpus.shards import read_shard  # noqa: E402
from refine_tasks.corpus.tokenizer import load_tokenizer  # noqa: E402
from refine_tasks.train.recall_probe import value_spans  # noqa: E402


def record_tokens(text: str, tokenizer) -> list[tuple[int, int]]:
    """(token of the value's first piece where it is used, the same where its record was stated) for
    every use in a generated document (linked to the statement of the same value before it)."""
    offsets = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
    first = {}
    for t, (a, b) in enumerate(offsets):
        for c in range(a, b):
            first.setdefault(c, t)
    out, stated = [], {}
    for span in value_spans(text):
        token = next((first[c] for c in range(span.start, span.stop) if c in first), None)
        if token is None:
            continue
        value = text[span.start : span.stop]
        if span.kind == "statement":
            stated.setdefault(value, token)
        elif value in stated:
            out.append((token, stated[value]))
    return out


def window_counts(loader: LongDocumentLoader, uses: dict[int, list[tuple[int, int]]]) -> dict:
    """Over the loader's generated windows: uses read (a window holds the use's token; a document's
    head that ends one window and begins the next is read twice), those whose statement is in the
    same window, and the distinct uses read so at least once."""
    read = together = windows = 0
    covered = set()
    for seq in loader.sequences:
        if not any(p.doc in uses for p in seq):
            continue
        windows += 1
        for piece in seq:
            for k, (use, statement) in enumerate(uses.get(piece.doc, [])):
                if piece.start <= use < piece.stop:
                    read += 1
                    if piece.start <= statement:
                        together += 1
                        covered.add((piece.doc, k))
    return {"read": read, "together": together, "windows": windows, "covered": len(covered)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default=str(ROOT / "params-gpu-small.yaml"))
    parser.add_argument("--addresses", type=int, default=16, help="State of the Union addresses ingested")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="retrieval-windows-"))
    cfg = load_config(
        args.params,
        [f"corpus.limit={args.addresses}", f"paths.data_dir={work}", f"paths.corpus_dir={work / 'corpus'}",
         f"paths.tokenizer_dir={work / 'tokenizer'}", f"paths.catalog={work / 'catalog.duckdb'}"],
    )  # fmt: skip
    tokenizer = load_tokenizer(cfg.tokenizer.path)
    report = ingest(cfg, tokenizer)
    print(f"ingested {report.documents_in} documents in {time.perf_counter() - began:.0f} s", flush=True)
    probe = LongDocumentLoader(cfg.paths.corpus_dir, cfg.train.seq_len, 1, "pack", synthetic=True,
                               midtrain_share=cfg.corpus.midtrain_share)  # fmt: skip
    uses: dict[int, list[tuple[int, int]]] = defaultdict(list)
    tables = [read_shard(p, ["source", "input_ids"]) for p in shard_paths(cfg.paths.corpus_dir)]
    total = 0
    for i, (shard, row, _, _) in enumerate(probe._docs[: probe._reading]):
        if not tables[shard]["source"][row].as_py().startswith(SYNTHETIC_PREFIX):
            continue
        text = tokenizer.decode(tables[shard]["input_ids"][row].as_py(), skip_special_tokens=True)
        uses[i] = record_tokens(text, tokenizer)
        total += len(uses[i])
    counts = {}
    for mode in ("stream", "aligned"):
        loader = LongDocumentLoader(cfg.paths.corpus_dir, cfg.train.seq_len, 1, "pack", synthetic=True,
                                    midtrain_share=cfg.corpus.midtrain_share, synthetic_windows=mode)  # fmt: skip
        counts[mode] = window_counts(loader, uses)
        c = counts[mode]
        print(
            f"[{mode}] {c['windows']} windows of {cfg.train.seq_len} tokens over {len(uses)} generated "
            f"documents: {c['read']} uses read, {c['together']} of them with their statement "
            f"({c['together'] / max(1, c['read']):.3f}); {c['covered']} of the {total} uses read with it "
            "at least once",
            flush=True,
        )
    if args.no_record:
        return
    log = FigureLog("cpu", f"python benchmarks/retrieval_windows.py --addresses {args.addresses}",
                    ROOT / "benchmarks" / "results.jsonl", ROOT / "benchmarks" / "RESULTS.md", [])  # fmt: skip
    note = (
        f"params-gpu-small.yaml's corpus for the first {args.addresses} addresses: {len(uses)} generated "
        f"documents, {total} uses, windows of {cfg.train.seq_len} tokens; no model"
    )
    for mode, c in counts.items():
        log.emit(f"retrieval_uses_with_statement_{mode}", c["together"] / max(1, c["read"]), "fraction", note)
        log.emit(f"retrieval_uses_covered_{mode}", c["covered"] / max(1, total), "fraction", note)
        log.emit(f"retrieval_windows_per_document_{mode}", c["windows"] / max(1, len(uses)), "windows", note)


if __name__ == "__main__":
    main()
