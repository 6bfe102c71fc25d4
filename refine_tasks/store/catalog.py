"""The DuckDB catalog (`paths.catalog`, by default `data/cache/refine.duckdb`).

It holds the `documents` table filled by ingest, and the tables later steps add (positions
cache, runs, evaluation results).

Schema: explicit, ordered migrations. `MIGRATIONS` is a list of `(version, SQL)` steps and
the table `schema_version` records which versions a catalog has applied; a writer applies
the missing ones in order, each in its own transaction. To add a table, append one step
with the next version number at the END of the list:

    (2, '''CREATE TABLE positions (doc_id VARCHAR NOT NULL, ...)'''),

Never edit, renumber or reorder a step that has been committed: catalogs already past it
would never see the change. Change a table with a new step (ALTER TABLE ...) instead.

Concurrency: one writer at a time. `open_writer` takes an exclusive lock on `<catalog>.lock`
(an OS file lock, released by the kernel when the holder exits or is killed, so a lock left
by a dead process is stale and simply taken over) and writes the holder's PID and command
into it, so a second writer fails at once with "catalog <path> is locked by PID <n>
(<command>)". DuckDB lets no other process open the file while a read-write connection is
open, so writers keep their connection short (one `with` block) and `open_reader` (read-only)
retries for a few seconds while a writer is inside its block. A command that must know it may
write the catalog before it changes anything else (ingest: its corpus folder) takes the lock
first with `lock_catalog` and opens the connection only for its final write.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE documents (
            doc_id VARCHAR PRIMARY KEY,   -- sha256 of the cleaned text (see refine_tasks.corpus)
            source VARCHAR NOT NULL,      -- where the text came from: 'sotu:<id>', '<file>:<line>', ...
            shard VARCHAR NOT NULL,       -- Arrow shard file name inside paths.corpus_dir
            "row" INTEGER NOT NULL,       -- row of the document inside that shard
            n_tokens INTEGER NOT NULL
        )
        """,
    ),
    (
        2,
        """
        CREATE TABLE positions (
            doc_id VARCHAR NOT NULL,        -- training sequence id (the document id when not packed)
            checkpoint VARCHAR NOT NULL,    -- weights version whose entropy chose these positions
            params_hash VARCHAR NOT NULL,   -- hash of the selection parameters (see position_cache)
            params JSON NOT NULL,
            seq_len INTEGER NOT NULL,
            positions INTEGER[] NOT NULL,   -- rollout starts as prefix lengths, ascending
            entropy_at DOUBLE[] NOT NULL,   -- smoothed entropy that scored each position
            entropy_mean DOUBLE NOT NULL,
            entropy_std DOUBLE NOT NULL,
            entropy_max DOUBLE NOT NULL,
            step INTEGER,                   -- training step that computed them (NULL: offline)
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            PRIMARY KEY (doc_id, checkpoint, params_hash)
        )
        """,
    ),
    (
        3,
        """
        CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY,
            kind VARCHAR NOT NULL,          -- 'midtrain', ...
            status VARCHAR NOT NULL,        -- running | finished | stopped | failed
            out_dir VARCHAR NOT NULL,
            base_checkpoint VARCHAR NOT NULL,
            config JSON NOT NULL,
            step INTEGER NOT NULL DEFAULT 0,
            last_loss DOUBLE,
            message VARCHAR,
            started_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            updated_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        )
        """,
    ),
    (
        4,
        """
        CREATE TABLE eval_results (
            run VARCHAR NOT NULL,           -- evaluation run name: base, sft, refine, ...
            checkpoint VARCHAR NOT NULL,    -- model directory evaluated, or 'random:<preset>:<mixer>:seed<n>'
            family VARCHAR NOT NULL,        -- niah | ruler_qa | longbench
            task VARCHAR NOT NULL,          -- NIAH variant, RULER QA task or LongBench task
            length INTEGER,                 -- context-length bucket in tokens (NULL when unknown)
            depth DOUBLE,                   -- NIAH needle depth in percent (NULL for other families)
            n_samples INTEGER NOT NULL,
            score DOUBLE NOT NULL,          -- mean per-sample score x 100
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        )
        """,
    ),
    (
        5,
        """
        CREATE TABLE qa_examples (
            example_id VARCHAR PRIMARY KEY, -- '<task>:<length>:<question index>' (see refine_tasks.corpus.qa_data)
            task VARCHAR NOT NULL,          -- ruler_squadqa | ruler_hotpotqa
            question_index INTEGER NOT NULL,-- the question's index in RULER's order (>= qa_data.first_question)
            length INTEGER NOT NULL,        -- the prompt + answer budget it was built for
            shard VARCHAR NOT NULL,         -- Arrow shard file name inside qa_data.out_dir
            "row" INTEGER NOT NULL,
            n_tokens INTEGER NOT NULL       -- prompt + answer tokens
        )
        """,
    ),
]


class CatalogError(RuntimeError):
    """The catalog cannot be used as asked; the message says which file and what to do."""


class CatalogLocked(CatalogError):
    """Another live process holds the writer lock."""


