"""Selected rollout positions cached in DuckDB (the catalog's `positions` table).

A cache row is keyed by (doc_id, checkpoint, params_hash): the sequence, the weights version
that computed its entropy, and a hash of every parameter the selection depends on, the code that
computes entropy and positions included (`code_fingerprint`). It keeps the positions, an entropy
summary and the training step that computed them. The policies that read and fill it live in
`refine_tasks.train.positions`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import pyarrow as pa
import torch

PACKAGE = Path(__file__).resolve().parents[1]  # refine_tasks
# The code whose output the cache keeps: entropy and selection, and the model's forward.
POSITION_CODE = ("rl/positions.py", "models", "kernels")


@dataclass(frozen=True)
class SelectionParams:
    """Everything the selected positions depend on besides the weights and the tokens."""

    n_chunks: int
    selection: str
    margin: int
    rollout_len: int
    seq_len: int
    seed: int

    def key(self) -> dict[str, object]:
        """The parameters and the code fingerprint: what a cache row's params_hash hashes."""
        return {**asdict(self), "code": code_fingerprint()}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()[:16]


@cache
def code_fingerprint() -> str:
    """SHA-256 over the source of the code that computes entropy and positions (POSITION_CODE's
    .py files, by relative path), once per process: an edit there misses every row made before
    it, as a change of weights or parameters does. Read as files, not imported: the store knows
    nothing of models."""
    files = {
        f.relative_to(PACKAGE).as_posix(): f
        for part in POSITION_CODE
        for f in ([PACKAGE / part] if part.endswith(".py") else (PACKAGE / part).rglob("*.py"))
    }
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name].read_bytes()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:16]


@dataclass
class CachedPositions:
    """One cache row: the positions of one sequence under one weights version."""

    doc_id: str
    checkpoint: str
    params_hash: str
    params: str
    seq_len: int
    positions: list[int]
    entropy_at: list[float]  # smoothed entropy that scored each position (H[p-1])
    entropy_mean: float
    entropy_std: float
    entropy_max: float
    step: int | None


class PositionCache:
    """The `positions` table of the DuckDB catalog (migration 2 in `refine_tasks.store.catalog`).

    Each call opens the catalog as its one writer for just that call, so a long training run
    never holds the catalog locked between steps.
    """

    COLUMNS = tuple(CachedPositions.__dataclass_fields__)

    def __init__(self, catalog: Path) -> None:
        self.catalog = Path(catalog)

    def _writer(self):
        # DuckDB loads on the first catalog access: the online policy, with no catalog, never needs it
        from refine_tasks.store.catalog_wait import waiting_writer

        return waiting_writer(self.catalog)

    def get(self, doc_ids: list[str] | None, checkpoint: str, params_hash: str) -> dict[str, CachedPositions]:
        """The rows of `doc_ids` (None: every row) under one weights version and parameter hash."""
        where = "WHERE checkpoint = ? AND params_hash = ?"
        args: list = [checkpoint, params_hash]
        if doc_ids is not None:
            where += " AND list_contains(?, doc_id)"
            args.append(doc_ids)
        with self._writer() as con:
            rows = con.execute(f"SELECT {', '.join(self.COLUMNS)} FROM positions {where}", args).fetchall()
        return {r[0]: CachedPositions(*r) for r in rows}

    def put(self, records: list[CachedPositions]) -> None:
        if not records:
            return
        # One statement, so one transaction (one WAL sync) for all rows: executemany ran (and
        # committed, with an fdatasync) one INSERT per row.
        rows = pa.table({c: [getattr(r, c) for r in records] for c in self.COLUMNS})
        names = ", ".join(self.COLUMNS)
        with self._writer() as con:
            con.register("new_positions", rows)
            con.execute(f"INSERT OR REPLACE INTO positions ({names}) SELECT {names} FROM new_positions")
            con.unregister("new_positions")


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A checkpoint id from the weights themselves: SHA-256 over every parameter's name, dtype and bytes."""
    return state_fingerprint(model.state_dict())


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """`weights_fingerprint` of a state dict (e.g. one gathered whole from a sharded model)."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
