"""Long-document batches from Arrow shards: truncation, packing, seeded order, exact resume."""

from __future__ import annotations

import pytest
import torch
from corpus_helpers import write_corpus

from refine_tasks.corpus import CorpusError
from refine_tasks.corpus.loader import LongDocumentLoader


def drain(loader: LongDocumentLoader, n: int) -> list[tuple[list[str], torch.Tensor]]:
    return [(b.doc_ids, b.input_ids) for b in (loader.next_batch() for _ in range(n))]


def test_truncate_keeps_one_prefix_per_long_document(tmp_path):
    docs = write_corpus(tmp_path / "corpus")
    loader = LongDocumentLoader(tmp_path / "corpus", seq_len=100, batch_size=1, packing="truncate", seed=3)
    want = {d: ids[:100] for d, ids in docs.items() if len(ids) >= 100}
    seen = {}
    for ids, tokens in drain(loader, len(want)):
        assert tokens.shape == (1, 100) and tokens.dtype == torch.long
        seen[ids[0]] = tokens[0].tolist()
    assert seen == want  # every long document exactly once per epoch, the short ones skipped


def test_pack_cuts_the_concatenated_corpus_into_windows(tmp_path):
    docs = write_corpus(tmp_path / "corpus")
    stream = [t for ids in docs.values() for t in ids]
    loader = LongDocumentLoader(tmp_path / "corpus", seq_len=64, batch_size=2, packing="pack", seed=0)
    n = len(stream) // 64
    assert len(loader.sequences) == n
    windows = {}
    for ids, tokens in drain(loader, n // 2):
        for i, sid in enumerate(ids):
            windows[sid] = tokens[i].tolist()
    assert len(windows) == 2 * (n // 2)
    owner = [(d, k) for d, ids in docs.items() for k in range(len(ids))]  # (doc, offset) of each token
    for w in range(n):
        d, k = owner[w * 64]
        sid = d if k == 0 and len(docs[d]) == 64 else f"{d}@{k}"
        if sid in windows:
            assert windows.pop(sid) == stream[w * 64 : (w + 1) * 64]
    assert windows == {}  # every window read was one of the expected ones


def test_order_is_a_seeded_permutation_per_epoch(tmp_path):
    write_corpus(tmp_path / "corpus")
    a = LongDocumentLoader(tmp_path / "corpus", 50, 1, "pack", seed=1)
    n = len(a.sequences)
    first, second = drain(a, n), drain(a, n)
    assert sorted(i[0] for i, _ in first) == sorted(i[0] for i, _ in second)  # each epoch: all, once
    assert [i for i, _ in first] != [i for i, _ in second]  # a new order each epoch
    again = drain(LongDocumentLoader(tmp_path / "corpus", 50, 1, "pack", seed=1), n)
    other = drain(LongDocumentLoader(tmp_path / "corpus", 50, 1, "pack", seed=2), n)
    assert [i for i, _ in again] == [i for i, _ in first] and [i for i, _ in other] != [i for i, _ in first]
    assert a.passes() == 2.0  # two epochs read
    drain(a, n // 2)
    assert a.passes() == pytest.approx(2 + (n // 2) / n)


def test_cursor_resumes_exactly_across_an_epoch_boundary(tmp_path):
    write_corpus(tmp_path / "corpus")
    full = LongDocumentLoader(tmp_path / "corpus", 40, 3, "pack", seed=5)
    reference = drain(full, 12)
    part = LongDocumentLoader(tmp_path / "corpus", 40, 3, "pack", seed=5)
    drain(part, 7)
    state = part.state_dict()
    resumed = LongDocumentLoader(tmp_path / "corpus", 40, 3, "pack", seed=5)
    resumed.load_state_dict(state)
    rest = drain(resumed, 5)
    assert state["epoch"] >= 1 or full.epoch >= 1  # the 12 batches cross an epoch
    for (ids_a, t_a), (ids_b, t_b) in zip(reference[7:], rest, strict=True):
        assert ids_a == ids_b and torch.equal(t_a, t_b)


def test_too_few_sequences_is_a_clear_error(tmp_path):
    write_corpus(tmp_path / "corpus")
    with pytest.raises(CorpusError, match=r"train.seq_len=400 tokens .*\(longest document: 310 tokens\)"):
        LongDocumentLoader(tmp_path / "corpus", seq_len=400, batch_size=1)
    with pytest.raises(ValueError, match="train.packing='zip'"):
        LongDocumentLoader(tmp_path / "corpus", seq_len=40, batch_size=1, packing="zip")


def test_cursor_of_another_corpus_is_refused(tmp_path):
    write_corpus(tmp_path / "corpus")
    loader = LongDocumentLoader(tmp_path / "corpus", 40, 1, "pack")
    with pytest.raises(CorpusError, match="data cursor counts 3 sequences"):
        loader.load_state_dict({"epoch": 0, "index": 1, "sequences": 3})


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_split_each_epoch_without_overlap_or_loss(tmp_path, world: int) -> None:
    """`world` ranks of batch 2 over one epoch: disjoint, together every sequence of the epoch but
    the last partial global batch, row for row what one process of batch 2 x world reads."""
    write_corpus(tmp_path / "corpus")
    ranks = [
        LongDocumentLoader(tmp_path / "corpus", 50, 2, "pack", seed=4, rank=r, world=world)
        for r in range(world)
    ]
    single = LongDocumentLoader(tmp_path / "corpus", 50, 2 * world, "pack", seed=4)
    steps = ranks[0].batches_per_epoch()
    assert steps == len(single.sequences) // (2 * world) == single.batches_per_epoch() > 1
    per_rank = [drain(loader, steps) for loader in ranks]
    seen = [sid for batches in per_rank for ids, _ in batches for sid in ids]
    assert len(seen) == len(set(seen)) == steps * 2 * world  # no sequence twice in the epoch
    for s, (ids, tokens) in enumerate(drain(single, steps)):  # and none lost: the same rows, split
        assert ids == [sid for r in range(world) for sid in per_rank[r][s][0]]
        assert torch.equal(tokens, torch.cat([per_rank[r][s][1] for r in range(world)]))
    assert {loader.state_dict()["index"] for loader in ranks} == {single.state_dict()["index"]}
    with pytest.raises(ValueError, match="rank 2 is not one of world size 2"):
        LongDocumentLoader(tmp_path / "corpus", 50, 2, "pack", rank=2, world=2)
