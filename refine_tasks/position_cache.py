"""Selected positions cached in DuckDB, and the two policies that use them.

A cache row is keyed by (doc_id, checkpoint, params_hash): the sequence, the weights version
that computed its entropy, and a hash of every parameter the selection depends on. It keeps
the positions, an entropy summary and the training step that computed them.

Policies:
  online       entropy and positions are computed in every step from the current weights;
               nothing is read from the cache.
  precomputed  positions come from the cache; a miss computes them (one model pass over the
               missing rows only) and stores them. The weights version is the starting
               checkpoint for the first `refresh_every` steps, then `<start>@<run>:<k*N>` for
               steps k*N .. (k+1)*N-1, so every N steps stale rows stop matching and are
               recomputed with the weights of that moment. A row made by another checkpoint
               never matches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from refine_tasks.config import PositionsConfig
from refine_tasks.positions import entropy_window, select_positions, smooth_entropy

EntropyFn = Callable[[Tensor], Tensor]  # input_ids [B, T] -> raw next-token entropy [B, T]


@dataclass(frozen=True)
class SelectionParams:
    """Everything the selected positions depend on besides the weights and the tokens."""

    n_chunks: int
    selection: str
    margin: int
    rollout_len: int
    seq_len: int
    seed: int

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


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
    """The `positions` table of the DuckDB catalog (migration 2 in `refine_tasks.catalog`).

    Each call opens the catalog as its one writer for just that call, so a long training run
    never holds the catalog locked between steps.
    """

    COLUMNS = tuple(CachedPositions.__dataclass_fields__)

    def __init__(self, catalog: Path) -> None:
        self.catalog = Path(catalog)

    def _writer(self):
        # DuckDB loads on the first catalog access: the online policy, with no catalog, never needs it
        from refine_tasks.catalog_wait import waiting_writer

        return waiting_writer(self.catalog)

    def get(self, doc_ids: list[str], checkpoint: str, params_hash: str) -> dict[str, CachedPositions]:
        with self._writer() as con:
            rows = con.execute(
                f"SELECT {', '.join(self.COLUMNS)} FROM positions "
                "WHERE checkpoint = ? AND params_hash = ? AND list_contains(?, doc_id)",
                [checkpoint, params_hash, doc_ids],
            ).fetchall()
        return {r[0]: CachedPositions(*r) for r in rows}

    def put(self, records: list[CachedPositions]) -> None:
        if not records:
            return
        marks = ", ".join("?" for _ in self.COLUMNS)
        with self._writer() as con:
            con.executemany(
                f"INSERT OR REPLACE INTO positions ({', '.join(self.COLUMNS)}) VALUES ({marks})",
                [[getattr(r, c) for c in self.COLUMNS] for r in records],
            )


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A checkpoint id from the weights themselves: SHA-256 over every parameter's name, dtype and bytes."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def draw_generator(seed: int, *keys: object) -> torch.Generator:
    """A CPU generator seeded from (seed, keys): a sequence's draw never depends on its batch-mates."""
    text = "|".join(str(k) for k in (seed, *keys))
    return torch.Generator().manual_seed(
        int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
    )


@dataclass
class SelectedPositions:
    positions: Tensor  # [B, n_chunks] prefix lengths, ascending
    entropy_mean: float  # mean raw next-token entropy over the batch's sequences
    cache_hits: int
    computed: int  # sequences whose entropy was computed by a model pass in this call


