"""Ingest: source -> clean-up -> dedup -> tokens -> Arrow shards + manifest -> catalog `documents`.

Safe to interrupt: shards and the manifest are renamed into place only when complete, the
manifest and the catalog's rows are written last, and shards they no longer list are deleted
only after both are, so a crash or Ctrl-C at any point leaves the previous complete corpus
readable. Both locks it needs (the corpus folder's and the catalog's writer lock) are taken
before it changes anything, so a command holding either refuses this one with nothing changed. A rerun finds the
shards it already wrote (same name = same contents) and skips their tokenisation.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from transformers import PreTrainedTokenizerFast

from refine_tasks.config import PipelineConfig
from refine_tasks.corpus.clean import Document, clean_documents
from refine_tasks.corpus.retrieval_docs import with_retrieval_documents
from refine_tasks.corpus.shards import (
    MANIFEST,
    SHARD_FORMAT,
    ShardInfo,
    read_shard,
    remove_temporaries,
    shard_info,
    shard_key,
    shard_name,
    token_table,
    write_manifest,
    write_shard,
)
from refine_tasks.corpus.sources import CorpusError, DropLog, read_source
from refine_tasks.corpus.tokenizer import load_tokenizer, tokenizer_id
from refine_tasks.store.catalog import lock_catalog, write_documents, writer_lock

ProgressFn = Callable[[int, int], None]  # (documents, tokens) finished since the last call


@dataclass
class IngestReport:
    corpus_dir: Path
    documents_out: int = 0
    tokens: int = 0
    shards_written: int = 0
    shards_reused: int = 0
    seconds: float = 0.0
    drops: DropLog = field(default_factory=DropLog)

    @property
    def documents_in(self) -> int:
        return self.documents_out + self.drops.total

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def summary_rows(self) -> list[tuple[str, str]]:
        rows = [
            ("corpus", str(self.corpus_dir)),
            ("documents in", f"{self.documents_in:,}"),
            ("documents out", f"{self.documents_out:,}"),
            ("documents dropped", f"{self.drops.total:,}"),
        ]
        rows += [(f"dropped: {reason}", f"{n:,}") for reason, n in sorted(self.drops.counts.items())]
        rows += [
            ("tokens", f"{self.tokens:,}"),
            ("shards written / reused", f"{self.shards_written} / {self.shards_reused}"),
            ("seconds", f"{self.seconds:.2f}"),
            ("tokens/s", f"{self.tokens_per_s:,.0f}"),
        ]
        return rows


def no_documents_message(source: str, report: IngestReport) -> str:
    """Why a source gave no documents: how many were read, the drops by reason, and the first drop
    of the most common reason (what to fix in the files or in corpus.*)."""
    if report.documents_in == 0:
        return f"corpus.source {source}: no documents found; point it at .txt, .jsonl or .parquet files"
    counts = report.drops.counts
    by_reason = ", ".join(f"{reason}: {n:,}" for reason, n in sorted(counts.items()))
    most = min(counts, key=lambda reason: (-counts[reason], reason))
    return (
        f"corpus.source {source}: no documents left of {report.documents_in:,} read (dropped: {by_reason}; "
        f"e.g. {report.drops.examples[most][0]}); nothing was written, the previous corpus is kept"
    )


def corpus_documents(cfg: PipelineConfig, drops: DropLog) -> Iterator[Document]:
    """The cleaned, deduplicated documents of `corpus.source`, at most `corpus.limit` of them, with
    generated retrieval documents mixed in at `corpus.retrieval_ratio` (see retrieval_docs)."""
    c = cfg.corpus
    raw = read_source(c, drops, cache_dir=cfg.paths.data_dir / "cache" / "datasets")
    docs = clean_documents(raw, c, drops)
    docs = itertools.islice(docs, c.limit) if c.limit else docs
    if c.retrieval_ratio > 0:
        docs = with_retrieval_documents(
            docs, c.retrieval_ratio, c.retrieval_chars, c.retrieval_facts, midtrain_share=c.midtrain_share
        )
    return docs


def corpus_texts(cfg: PipelineConfig, drops: DropLog | None = None) -> Iterator[str]:
    """Just the texts of `corpus_documents` (what the tokenizer trains on)."""
    return (doc.text for doc in corpus_documents(cfg, drops if drops is not None else DropLog()))


def encode(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens. One batch call: `tokenizers` spreads it over all cores,
    and the offset-free variant skips work ingest does not need."""
    encodings = tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    return [e.ids for e in encodings]