def check_migrations(migrations: list[tuple[int, str]]) -> None:
    """Versions must be 1, 2, 3, ... in list order: a gap or a swap is a merge mistake."""
    versions = [v for v, _ in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise CatalogError(f"catalog MIGRATIONS versions must be 1..{len(versions)} in order, got {versions}")


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """The highest migration applied to this catalog (0 for a new one)."""
    has_table = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
    ).fetchall()[0][0]
    if not has_table:
        return 0
    return con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()[0][0]


def migrate(con: duckdb.DuckDBPyConnection, migrations: list[tuple[int, str]] = MIGRATIONS) -> int:
    """Apply the missing steps of `migrations` in order; returns the schema version reached."""
    check_migrations(migrations)
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version "
        "(version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)"
    )
    current = schema_version(con)
    latest = len(migrations)
    if current > latest:
        raise CatalogError(
            f"catalog schema version {current} is newer than this code knows ({latest}); "
            "update refine-pipeline, or point paths.catalog at another file"
        )
    for version, sql in migrations[current:]:
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(sql)
            con.execute("INSERT INTO schema_version (version) VALUES (?)", [version])
            con.execute("COMMIT")
        except duckdb.Error as e:
            con.execute("ROLLBACK")
            raise CatalogError(f"catalog migration {version} failed: {e}") from e
    return latest


def process_alive(pid: int) -> bool:
    """Whether `pid` names a running process (the owner of a lock, or of a file named after its PID)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _lock_holder(lock_path: Path) -> tuple[str, str]:
    try:
        info = json.loads(lock_path.read_text())
        return str(info.get("pid", "?")), str(info.get("command", "?"))
    except (OSError, ValueError):
        return "?", "unknown command"


@contextmanager
def writer_lock(lock_path: Path, what: str) -> Iterator[None]:
    """Hold the exclusive lock `lock_path` for writing `what`, or raise CatalogLocked at once."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, command = _lock_holder(lock_path)
            raise CatalogLocked(
                f"{what} is locked by PID {pid} ({command}); wait for it to finish, or stop that process"
            ) from None
        # The lock is ours: whatever PID the file names is stale. Record who holds it now.
        holder = json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv) or sys.executable})
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def lock_path_for(catalog: Path) -> Path:
    return catalog.with_name(catalog.name + ".lock")


class HeldCatalog:
    """The catalog while this process holds its writer lock (see `lock_catalog`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection with the schema migrated, closed when the block ends."""
        con = duckdb.connect(str(self.path))
        try:
            migrate(con)
            yield con
        finally:
            con.close()


@contextmanager
def lock_catalog(catalog: Path) -> Iterator[HeldCatalog]:
    """Hold the catalog's writer lock for the block (or raise CatalogLocked at once) without opening
    the file, so readers keep working until the holder connects."""
    catalog = Path(catalog)
    with writer_lock(lock_path_for(catalog), f"catalog {catalog}"):
        yield HeldCatalog(catalog)


@contextmanager
def open_writer(catalog: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection with the schema migrated; the writer lock is held until the block ends."""
    with lock_catalog(catalog) as held, held.connect() as con:
        yield con


def open_reader(catalog: Path, wait_s: float = 10.0) -> duckdb.DuckDBPyConnection:
    """A read-only connection; waits up to `wait_s` while a writer has the file open."""
    catalog = Path(catalog)
    if not catalog.exists():
        raise CatalogError(f"no catalog at {catalog}; run `refine ingest` (or `refine run`) to create it")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return duckdb.connect(str(catalog), read_only=True)
        except duckdb.IOException as e:
            if time.monotonic() >= deadline:
                pid, command = _lock_holder(lock_path_for(catalog))
                raise CatalogError(
                    f"catalog {catalog} stayed open for writing by PID {pid} ({command}) for {wait_s:.0f} s: {e}"
                ) from e
            time.sleep(0.1)


def _replace_rows(
    con: duckdb.DuckDBPyConnection, table: str, columns: tuple[str, ...], rows: pa.Table
) -> int:
    """Make `table` hold exactly `rows` (its `columns`), in one transaction; returns the row count."""
    names = ", ".join(f'"{c}"' for c in columns)
    con.register(f"new_{table}", rows)
    con.execute("BEGIN TRANSACTION")
    con.execute(f"DELETE FROM {table}")
    con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM new_{table}")
    con.execute("COMMIT")
    con.unregister(f"new_{table}")
    return con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]


def write_documents(con: duckdb.DuckDBPyConnection, documents: pa.Table) -> int:
    """Make the `documents` table hold exactly `documents` (doc_id, source, shard, row, n_tokens)."""
    return _replace_rows(con, "documents", ("doc_id", "source", "shard", "row", "n_tokens"), documents)


def write_qa_examples(con: duckdb.DuckDBPyConnection, examples: pa.Table) -> int:
    """Make the `qa_examples` table hold exactly `examples` (its columns, as the table's)."""
    columns = ("example_id", "task", "question_index", "length", "shard", "row", "n_tokens")
    return _replace_rows(con, "qa_examples", columns, examples)


def replace_documents(catalog: Path, documents: pa.Table) -> int:
    """`write_documents` in its own writer block."""
    with open_writer(catalog) as con:
        return write_documents(con, documents)
