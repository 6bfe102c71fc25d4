"""Rollout positions for training: the two policies, and `refine positions` (all of them up front).

Policies:
  online       entropy and positions are computed in every step from the current weights;
               nothing is read from the cache.
  precomputed  positions come from the cache (refine_tasks.store.position_cache); a miss
               computes them (one model pass over the missing rows only) and stores them. The
               weights version is the starting checkpoint for the first `refresh_every` steps,
               then `<start>@<run>:<k*N>` for steps k*N .. (k+1)*N-1, so every N steps stale rows
               stop matching and are recomputed with the weights of that moment. A row made by
               another checkpoint, or by other entropy or model code, never matches.

`precompute_positions` (`refine positions`) fills the cache for every training sequence before
training, so the `precomputed` policy needs no entropy pass in a step until the first refresh.
Rows are keyed by the fingerprint of the starting weights, which is also what a training run
starting from those weights looks for.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from refine_tasks.config import PipelineConfig, PositionsConfig
from refine_tasks.corpus.loader import LongDocumentLoader
from refine_tasks.rl.positions import (
    check_sequence_length,
    draw_generator,
    entropy_window,
    select_positions,
    sequence_entropy,
    smooth_entropy,
)
from refine_tasks.store.position_cache import (
    CachedPositions,
    PositionCache,
    SelectionParams,
    weights_fingerprint,
)
from refine_tasks.train.starting_model import make_model, mixed_precision, resolve_device

EntropyFn = Callable[[Tensor], Tensor]  # input_ids [B, T] -> raw next-token entropy [B, T]


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
        self._window: tuple[str, str] | None = None  # (weights version, params digest) of _rows
        self._rows: dict[str, CachedPositions] = {}

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

    def _window_rows(self, version: str, digest: str) -> dict[str, CachedPositions]:
        """Every cached row of this weights version, read from the catalog once per refresh window
        and kept here: opening the catalog for each step's batch cost more host time than a small
        model's whole NTP step."""
        if self._window != (version, digest):
            self._rows = self.cache.get(None, version, digest)
            self._window = (version, digest)
        return self._rows

    def _from_cache(
        self, input_ids: Tensor, doc_ids: list[str], step: int, entropy_fn: EntropyFn
    ) -> SelectedPositions:
        params = self.params(input_ids.shape[1])
        version, digest = self.weights_version(step), params.digest()
        known = self._window_rows(version, digest)
        found = {d: known[d] for d in doc_ids if d in known}
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
            known.update({r.doc_id: r for r in fresh})
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
            params=json.dumps(params.key(), sort_keys=True),
            seq_len=int(entropy.shape[0]),
            positions=[int(p) for p in positions],
            entropy_at=[float(smoothed[int(p) - 1]) for p in positions],
            entropy_mean=float(entropy.mean()),
            entropy_std=float(entropy.std()) if entropy.numel() > 1 else 0.0,
            entropy_max=float(entropy.max()),
            step=step,
        )


FLUSH_ROWS = 512  # rows `refine positions` keeps before one catalog write (a transaction, a checkpoint)


class DeferredPositionCache(PositionCache):
    """PositionCache whose put only collects rows; flush() writes them in one catalog transaction.
    Each catalog write opens the catalog, commits and checkpoints, with a disk sync each time: at a
    write per batch of 8 the positions stage took 97 s for 638 sequences on the H200 (2026-12-04),
    where the model's passes take a few seconds."""

    def __init__(self, catalog) -> None:
        super().__init__(catalog)
        self.pending: list[CachedPositions] = []

    def put(self, records: list[CachedPositions]) -> None:
        self.pending.extend(records)

    def flush(self) -> None:
        rows, self.pending = self.pending, []
        if rows:
            PositionCache.put(self, rows)


@dataclass
class PositionsReport:
    checkpoint: str
    sequences: int
    computed: int
    cache_hits: int
    seconds: float
    first_batch_seconds: float = 0.0  # model load and the first pass (kernels compiled, if not cached)

    def summary_rows(self) -> list[tuple[str, str]]:
        return [
            ("checkpoint (weights fingerprint)", self.checkpoint),
            ("sequences", f"{self.sequences:,}"),
            ("computed", f"{self.computed:,}"),
            ("already cached", f"{self.cache_hits:,}"),
            ("seconds", f"{self.seconds:.1f}"),
            ("of which to the end of the first batch", f"{self.first_batch_seconds:.1f}"),
        ]


def precompute_positions(
    cfg: PipelineConfig, on_progress: Callable[[int], None] | None = None
) -> PositionsReport:
    """One pass over the training sequences (train.seq_len / packing) with the starting weights."""
    began = time.perf_counter()
    t = cfg.train
    check_sequence_length(t.seq_len, cfg.positions.n_chunks, cfg.refine.rollout_len, cfg.positions.margin)
    device = resolve_device(t.device)
    model = make_model(cfg, device)
    checkpoint = weights_fingerprint(model)
    loader = LongDocumentLoader(
        cfg.paths.corpus_dir, t.seq_len, 1, t.packing, cfg.seed, midtrain_share=cfg.corpus.midtrain_share
    )
    policy = cfg.positions.model_copy(update={"policy": "precomputed"})
    cache = DeferredPositionCache(cfg.paths.catalog)
    selector = PositionSelector(policy, cfg.refine.rollout_len, cfg.seed, checkpoint, cache=cache)

    def entropy_fn(ids: torch.Tensor) -> torch.Tensor:
        with mixed_precision(device, t.dtype):
            return sequence_entropy(model, ids, cfg.positions.entropy_chunk)

    n = len(loader.sequences)
    report = PositionsReport(checkpoint, n, 0, 0, 0.0)
    # positions.batch_size sequences a pass (one sequence at a time, the H200 spent 123 s on 638
    # sequences of a model whose training step is 70 ms); a catalog write every FLUSH_ROWS rows.
    try:
        for start in range(0, n, cfg.positions.batch_size):
            batch = range(start, min(start + cfg.positions.batch_size, n))
            ids = torch.stack([loader.tokens(k) for k in batch]).to(device)
            chosen = selector.select(ids, [loader.sequence_id(k) for k in batch], 0, entropy_fn)
            report.computed += chosen.computed
            report.cache_hits += chosen.cache_hits
            if len(cache.pending) >= FLUSH_ROWS:
                cache.flush()
            if start == 0:
                report.first_batch_seconds = time.perf_counter() - began
            if on_progress is not None:
                on_progress(len(batch))
    finally:
        cache.flush()  # what was computed stays cached, also when a later batch fails
    report.seconds = time.perf_counter() - began
    return report
