"""A catalog writer that waits its turn: for long-running steps (training) that must not die
because another command holds the catalog's writer lock for a moment."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import duckdb

from refine_tasks.store.catalog import CatalogLocked, open_writer

POLL_S = 0.2


@contextmanager
def waiting_writer(catalog: Path, wait_s: float = 120.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """`open_writer`, retried every 0.2 s while the lock is held, for up to `wait_s` (then CatalogLocked)."""
    deadline = time.monotonic() + wait_s
    with ExitStack() as stack:
        while True:
            try:
                con = stack.enter_context(open_writer(catalog))
                break
            except CatalogLocked:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(POLL_S)
        yield con