def _batched(items: Iterable[Document], n: int) -> Iterator[list[Document]]:
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch


def _manifest(
    cfg: PipelineConfig, tokenizer: PreTrainedTokenizerFast, report: IngestReport, shards: list[ShardInfo]
) -> dict[str, Any]:
    # No timestamps: the same inputs give a byte-identical manifest, as DVC expects of an output.
    corpus_hash = hashlib.sha256("".join(s.sha256 for s in shards).encode()).hexdigest()
    return {
        "format": SHARD_FORMAT,
        "source": cfg.corpus.source,
        "corpus": cfg.corpus.model_dump(mode="json"),
        "tokenizer": {
            "id": tokenizer_id(tokenizer),
            "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "special_tokens_added": False,
        },
        "counts": {
            "documents_in": report.documents_in,
            "documents_out": report.documents_out,
            "dropped": dict(sorted(report.drops.counts.items())),
            "tokens": report.tokens,
        },
        "corpus_sha256": corpus_hash,
        "shards": [vars(s) for s in shards],
        "drop_examples": report.drops.examples,
    }


def _documents_table(corpus_dir: Path, shards: list[ShardInfo]) -> pa.Table:
    """The catalog's `documents` rows: (doc_id, source, shard, row, n_tokens) of every shard."""
    parts = []
    for s in shards:
        t = read_shard(corpus_dir / s.file, ["doc_id", "source", "n_tokens"])
        parts.append(
            t.append_column("shard", pa.array([s.file] * t.num_rows, pa.string())).append_column(
                "row", pa.array(range(t.num_rows), pa.int32())
            )
        )
    empty = pa.schema(
        [
            ("doc_id", pa.string()),
            ("source", pa.string()),
            ("n_tokens", pa.int32()),
            ("shard", pa.string()),
            ("row", pa.int32()),
        ]
    )
    return pa.concat_tables(parts) if parts else empty.empty_table()


def ingest(
    cfg: PipelineConfig,
    tokenizer: PreTrainedTokenizerFast | None = None,
    on_progress: ProgressFn | None = None,
) -> IngestReport:
    """Build `paths.corpus_dir` (shards + manifest) from `corpus.source` and fill the catalog. A
    source that leaves no document (empty, or every one dropped) is a CorpusError naming the drops,
    and the previous corpus and catalog rows stay."""
    start = time.perf_counter()
    out = Path(cfg.paths.corpus_dir)
    report = IngestReport(out)
    documents = corpus_documents(cfg, report.drops)  # a source that cannot be read fails here, first
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.paths.tokenizer_dir)
    tok_id = tokenizer_id(tokenizer)
    with (
        writer_lock(out.with_name(out.name + ".lock"), f"corpus directory {out}"),
        lock_catalog(cfg.paths.catalog) as catalog,
    ):
        out.mkdir(parents=True, exist_ok=True)
        remove_temporaries(out)
        shards: list[ShardInfo] = []
        for index, batch in enumerate(_batched(documents, cfg.corpus.shard_docs)):
            key = shard_key(tok_id, [(d.doc_id, d.source) for d in batch])
            path = out / shard_name(index, key)
            if path.exists():
                info = shard_info(path)
                report.shards_reused += 1
            else:
                ids = encode(tokenizer, [d.text for d in batch])
                table = token_table([d.doc_id for d in batch], [d.source for d in batch], ids)
                info = write_shard(path, table, key)
                report.shards_written += 1
            shards.append(info)
            report.documents_out += info.rows
            report.tokens += info.tokens
            if on_progress is not None:
                on_progress(info.rows, info.tokens)
        if not shards:
            raise CorpusError(no_documents_message(cfg.corpus.source, report))
        write_manifest(out, _manifest(cfg, tokenizer, report, shards))
        with catalog.connect() as con:
            write_documents(con, _documents_table(out, shards))
        listed = {s.file for s in shards} | {MANIFEST}
        for stale in out.glob("shard-*.arrow"):
            if stale.name not in listed:
                stale.unlink()
    report.seconds = time.perf_counter() - start
    return report
