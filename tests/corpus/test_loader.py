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
