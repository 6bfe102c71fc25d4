"""refine_tasks.store.catalog: ordered migrations, one writer at a time, read-only readers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from refine_tasks.store import catalog
from refine_tasks.store.catalog import CatalogError, CatalogLocked

HOLD_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from refine_tasks.store.catalog import writer_lock
    with writer_lock(Path(sys.argv[1]), "catalog " + sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def _documents(n: int) -> pa.Table:
    return pa.table(
        {
            "doc_id": [f"{i:064x}" for i in range(n)],
            "source": [f"file.jsonl:{i + 1}" for i in range(n)],
            "shard": ["shard-00000-abc.arrow"] * n,
            "row": list(range(n)),
            "n_tokens": [10 * (i + 1) for i in range(n)],
        }
    )


@pytest.fixture
def holder(tmp_path: Path):
    """A separate process that holds the writer lock of tmp_path/refine.duckdb until killed."""
    db = tmp_path / "refine.duckdb"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITER, str(catalog.lock_path_for(db))], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    yield db, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_migrations_apply_in_order_once(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    steps = [(1, "CREATE TABLE a (x INTEGER)"), (2, "CREATE TABLE b (y INTEGER)")]
    con = duckdb.connect(str(db))
    assert catalog.schema_version(con) == 0
    assert catalog.migrate(con, steps[:1]) == 1
    assert catalog.migrate(con, steps) == 2  # only step 2 runs: step 1 would fail (table a exists)
    assert catalog.migrate(con, steps) == 2
    assert con.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [(1,), (2,)]
    with pytest.raises(CatalogError, match="newer than this code knows"):
        catalog.migrate(con, steps[:1])
    con.close()


def test_failed_migration_rolls_back(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "c.duckdb"))
    bad = [(1, "CREATE TABLE a (x INTEGER)"), (2, "CREATE TABLE b (y INTEGER); SELECT * FROM nowhere")]
    with pytest.raises(CatalogError, match="migration 2 failed"):
        catalog.migrate(con, bad)
    assert catalog.schema_version(con) == 1
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert "b" not in tables and "a" in tables


def test_project_migrations_are_numbered_in_order() -> None:
    catalog.check_migrations(catalog.MIGRATIONS)
    with pytest.raises(CatalogError, match="in order"):
        catalog.check_migrations([(1, "x"), (3, "y")])


def test_replace_documents_and_read_only_reader(tmp_path: Path) -> None:
    db = tmp_path / "cache" / "refine.duckdb"
    assert catalog.replace_documents(db, _documents(5)) == 5
    assert catalog.replace_documents(db, _documents(3)) == 3  # replaces, never appends
    con = catalog.open_reader(db)
    rows = con.execute('SELECT source, "row", n_tokens FROM documents ORDER BY "row"').fetchall()
    assert rows == [("file.jsonl:1", 0, 10), ("file.jsonl:2", 1, 20), ("file.jsonl:3", 2, 30)]
    with pytest.raises(duckdb.Error, match="read-only"):
        con.execute("DELETE FROM documents")
    con.close()


def test_reader_without_catalog_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"no catalog at .*refine ingest"):
        catalog.open_reader(tmp_path / "missing.duckdb")


def test_second_writer_is_told_who_holds_the_lock(holder) -> None:
    db, proc = holder
    with pytest.raises(CatalogLocked) as err:
        catalog.replace_documents(db, _documents(1))
    msg = str(err.value)
    assert f"catalog {db} is locked by PID {proc.pid}" in msg
    assert "-c" in msg  # the holder's command line


def test_reader_works_while_writer_lock_is_held(holder, tmp_path: Path) -> None:
    db, proc = holder
    con = duckdb.connect(str(db))  # a catalog written before the holder took the lock
    catalog.migrate(con)
    con.close()
    reader = catalog.open_reader(db)
    assert reader.execute("SELECT count(*) FROM documents").fetchone()[0] == 0
    reader.close()


def test_lock_of_killed_writer_is_stale(holder) -> None:
    db, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lock = catalog.lock_path_for(db)
    assert json.loads(lock.read_text())["pid"] == proc.pid  # the dead holder's record is still there
    assert catalog.replace_documents(db, _documents(2)) == 2


def test_lock_file_naming_a_dead_pid_is_taken_over(tmp_path: Path) -> None:
    db = tmp_path / "refine.duckdb"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    catalog.lock_path_for(db).write_text(json.dumps({"pid": dead.pid, "command": "refine ingest"}))
    assert catalog.replace_documents(db, _documents(1)) == 1
    assert catalog.lock_path_for(db).read_text() == ""  # released


def test_writer_lock_is_exclusive_within_one_process_too(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    with catalog.writer_lock(lock, "corpus directory x"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(CatalogLocked, match=f"corpus directory x is locked by PID {os.getpid()}"):
            with catalog.writer_lock(lock, "corpus directory x"):
                pass
    start = time.monotonic()
    with catalog.writer_lock(lock, "corpus directory x"):
        pass
    assert time.monotonic() - start < 1.0


def test_reader_waits_for_an_open_writer_connection(tmp_path: Path) -> None:
    db = tmp_path / "refine.duckdb"
    catalog.replace_documents(db, _documents(4))
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from refine_tasks.store.catalog import open_writer
        with open_writer(Path(sys.argv[1])) as con:
            print("open", flush=True)
            time.sleep(float(sys.argv[2]))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(db), "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "open"
        with pytest.raises(CatalogError, match=f"stayed open for writing by PID {proc.pid}"):
            catalog.open_reader(db, wait_s=0.3)
    finally:
        proc.kill()
        proc.wait()
    proc = subprocess.Popen([sys.executable, "-c", script, str(db), "0.5"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "open"
    reader = catalog.open_reader(db, wait_s=30)  # returns once the writer closed its connection
    assert reader.execute("SELECT count(*) FROM documents").fetchall() == [(4,)]
    reader.close()
    assert proc.wait() == 0
