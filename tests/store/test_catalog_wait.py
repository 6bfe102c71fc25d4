"""The waiting catalog writer: it outlasts a short-lived lock holder and gives up after its limit."""

from __future__ import annotations

import time

import pytest

from refine_tasks.store.catalog import CatalogLocked
from refine_tasks.store.catalog_wait import waiting_writer


def test_waits_for_the_lock_then_writes(tmp_path, hold):
    db = tmp_path / "refine.duckdb"
    proc = hold(db, 1.0)
    began = time.monotonic()
    with waiting_writer(db, wait_s=30) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchall() == [(0,)]  # migrated, usable
    assert time.monotonic() - began > 0.5  # it did wait for the holder
    proc.communicate()


def test_gives_up_after_its_limit(tmp_path, hold):
    db = tmp_path / "refine.duckdb"
    proc = hold(db, 30.0)
    try:
        with pytest.raises(CatalogLocked, match="locked by PID"):
            with waiting_writer(db, wait_s=0.5):
                pass
    finally:
        proc.kill()
        proc.communicate()
