"""refine_tasks.corpus.ingest: shards + manifest + catalog, counts, reruns, interruptions."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from refine_tasks.corpus import CorpusError, clean_text, document_id, ingest, load_corpus, read_manifest
from refine_tasks.corpus import ingestion as ingest_module
from refine_tasks.corpus.shards import MANIFEST, SCHEMA, shard_paths
from refine_tasks.corpus.tokenizer import TokenizerError, load_tokenizer
from refine_tasks.store import catalog
from refine_tasks.store.catalog import CatalogLocked, writer_lock


def write_messy_folder(root: Path, texts: list[str]) -> dict[str, int]:
    """Good documents from `texts` plus one of every bad input; returns the expected drop counts."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "00-good.txt").write_text(texts[0])
    (root / "01-good.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts[1:5]) + "\n")
    pq.write_table(pa.table({"text": texts[5:8] + [None]}), root / "02-good.parquet")
    (root / "03-latin1.txt").write_bytes(("caf\xe9 " * 100).encode("latin-1"))
    (root / "04-binary.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(300))
    (root / "05-empty.txt").write_bytes(b"")
    (root / "06-huge.jsonl").write_text(json.dumps({"text": "word " * (10 * 2**20)}) + "\n")  # one 50 MB line
    (root / "07-garbage.parquet").write_bytes(b"PAR1 not really")
    (root / "08-bad-rows.jsonl").write_text('{"text": "broken\n' + json.dumps({"text": texts[0]}) + "\n")
    (root / "09-short.txt").write_text("Too short to train on.")
    (root / "10-notes.csv").write_text("a,b\n")
    return {
        "corrupt_row": 2,  # the parquet null, the broken JSON line
        "not_utf8": 1,
        "binary": 1,
        "empty": 1,
        "too_long": 1,
        "corrupt_file": 1,
        "duplicate": 1,  # 08's second line repeats 00-good.txt
        "too_short": 1,
        "unsupported_file": 1,
    }


@pytest.fixture
def messy(tmp_path: Path, sotu_texts: list[str]) -> tuple[Path, dict[str, int]]:
    texts = [t[:3000] for t in sotu_texts]
    return tmp_path / "raw", write_messy_folder(tmp_path / "raw", texts)


def test_ingest_messy_folder_end_to_end(messy, make_config, tokenizer_dir: Path) -> None:
    root, expected = messy
    cfg = make_config(f"corpus.source={root}", "corpus.shard_docs=3", "corpus.max_doc_chars=10000000")
    report = ingest(cfg)

    assert dict(report.drops.counts) == expected
    assert report.documents_out == 8 and report.documents_in == 8 + sum(expected.values())
    assert report.shards_written == 3 and report.shards_reused == 0
    for reason, messages in report.drops.examples.items():
        assert all(str(root) in m for m in messages), reason  # each message names its file

    manifest = read_manifest(cfg.paths.corpus_dir)
    assert manifest["counts"] == {
        "documents_in": report.documents_in,
        "documents_out": 8,
        "dropped": dict(sorted(expected.items())),
        "tokens": report.tokens,
    }
    tok = load_tokenizer(tokenizer_dir)
    assert manifest["tokenizer"]["vocab_size"] == len(tok) == 512
    assert manifest["tokenizer"]["eos_token_id"] == tok.eos_token_id

    corpus = load_corpus(cfg.paths.corpus_dir)
    assert corpus.num_rows == 8 and sum(corpus["n_tokens"]) == report.tokens
    texts = {document_id(clean_text(t)): clean_text(t) for t in [t[:3000] for t in _good_texts(root)]}
    for row in corpus:
        expected_ids = tok.backend_tokenizer.encode(texts[row["doc_id"]], add_special_tokens=False).ids
        assert row["input_ids"] == expected_ids and row["n_tokens"] == len(expected_ids)
    assert corpus[0]["source"] == f"{root}/00-good.txt"
    assert corpus[7]["source"] == f"{root}/02-good.parquet row 2"

    con = catalog.open_reader(cfg.paths.catalog)
    rows = con.execute(
        'SELECT doc_id, shard, "row", n_tokens FROM documents ORDER BY shard, "row"'
    ).fetchall()
    con.close()
    by_shard = [
        (row["doc_id"], Path(p).name, i, row["n_tokens"])
        for p in shard_paths(cfg.paths.corpus_dir)
        for i, row in enumerate(datasets.Dataset.from_file(str(p)))
    ]
    assert rows == by_shard


def _good_texts(root: Path) -> list[str]:
    return [
        (root / "00-good.txt").read_text(),
        *[json.loads(line)["text"] for line in (root / "01-good.jsonl").read_text().splitlines()],
        *[t for t in pq.read_table(root / "02-good.parquet")["text"].to_pylist() if t],
    ]


def test_shards_open_with_datasets_in_a_fresh_python(make_config) -> None:
    cfg = make_config("corpus.limit=5", "corpus.shard_docs=2")
    ingest(cfg)
    script = textwrap.dedent(
        """
        import json, sys, datasets
        manifest = json.load(open(sys.argv[1] + "/manifest.json"))
        parts = [datasets.Dataset.from_file(sys.argv[1] + "/" + s["file"]) for s in manifest["shards"]]
        ds = datasets.concatenate_datasets(parts)
        print(json.dumps({"rows": ds.num_rows, "features": str(ds.features), "first": ds[0]["input_ids"][:5]}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(cfg.paths.corpus_dir)], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rows"] == 5
    assert "'input_ids': List(Value('int32'))" in result["features"]
    assert result["first"] == load_corpus(cfg.paths.corpus_dir)[0]["input_ids"][:5]
    assert (
        datasets.Dataset.from_file(str(shard_paths(cfg.paths.corpus_dir)[0])).data.schema.remove_metadata()
        == SCHEMA
    )


def test_same_input_gives_byte_identical_outputs(tmp_path: Path, make_config) -> None:
    a = make_config("corpus.limit=6", "corpus.shard_docs=4")
    b = make_config("corpus.limit=6", "corpus.shard_docs=4", f"paths.corpus_dir={tmp_path / 'other'}")
    ingest(a)
    ingest(b)
    files_a = sorted(p.name for p in a.paths.corpus_dir.iterdir())
    assert files_a == sorted(p.name for p in b.paths.corpus_dir.iterdir())
    for name in files_a:
        assert (a.paths.corpus_dir / name).read_bytes() == (b.paths.corpus_dir / name).read_bytes()


def test_rerun_reuses_finished_shards_and_rewrites_changed_ones(messy, make_config) -> None:
    root, _ = messy
    cfg = make_config(f"corpus.source={root}", "corpus.shard_docs=3")
    first = ingest(cfg)
    mtimes = {p.name: p.stat().st_mtime_ns for p in shard_paths(cfg.paths.corpus_dir)}
    again = ingest(cfg)
    assert (again.shards_written, again.shards_reused) == (0, 3)
    assert again.tokens == first.tokens
    assert {p.name: p.stat().st_mtime_ns for p in shard_paths(cfg.paths.corpus_dir)} == mtimes

    rows = pq.read_table(root / "02-good.parquet")["text"].to_pylist()  # rows 1, 2 are the last shard
    rows[1:3] = ["New. " + t for t in rows[1:3]]
    pq.write_table(pa.table({"text": rows}), root / "02-good.parquet")
    changed = ingest(cfg)
    assert (changed.shards_written, changed.shards_reused) == (1, 2)
    names = sorted(p.name for p in cfg.paths.corpus_dir.glob("shard-*.arrow"))
    assert names == sorted(p.name for p in shard_paths(cfg.paths.corpus_dir))  # the replaced shard is gone


def test_interrupt_keeps_previous_state_and_rerun_resumes(messy, make_config, monkeypatch) -> None:
    root, _ = messy
    cfg = make_config(f"corpus.source={root}", "corpus.shard_docs=3")
    ingest(cfg)
    before = {p.name: p.read_bytes() for p in cfg.paths.corpus_dir.iterdir()}
    catalog_before = _catalog_rows(cfg.paths.catalog)

    # A new first document changes shard 0, and frees 08's copy of the old one from being a
    # duplicate, so it joins shard 2. The run writes shard 0, reuses shard 1, and stops in shard 2.
    (root / "00-good.txt").write_text("A different first document. " * 40)
    real_write = ingest_module.write_shard
    calls = []

    def write_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_write(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "write_shard", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        ingest(cfg)
    monkeypatch.undo()

    after = {p.name: p.read_bytes() for p in cfg.paths.corpus_dir.iterdir()}
    assert {k: v for k, v in after.items() if k in before} == before  # previous files untouched
    assert len(after) == len(before) + 1  # plus the one new complete shard
    assert load_corpus(cfg.paths.corpus_dir).num_rows == 8  # the old manifest still reads
    assert _catalog_rows(cfg.paths.catalog) == catalog_before

    resumed = ingest(cfg)
    assert (resumed.shards_written, resumed.shards_reused) == (1, 2)
    assert resumed.documents_out == 9
    assert len(list(cfg.paths.corpus_dir.iterdir())) == 4  # three shards + manifest


def test_kill_during_a_shard_write_leaves_previous_state(messy, make_config) -> None:
    root, _ = messy
    cfg = make_config(f"corpus.source={root}", "corpus.shard_docs=3")
    ingest(cfg)
    before = {p.name: p.read_bytes() for p in cfg.paths.corpus_dir.iterdir()}
    (root / "00-good.txt").write_text("Yet another first document. " * 40)  # new shards 0 and 2, as above
    # A real SIGKILL while new shard 2 sits complete under its temporary name, before the rename.
    script = textwrap.dedent(
        """
        import os, signal, sys
        from refine_tasks.config import load_config
        from refine_tasks.corpus import ingest, shards
        real_replace, calls = os.replace, []
        def replace_or_die(src, dst):
            calls.append(dst)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)
        shards.os.replace = replace_or_die
        ingest(load_config(None, sys.argv[1:]))
        """
    )
    overrides = [f"paths.{k}={v}" for k, v in cfg.paths.model_dump().items()]
    proc = subprocess.run(
        [sys.executable, "-c", script, *overrides, f"corpus.source={root}", "corpus.shard_docs=3"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -9, proc.stderr
    left = {p.name: p.read_bytes() for p in cfg.paths.corpus_dir.iterdir()}
    assert {k: v for k, v in left.items() if k in before} == before
    assert len([n for n in left if ".tmp-" in n]) == 1  # the killed write, never renamed
    assert read_manifest(cfg.paths.corpus_dir) == json.loads(before[MANIFEST])

    resumed = ingest(cfg)
    assert (resumed.shards_written, resumed.shards_reused) == (1, 2)
    assert not [p for p in cfg.paths.corpus_dir.iterdir() if ".tmp-" in p.name]


def _catalog_rows(path: Path) -> list[tuple]:
    con = catalog.open_reader(path)
    try:
        return con.execute('SELECT * FROM documents ORDER BY shard, "row"').fetchall()
    finally:
        con.close()


def test_limit_and_hf_source(tmp_path: Path, make_config, sotu_texts: list[str]) -> None:
    data = tmp_path / "hub_like"
    data.mkdir()
    (data / "train.jsonl").write_text("\n".join(json.dumps({"text": t[:2000]}) for t in sotu_texts))
    report = ingest(make_config(f"corpus.source=hf:{data}", "corpus.limit=3"))
    assert report.documents_out == 3 and report.documents_in == 3
    assert load_corpus(make_config().paths.corpus_dir)["source"] == [
        f"{data}[train] row {i}" for i in range(3)
    ]


def test_corpus_with_no_documents(tmp_path: Path, make_config) -> None:
    """An empty or all-dropped source is an error naming it and the drops, and writes nothing."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "short.txt").write_text("hi")
    (raw / "notes.csv").write_text("a,b\n")
    cfg = make_config(f"corpus.source={raw}")
    with pytest.raises(CorpusError) as error:
        ingest(cfg)
    assert str(error.value).startswith(f"corpus.source {raw}: no documents left of 2 read (dropped: ")
    assert "too_short: 1" in str(error.value) and "unsupported_file: 1" in str(error.value)
    assert f"e.g. {raw}/short.txt: 2 characters" in str(error.value)  # the most common reason's first
    with pytest.raises(CorpusError, match="manifest.json does not exist"):
        load_corpus(cfg.paths.corpus_dir)
    assert not cfg.paths.catalog.exists()

    (raw / "short.txt").unlink()
    with pytest.raises(CorpusError, match=f"corpus.source {raw}: no documents left of 1 read"):
        ingest(cfg)
    (raw / "notes.csv").unlink()
    with pytest.raises(CorpusError, match=f"corpus.source {raw}: no documents found"):
        ingest(cfg)


def test_an_all_dropped_corpus_keeps_the_previous_one(messy, make_config, tmp_path: Path) -> None:
    root, _ = messy
    cfg = make_config(f"corpus.source={root}", "corpus.shard_docs=3")
    ingest(cfg)
    before = {p.name: p.read_bytes() for p in cfg.paths.corpus_dir.iterdir()}
    catalog_before = _catalog_rows(cfg.paths.catalog)
    with pytest.raises(
        CorpusError, match=r"no documents left of 18 read \(dropped: binary: 1, .*too_short: 10"
    ):
        ingest(cfg.model_copy(update={"corpus": cfg.corpus.model_copy(update={"min_chars": 10**6})}))
    assert {p.name: p.read_bytes() for p in cfg.paths.corpus_dir.iterdir()} == before
    assert _catalog_rows(cfg.paths.catalog) == catalog_before


def test_missing_tokenizer_and_missing_manifest(tmp_path: Path, make_config) -> None:
    with pytest.raises(TokenizerError, match="run `refine tokenizer`"):
        ingest(make_config(f"paths.tokenizer_dir={tmp_path / 'none'}"))
    with pytest.raises(CorpusError, match=r"manifest.json does not exist: run `refine ingest`"):
        read_manifest(tmp_path / "nothing")


def test_second_ingest_into_the_same_directory_is_refused(make_config) -> None:
    cfg = make_config("corpus.limit=2")
    out = cfg.paths.corpus_dir
    with writer_lock(out.with_name(out.name + ".lock"), f"corpus directory {out}"):
        with pytest.raises(CatalogLocked, match=f"corpus directory {out} is locked by PID"):
            ingest(cfg)


def test_ingest_against_a_locked_catalog_changes_nothing(messy, make_config) -> None:
    root, _ = messy
    cfg = make_config(f"corpus.source={root}", "corpus.shard_docs=3")
    ingest(cfg)
    before = {p.name: p.read_bytes() for p in cfg.paths.corpus_dir.iterdir()}
    catalog_before = _catalog_rows(cfg.paths.catalog)
    (root / "00-good.txt").write_text("A different first document. " * 40)  # a new shard 0 and 2
    db = cfg.paths.catalog
    with writer_lock(catalog.lock_path_for(db), f"catalog {db}"):
        with pytest.raises(CatalogLocked, match=f"catalog {db} is locked by PID"):
            ingest(cfg)
    assert {p.name: p.read_bytes() for p in cfg.paths.corpus_dir.iterdir()} == before
    assert _catalog_rows(cfg.paths.catalog) == catalog_before
