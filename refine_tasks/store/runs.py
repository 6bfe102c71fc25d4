"""The catalog's `runs` table (migration 3): one row per training run, updated as it goes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from refine_tasks.store.catalog_wait import waiting_writer


def register_run(
    catalog: Path, run_id: str, kind: str, out_dir: Path, base_checkpoint: str, config: dict[str, Any]
) -> None:
    """Insert the run as 'running' (a resumed run keeps its row and start time)."""
    with waiting_writer(catalog) as con:
        con.execute(
            "INSERT INTO runs (run_id, kind, status, out_dir, base_checkpoint, config) VALUES (?, ?, 'running', ?, ?, ?) "
            "ON CONFLICT (run_id) DO UPDATE SET status = 'running', updated_at = now()",
            [run_id, kind, str(out_dir), base_checkpoint, json.dumps(config)],
        )


def update_run(
    catalog: Path,
    run_id: str,
    status: str,
    step: int,
    last_loss: float | None = None,
    message: str | None = None,
) -> None:
    with waiting_writer(catalog) as con:
        con.execute(
            "UPDATE runs SET status = ?, step = ?, last_loss = ?, message = ?, updated_at = now() "
            "WHERE run_id = ?",
            [status, step, last_loss, message, run_id],
        )
