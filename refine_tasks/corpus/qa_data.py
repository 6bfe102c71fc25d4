"""QA training data for post-training: Arrow shards + manifest + the catalog's `qa_examples`.

An example is a RULER-QA prompt (the reference's template, built by
`refine_tasks.evaluate.qa`) and its first answer, both as token ids of the model's tokenizer
without special tokens. The answer is tokenised with a leading space (" Frank Lowy"), as it
follows "Answer:" in running text. Shards are written as the corpus's are (`corpus.shards`:
atomic, keyed by their contents), the manifest lists them, and `qa_examples` in the catalog
indexes every example by shard and row.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from refine_tasks.corpus.shards import (
    MANIFEST,
    ShardInfo,
    read_manifest,
    read_shard,
    remove_temporaries,
    shard_name,
    write_manifest,
    write_shard,
)
from refine_tasks.corpus.sources import CorpusError
from refine_tasks.store.catalog import lock_catalog, write_qa_examples, writer_lock

QA_FORMAT = "refine-qa-shard/1"
QA_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("task", pa.string()),
        ("question_index", pa.int32()),
        ("length", pa.int32()),
        ("question", pa.string()),
        ("answers", pa.list_(pa.string())),
        ("prompt_ids", pa.list_(pa.int32())),
        ("answer_ids", pa.list_(pa.int32())),
        ("n_tokens", pa.int32()),
    ]
)


@dataclass(frozen=True)
class QaExample:
    """One training example: prompt_ids [T_p] and answer_ids [T_a] (answers[0]) as token ids."""

    task: str
    question_index: int
    length: int
    question: str
    answers: list[str]
    prompt_ids: list[int]
    answer_ids: list[int]

    @property
    def example_id(self) -> str:
        return f"{self.task}:{self.length}:{self.question_index}"


def _table(examples: list[QaExample]) -> pa.Table:
    rows = [
        {**asdict(e), "example_id": e.example_id, "n_tokens": len(e.prompt_ids) + len(e.answer_ids)}
        for e in examples
    ]
    return pa.Table.from_pylist(rows, schema=QA_SCHEMA)


def _key(tokenizer_id: str, examples: list[QaExample]) -> str:
    h = hashlib.sha256(f"{QA_FORMAT}\n{tokenizer_id}\n".encode())
    for e in examples:
        h.update(f"{e.example_id}\t{len(e.prompt_ids)}\t{e.prompt_ids[:8]}\n".encode())
    return h.hexdigest()


def write_qa_data(
    out_dir: Path,
    catalog: Path,
    examples: list[QaExample],
    *,
    tokenizer_id: str,
    shard_rows: int,
    meta: dict[str, Any],
) -> list[ShardInfo]:
    """Write `examples` as shards of `shard_rows` into out_dir, its manifest (with `meta`), and the
    catalog's `qa_examples` rows; shards of an earlier build that are no longer listed are removed."""
    if not examples:
        raise CorpusError(f"{out_dir}: no QA examples to write (see qa_data.datasets and qa_data.lengths)")
    ids = [e.example_id for e in examples]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise CorpusError(f"{out_dir}: QA example ids repeated: {', '.join(repeated[:5])}")
    with (
        writer_lock(out_dir.with_name(out_dir.name + ".lock"), f"QA data directory {out_dir}"),
        lock_catalog(catalog) as held,
    ):
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_temporaries(out_dir)
        shards, index = [], []
        for n, start in enumerate(range(0, len(examples), shard_rows)):
            part = examples[start : start + shard_rows]
            key = _key(tokenizer_id, part)
            info = write_shard(out_dir / shard_name(n, key), _table(part), key)
            shards.append(info)
            index += [
                {
                    "example_id": e.example_id,
                    "task": e.task,
                    "question_index": e.question_index,
                    "length": e.length,
                    "shard": info.file,
                    "row": row,
                    "n_tokens": len(e.prompt_ids) + len(e.answer_ids),
                }
                for row, e in enumerate(part)
            ]
        manifest = {
            "format": QA_FORMAT,
            "tokenizer": {"id": tokenizer_id, "special_tokens_added": False},
            **meta,
            "examples": len(examples),
            "shards": [vars(s) for s in shards],
        }
        write_manifest(out_dir, manifest)
        with held.connect() as con:
            write_qa_examples(con, pa.Table.from_pylist(index))
        listed = {s.file for s in shards} | {MANIFEST}
        for stale in out_dir.glob("shard-*.arrow"):
            if stale.name not in listed:
                stale.unlink()
    return shards


def read_qa_data(out_dir: Path) -> list[QaExample]:
    """Every example of the QA data in out_dir, in manifest order."""
    manifest = read_manifest(out_dir)
    if manifest.get("format") != QA_FORMAT:
        raise CorpusError(
            f"{Path(out_dir) / MANIFEST}: not QA data (format {manifest.get('format')!r}); run `refine stage qa_data`"
        )
    examples = []
    for shard in manifest["shards"]:
        for row in read_shard(Path(out_dir) / shard["file"]).to_pylist():
            examples.append(
                QaExample(
                    row["task"],
                    row["question_index"],
                    row["length"],
                    row["question"],
                    row["answers"],
                    row["prompt_ids"],
                    row["answer_ids"],
                )
            )
    return examples
