"""The DuckDB position cache and the online / precomputed policies."""

from __future__ import annotations

import pytest
import torch

from refine_tasks.config import PositionsConfig
from refine_tasks.rl.positions import entropy_window, smooth_entropy
from refine_tasks.store import position_cache
from refine_tasks.store.catalog import open_writer
from refine_tasks.store.position_cache import PositionCache
from refine_tasks.train.positions import PositionSelector

T = 200


class CountingEntropy:
    """A deterministic entropy of the tokens that records every 'model pass' made through it."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.batches.append(input_ids.shape[0])
        return ((input_ids * 37) % 101).float() / 25.0


@pytest.fixture
def cache(tmp_path):
    return PositionCache(tmp_path / "refine.duckdb")


def query(cache: PositionCache, sql: str) -> list[tuple]:
    with open_writer(cache.catalog) as con:
        return con.execute(sql).fetchall()


def batch(seed: int, rows: int = 3) -> tuple[torch.Tensor, list[str]]:
    ids = torch.randint(0, 1000, (rows, T), generator=torch.Generator().manual_seed(seed))
    return ids, [f"doc{seed}-{i}" for i in range(rows)]


def selector(cache, policy="precomputed", checkpoint="ckA", **cfg) -> PositionSelector:
    cfg = PositionsConfig(**{"n_chunks": 4, "margin": 20, "policy": policy, "refresh_every": 10, **cfg})
    return PositionSelector(
        cfg, rollout_len=5, seed=0, base_checkpoint=checkpoint, run_id="run1", cache=cache
    )


def test_cache_hit_skips_the_model_pass(cache):
    ids, docs = batch(1)
    fn = CountingEntropy()
    sel = selector(cache)
    first = sel.select(ids, docs, step=0, entropy_fn=fn)
    assert fn.batches == [3] and first.computed == 3 and first.cache_hits == 0
    again = sel.select(ids, docs, step=9, entropy_fn=fn)
    assert fn.batches == [3], "a cache hit must not run the model"
    assert again.cache_hits == 3 and again.computed == 0
    assert torch.equal(first.positions, again.positions)
    assert again.entropy_mean == pytest.approx(first.entropy_mean)


def test_only_missing_rows_are_computed(cache):
    ids, docs = batch(2, rows=4)
    fn = CountingEntropy()
    sel = selector(cache)
    sel.select(ids[:2], docs[:2], step=0, entropy_fn=fn)
    mixed = sel.select(ids, docs, step=0, entropy_fn=fn)
    assert fn.batches == [2, 2] and mixed.cache_hits == 2 and mixed.computed == 2
    # A sequence's draw depends on its doc id, not on which batch it came in.
    online = selector(None, policy="online")
    alone = online.select(ids[3:], docs[3:], 0, CountingEntropy())
    assert torch.equal(alone.positions[0], online.select(ids, docs, 0, CountingEntropy()).positions[3])


def test_cache_of_another_checkpoint_is_not_used(cache):
    ids, docs = batch(3)
    selector(cache, checkpoint="ckA").select(ids, docs, 0, CountingEntropy())
    fn = CountingEntropy()
    other = selector(cache, checkpoint="ckB").select(ids, docs, 0, fn)
    assert fn.batches == [3] and other.cache_hits == 0
    rows = query(cache, "SELECT checkpoint, count(*) FROM positions GROUP BY 1 ORDER BY 1")
    assert rows == [("ckA", 3), ("ckB", 3)]


def test_changed_selection_parameters_miss(cache):
    ids, docs = batch(4)
    selector(cache).select(ids, docs, 0, CountingEntropy())
    fn = CountingEntropy()
    selector(cache, margin=22).select(ids, docs, 0, fn)
    assert fn.batches == [3]


def test_precomputed_positions_refresh_every_n_steps(cache):
    ids, docs = batch(5)
    sel = selector(cache)
    fn = CountingEntropy()
    for step in range(25):
        sel.select(ids, docs, step, fn)
    assert fn.batches == [3, 3, 3]  # steps 0, 10 and 20 recompute with the weights of the moment
    versions = [r[0] for r in query(cache, "SELECT DISTINCT checkpoint FROM positions ORDER BY 1")]
    assert versions == ["ckA", "ckA@run1:10", "ckA@run1:20"]
    assert sel.weights_version(19) == "ckA@run1:10"


def test_cached_row_records_summary_and_provenance(cache):
    ids, docs = batch(6, rows=1)
    fn = CountingEntropy()
    got = selector(cache).select(ids, docs, step=0, entropy_fn=fn)
    entropy = fn(ids)[0]
    row = cache.get(docs, "ckA", selector(cache).params(T).digest())[docs[0]]
    smoothed = smooth_entropy(entropy.unsqueeze(0), entropy_window(5))[0]
    assert row.positions == got.positions[0].tolist()
    assert row.entropy_at == pytest.approx([float(smoothed[p - 1]) for p in row.positions])
    assert row.entropy_mean == pytest.approx(float(entropy.mean()))
    assert row.entropy_max == pytest.approx(float(entropy.max()))
    assert row.entropy_std == pytest.approx(float(entropy.std()))
    assert row.checkpoint == "ckA" and row.step == 0 and row.seq_len == T
    assert '"selection": "entropy"' in row.params


def test_online_policy_computes_every_step_with_fresh_draws(cache):
    ids, docs = batch(7)
    sel = selector(None, policy="online")
    fn = CountingEntropy()
    a = sel.select(ids, docs, 3, fn)
    b = sel.select(ids, docs, 3, fn)
    c = sel.select(ids, docs, 4, fn)
    assert fn.batches == [3, 3, 3] and a.cache_hits == 0
    assert torch.equal(a.positions, b.positions)  # seeded by (seed, doc, step)
    assert not torch.equal(a.positions, c.positions)


def test_precomputed_without_catalog_is_a_clear_error():
    with pytest.raises(ValueError, match="precomputed.*catalog"):
        selector(None)


def test_doc_ids_must_match_batch(cache):
    ids, docs = batch(8)
    with pytest.raises(ValueError, match="2 doc ids for a batch of 3"):
        selector(cache).select(ids, docs[:2], 0, CountingEntropy())


def test_changed_entropy_or_model_code_misses(cache, monkeypatch: pytest.MonkeyPatch):
    ids, docs = batch(9)
    selector(cache).select(ids, docs, 0, CountingEntropy())
    fn = CountingEntropy()
    monkeypatch.setattr(position_cache, "code_fingerprint", lambda: "edited-forward")
    other = selector(cache).select(ids, docs, 0, fn)
    assert fn.batches == [3] and other.cache_hits == 0
    rows = query(cache, "SELECT params_hash, params FROM positions WHERE doc_id = 'doc9-0'")
    assert len({h for h, _ in rows}) == 2
    assert sum('"code": "edited-forward"' in params for _, params in rows) == 1  # provenance


def test_code_fingerprint_changes_with_entropy_model_or_kernel_source(tmp_path, monkeypatch):
    for name in ("rl/positions.py", "rl/grpo.py", "models/deltanet/layer.py", "kernels/norms.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"# {name}\n")
    monkeypatch.setattr(position_cache, "PACKAGE", tmp_path)

    def fingerprint() -> str:
        position_cache.code_fingerprint.cache_clear()
        return position_cache.code_fingerprint()

    try:
        before = fingerprint()
        assert position_cache.code_fingerprint() == before
        assert position_cache.code_fingerprint.cache_info().misses == 1  # computed once per process
        (tmp_path / "rl/grpo.py").write_text("# not position code\n")
        (tmp_path / "models/README.md").write_text("not Python\n")
        assert fingerprint() == before
        for name in ("rl/positions.py", "models/deltanet/layer.py", "kernels/norms.py"):
            (tmp_path / name).write_text("# edited\n")
            after = fingerprint()
            assert after != before, name
            before = after
    finally:
        position_cache.code_fingerprint.cache_clear()


def test_the_catalog_is_read_once_per_refresh_window(cache, monkeypatch: pytest.MonkeyPatch):
    """Rows a positions stage wrote are read in one query when a window starts, not per batch."""
    ids, docs = batch(5, rows=4)
    selector(cache).select(ids, docs, step=0, entropy_fn=CountingEntropy())  # the positions stage
    reads = []
    real_get = PositionCache.get
    monkeypatch.setattr(PositionCache, "get", lambda self, *a: reads.append(a[0]) or real_get(self, *a))
    fn, sel = CountingEntropy(), selector(cache)
    for step in range(3):
        hit = sel.select(ids[step : step + 2], docs[step : step + 2], step=step, entropy_fn=fn)
        assert hit.cache_hits == 2 and hit.computed == 0
    assert reads == [None] and fn.batches == []  # one read of the whole window, no model pass
    sel.select(ids[:2], docs[:2], step=10, entropy_fn=fn)  # the next window: read again, then computed
    assert reads == [None, None] and fn.batches == [2]
