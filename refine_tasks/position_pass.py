"""`refine positions`: select and cache rollout positions for every training sequence, up front.

The `precomputed` policy then reads them from the catalog instead of running an entropy pass
in each training step (until the first refresh). They are keyed by the fingerprint of the
starting weights, which is also what a training run starting from those weights looks for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from refine_tasks.config import PipelineConfig
from refine_tasks.data_loader import LongDocumentLoader
from refine_tasks.position_cache import PositionCache, PositionSelector, weights_fingerprint
from refine_tasks.positions import check_sequence_length, sequence_entropy
from refine_tasks.starting_model import make_model, mixed_precision, resolve_device


@dataclass
class PositionsReport:
    checkpoint: str
    sequences: int
    computed: int
    cache_hits: int
    seconds: float

    def summary_rows(self) -> list[tuple[str, str]]:
        return [
            ("checkpoint (weights fingerprint)", self.checkpoint),
            ("sequences", f"{self.sequences:,}"),
            ("computed", f"{self.computed:,}"),
            ("already cached", f"{self.cache_hits:,}"),
            ("seconds", f"{self.seconds:.1f}"),
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
    loader = LongDocumentLoader(cfg.paths.corpus_dir, t.seq_len, 1, t.packing, cfg.seed)
    policy = cfg.positions.model_copy(update={"policy": "precomputed"})
    selector = PositionSelector(
        policy, cfg.refine.rollout_len, cfg.seed, checkpoint, cache=PositionCache(cfg.paths.catalog)
    )

    def entropy_fn(ids: torch.Tensor) -> torch.Tensor:
        with mixed_precision(device, t.dtype):
            return sequence_entropy(model, ids, cfg.positions.entropy_chunk)

    report = PositionsReport(checkpoint, len(loader.sequences), 0, 0, 0.0)
    for k in range(len(loader.sequences)):
        ids = loader.tokens(k)[None].to(device)
        chosen = selector.select(ids, [loader.sequence_id(k)], 0, entropy_fn)
        report.computed += chosen.computed
        report.cache_hits += chosen.cache_hits
        if on_progress is not None:
            on_progress(1)
    report.seconds = time.perf_counter() - began
    return report
