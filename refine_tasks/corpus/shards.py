"""Arrow IPC shards and the manifest of a corpus directory.

A shard is an Arrow IPC stream file (what `datasets` writes, so `Dataset.from_file` opens it)
with the columns of `SCHEMA`. Its name carries a key: the hash of the tokenizer id and the
(doc_id, source) list it holds, so a shard with the same contents already on disk is reused,
and a shard of another run never overwrites one a manifest still lists. Every file is written
under a temporary name and renamed, so a reader never sees half a file. `manifest.json` lists
the shards of the last complete ingest; read a corpus through it (`load_corpus`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from refine_tasks.corpus.sources import CorpusError
from refine_tasks.errors import writing_to

if TYPE_CHECKING:
    import datasets

SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("n_tokens", pa.int32()),
        ("input_ids", pa.list_(pa.int32())),
    ]
)
SHARD_FORMAT = "refine-corpus-shard/1"
MANIFEST = "manifest.json"
TMP_MARK = ".tmp-"


@dataclass(frozen=True)
class ShardInfo:
    file: str
    rows: int
    tokens: int
    sha256: str


def shard_key(tokenizer_id: str, docs: Sequence[tuple[str, str]]) -> str:
    """Hash of what a shard holds: the format, the tokenizer, and its (doc_id, source) pairs in order."""
    h = hashlib.sha256(f"{SHARD_FORMAT}\n{tokenizer_id}\n".encode())
    for doc_id, source in docs:
        h.update(f"{doc_id}\t{source}\n".encode())
    return h.hexdigest()


def shard_name(index: int, key: str) -> str:
    return f"shard-{index:05d}-{key[:16]}.arrow"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Run `write` on a temporary file beside `path`, flush it to disk, then rename it to `path`."""
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with writing_to(path.parent, "paths.corpus_dir"):
            with tmp.open("wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_temporaries(directory: Path) -> int:
    """Delete leftovers of interrupted writes (the caller holds the directory's writer lock)."""
    stale = [p for p in directory.iterdir() if TMP_MARK in p.name]
    for p in stale:
        p.unlink()
    return len(stale)


def token_table(doc_ids: Sequence[str], sources: Sequence[str], ids: Sequence[list[int]]) -> pa.Table:
    """The shard table; `ids[i]` are the token ids of document i."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(offsets[-1]))
    input_ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
    columns = [
        pa.array(doc_ids, pa.string()),
        pa.array(sources, pa.string()),
        pa.array(lengths.astype(np.int32)),
    ]
    return pa.Table.from_arrays([*columns, input_ids], schema=SCHEMA)


def write_shard(path: Path, table: pa.Table, key: str) -> ShardInfo:
    schema = table.schema.with_metadata({"refine.format": SHARD_FORMAT, "refine.key": key})

    def write(f: BinaryIO) -> None:
        with pa.ipc.new_stream(f, schema) as writer:
            writer.write_table(table.replace_schema_metadata(schema.metadata))

    atomic_write(path, write)
    tokens = int(pc.sum(table["n_tokens"]).as_py() or 0)
    return ShardInfo(path.name, table.num_rows, tokens, file_sha256(path))


def read_shard(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_stream(source).read_all()
    return table if columns is None else table.select(list(columns))


def shard_info(path: Path) -> ShardInfo:
    """The figures of a shard already on disk (reused by a rerun)."""
    n_tokens = read_shard(path, ["n_tokens"])["n_tokens"]
    return ShardInfo(path.name, len(n_tokens), int(pc.sum(n_tokens).as_py() or 0), file_sha256(path))


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    path = directory / MANIFEST
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise CorpusError(f"{path} does not exist: run `refine ingest` to build the corpus")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CorpusError(f"{path}: not valid JSON ({e}); run `refine ingest` again") from e


def shard_paths(directory: Path) -> list[Path]:
    """The shards listed by the manifest, in order."""
    directory = Path(directory)
    return [directory / s["file"] for s in read_manifest(directory)["shards"]]


def load_corpus(directory: Path) -> datasets.Dataset:
    """The whole corpus as one `datasets.Dataset` (memory-mapped; columns as in `SCHEMA`)."""
    import datasets

    parts = [datasets.Dataset.from_file(str(p)) for p in shard_paths(directory)]
    if not parts:
        raise CorpusError(f"{directory}: the corpus has no documents (see manifest.json's drop counts)")
    return datasets.concatenate_datasets(parts)