class PositionSelector:
    """Chooses rollout positions for a batch under the configured policy."""

    def __init__(
        self,
        cfg: PositionsConfig,
        rollout_len: int,
        seed: int,
        base_checkpoint: str,
        run_id: str = "",
        cache: PositionCache | None = None,
    ) -> None:
        if cfg.policy == "precomputed" and cache is None:
            raise ValueError("positions.policy='precomputed' needs a DuckDB catalog (paths.catalog)")
        self.cfg = cfg
        self.rollout_len = rollout_len
        self.seed = seed
        self.base_checkpoint = base_checkpoint
        self.run_id = run_id
        self.cache = cache

    def params(self, seq_len: int) -> SelectionParams:
        c = self.cfg
        return SelectionParams(c.n_chunks, c.selection, c.margin, self.rollout_len, seq_len, self.seed)

    def weights_version(self, step: int) -> str:
        """The checkpoint id cached positions must carry to be used at this training step."""
        window = step - step % self.cfg.refresh_every
        return self.base_checkpoint if window == 0 else f"{self.base_checkpoint}@{self.run_id}:{window}"

    def compute(
        self, input_ids: Tensor, doc_ids: list[str], salt: object, entropy_fn: EntropyFn
    ) -> tuple[Tensor, Tensor]:
        """Entropy pass + selection for every row: input_ids [B, T] -> (positions [B, P], entropy [B, T])."""
        entropy = entropy_fn(input_ids).float().cpu()
        rows = [
            select_positions(
                entropy[i : i + 1],
                self.cfg.n_chunks,
                self.rollout_len,
                self.cfg.selection,
                self.cfg.margin,
                draw_generator(self.seed, doc_ids[i], salt),
            )[0]
            for i in range(len(doc_ids))
        ]
        return torch.stack(rows), entropy

    def select(
        self, input_ids: Tensor, doc_ids: list[str], step: int, entropy_fn: EntropyFn
    ) -> SelectedPositions:
        """Positions for input_ids [B, T] (one doc id per row) at training step `step`."""
        if len(doc_ids) != input_ids.shape[0]:
            raise ValueError(f"{len(doc_ids)} doc ids for a batch of {input_ids.shape[0]} sequences")
        if self.cfg.policy == "online":
            positions, entropy = self.compute(input_ids, doc_ids, step, entropy_fn)
            return SelectedPositions(positions.to(input_ids.device), float(entropy.mean()), 0, len(doc_ids))
        return self._from_cache(input_ids, doc_ids, step, entropy_fn)

    def _from_cache(
        self, input_ids: Tensor, doc_ids: list[str], step: int, entropy_fn: EntropyFn
    ) -> SelectedPositions:
        params = self.params(input_ids.shape[1])
        version, digest = self.weights_version(step), params.digest()
        found = self.cache.get(doc_ids, version, digest)
        missing = [i for i, d in enumerate(doc_ids) if d not in found]
        if missing:
            miss_ids = [doc_ids[i] for i in missing]
            positions, entropy = self.compute(input_ids[missing], miss_ids, version, entropy_fn)
            fresh = [
                self.summarize(d, version, params, positions[k], entropy[k], step)
                for k, d in enumerate(miss_ids)
            ]
            self.cache.put(fresh)
            found.update({r.doc_id: r for r in fresh})
        rows = [found[d] for d in doc_ids]
        return SelectedPositions(
            positions=torch.tensor([r.positions for r in rows], dtype=torch.long, device=input_ids.device),
            entropy_mean=sum(r.entropy_mean for r in rows) / len(rows),
            cache_hits=len(doc_ids) - len(missing),
            computed=len(missing),
        )

    def summarize(
        self,
        doc_id: str,
        version: str,
        params: SelectionParams,
        positions: Tensor,
        entropy: Tensor,
        step: int | None,
    ) -> CachedPositions:
        """A cache row for one sequence: positions [P], raw entropy [T]."""
        smoothed = smooth_entropy(entropy.unsqueeze(0), entropy_window(self.rollout_len))[0]
        return CachedPositions(
            doc_id=doc_id,
            checkpoint=version,
            params_hash=params.digest(),
            params=json.dumps(asdict(params), sort_keys=True),
            seq_len=int(entropy.shape[0]),
            positions=[int(p) for p in positions],
            entropy_at=[float(smoothed[int(p) - 1]) for p in positions],
            entropy_mean=float(entropy.mean()),
            entropy_std=float(entropy.std()) if entropy.numel() > 1 else 0.0,
            entropy_max=float(entropy.max()),
            step=step,
        )
