"""Validation during training: held-out sequences never trained on, val/loss and val/accuracy."""

from __future__ import annotations

import json

import pytest
import torch
from corpus_helpers import write_corpus

from refine_tasks.corpus import CorpusError
from refine_tasks.corpus.loader import Batch, LongDocumentLoader
from refine_tasks.models import build_model
from refine_tasks.train.trainer import train
from refine_tasks.train.validation import validate

LENGTHS = [[120, 130, 140, 150], [160, 170, 180, 190], [200, 210, 220, 230]]


def _synthetic(name: str) -> str:
    return "synthetic:retrieval" if name.endswith("-3") else "test"


def test_held_out_sequences_are_never_trained_on_and_the_same_for_every_seed(tmp_path):
    write_corpus(tmp_path / "c", LENGTHS, source=_synthetic)
    held = None
    for seed in (0, 1, 2):
        loader = LongDocumentLoader(tmp_path / "c", 96, 2, "truncate", seed, held_out=3, synthetic=True)
        assert held is None or loader.held_out_ids == held
        held = loader.held_out_ids
        assert len(held) == 3 and not any(h.endswith("-3") for h in held)  # natural documents only
        trained = {d for _ in range(3 * loader.batches_per_epoch()) for d in loader.next_batch().doc_ids}
        assert trained and not trained & set(held)
        assert len(trained) + len(held) == 12  # everything else is trained on
    val = [d for b in loader.held_out_batches() for d in b.doc_ids]
    assert val == held


def test_packed_natural_sequences_and_held_out_ones_do_not_depend_on_generated_documents(tmp_path):
    write_corpus(tmp_path / "c", LENGTHS, source=_synthetic)
    both = LongDocumentLoader(tmp_path / "c", 64, 2, "pack", 0, held_out=3, synthetic=True)
    natural = LongDocumentLoader(tmp_path / "c", 64, 2, "pack", 0, held_out=3)
    assert both.held_out_ids == natural.held_out_ids
    natural_ids = {natural.sequence_id(k) for k in range(len(natural.sequences))}
    both_ids = {both.sequence_id(k) for k in range(len(both.sequences))}
    assert natural_ids < both_ids and not any("-3" in i for i in natural_ids)


def test_synthetic_documents_are_read_only_when_asked(tmp_path):
    write_corpus(tmp_path / "c", LENGTHS, source=_synthetic)
    natural = LongDocumentLoader(tmp_path / "c", 96, 1, "truncate", 0)
    both = LongDocumentLoader(tmp_path / "c", 96, 1, "truncate", 0, synthetic=True)
    ids = {natural.sequence_id(k) for k in range(len(natural.sequences))}
    assert len(ids) == 9 and not any(i.endswith("-3") for i in ids)
    assert len(both.sequences) == 12


def test_a_midtrain_share_splits_the_natural_documents_between_base_and_midtraining(tmp_path):
    """corpus.midtrain_share: each natural document is read by one side alone, chosen by id (the same
    every time, about the share); generated documents stay the base's."""
    lengths = [[120 + 10 * i for i in range(12)] for _ in range(4)]  # 48 documents, doc<s>-3 generated
    write_corpus(tmp_path / "c", lengths, source=_synthetic)
    whole = LongDocumentLoader(tmp_path / "c", 96, 1, "truncate", 0, synthetic=True)
    base = LongDocumentLoader(tmp_path / "c", 96, 1, "truncate", 0, synthetic=True, midtrain_share=0.5)
    mid = LongDocumentLoader(tmp_path / "c", 96, 1, "truncate", 0, midtrain_share=0.5)
    ids = [{x.sequence_id(k) for k in range(len(x.sequences))} for x in (whole, base, mid)]
    generated = {i for i in ids[0] if i.endswith("-3")}
    assert len(ids[0]) == 48 and len(generated) == 4
    assert not ids[1] & ids[2] and ids[1] | ids[2] == ids[0]  # disjoint, nothing lost
    assert generated <= ids[1] and 12 <= len(ids[2]) <= 32  # about half of the 44 natural ones
    again = LongDocumentLoader(tmp_path / "c", 96, 1, "truncate", 5, midtrain_share=0.5)
    assert {again.sequence_id(k) for k in range(len(again.sequences))} == ids[2]  # by id, not by seed


@pytest.mark.parametrize("packing", ["truncate", "pack"])
def test_with_a_midtrain_share_the_base_validates_on_midtrainings_held_out_sequences(tmp_path, packing):
    """The base's own natural text is woven into the generated documents, so it validates on the
    sequences SFT and ReFINE hold out, read for that alone, and trains on all of its own."""
    lengths = [[120 + 10 * i for i in range(12)] for _ in range(4)]
    write_corpus(tmp_path / "c", lengths, source=_synthetic)
    mid = LongDocumentLoader(tmp_path / "c", 96, 1, packing, 0, held_out=3, midtrain_share=0.5)
    base = LongDocumentLoader(
        tmp_path / "c", 96, 1, packing, 0, held_out=3, synthetic=True, midtrain_share=0.5
    )
    whole = LongDocumentLoader(tmp_path / "c", 96, 1, packing, 0, synthetic=True, midtrain_share=0.5)
    assert len(base.held_out_ids) == 3 and base.held_out_ids == mid.held_out_ids
    trained = {base.sequence_id(k) for k in range(len(base.sequences))}
    assert trained == {whole.sequence_id(k) for k in range(len(whole.sequences))}  # nothing set aside
    read_by_base = {i.split("@")[0] for i in trained}
    assert not {h.split("@")[0] for h in base.held_out_ids} & read_by_base
    assert [b.input_ids.tolist() for b in base.held_out_batches()] == [
        b.input_ids.tolist() for b in mid.held_out_batches()
    ]
    with pytest.raises(CorpusError, match=r"mid-training \(corpus.midtrain_share\) sequences"):
        LongDocumentLoader(
            tmp_path / "c", 96, 1, packing, 0, held_out=400, synthetic=True, midtrain_share=0.5
        )


def test_too_few_sequences_to_hold_out_is_a_clear_error(tmp_path):
    write_corpus(tmp_path / "c", [[120, 130, 140]])
    with pytest.raises(CorpusError, match="train.val_sequences=2"):
        LongDocumentLoader(tmp_path / "c", 96, 2, "truncate", 0, held_out=2)


def test_validate_matches_a_float64_reference():
    torch.manual_seed(0)
    model = build_model("tiny", vocab_size=200)
    g = torch.Generator().manual_seed(3)
    batches = [Batch(torch.randint(0, 200, (2, 33), generator=g), ["a", "b"]) for _ in range(2)]
    got = validate(model, batches, torch.device("cpu"))
    model64 = model.double()
    ids = torch.cat([b.input_ids for b in batches])
    with torch.no_grad():
        logits = model64(ids).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    acc = (logits.argmax(-1) == ids[:, 1:]).double().mean()
    assert got["val/tokens"] == 4 * 32
    assert got["val/loss"] == pytest.approx(float(loss), rel=1e-4)
    assert got["val/accuracy"] == pytest.approx(float(acc), abs=1 / 128 + 1e-9)
    assert model64.training  # back in the mode it was in


def test_training_logs_validation_every_n_steps_and_at_the_end(make_config, tmp_path):
    write_corpus(tmp_path / "data" / "corpus", LENGTHS)
    cfg = make_config(
        "train.seq_len=96", "train.max_steps=5", "train.val_every=2", "train.val_sequences=2",
        "refine.coef=0", f"train.out_dir={tmp_path / 'run'}",
    )  # fmt: skip
    train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "val/loss" in x] == [2, 4, 5]
    assert all(0 <= x["val/accuracy"] <= 1 and x["val/loss"] > 0 for x in lines if "val/loss" in x)
    tags = _tensorboard_tags(tmp_path / "run" / "tensorboard")
    assert {"val/loss", "val/accuracy"} <= tags


def _tensorboard_tags(folder) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return set(acc.Tags()["scalars"])


# generated documents of 30-95 tokens beside natural ones, for the windows of synthetic_windows
MIXED = [[120, 40, 130, 95, 140, 30], [160, 60, 170, 75, 180, 55], [200, 90, 210, 35, 220, 200]]


def _every_other_generated(name: str) -> str:
    return "synthetic:retrieval" if int(name.rsplit("-", 1)[1]) % 2 else "test"


def _windows(loader: LongDocumentLoader, docs: dict[str, list[int]]) -> list[list[int]]:
    generated = [i for i in range(len(loader.sequences)) if loader.sequence_id(i).split("@")[0] in docs]
    return [loader.tokens(i).tolist() for i in generated]


def test_aligned_windows_begin_at_generated_documents_and_hold_each_whole(tmp_path):
    """synthetic_windows=aligned: every window of generated documents begins at one's first token, and
    each document lies whole (or its first seq_len tokens) inside one window, so a record's statement
    and its uses share a sequence; a window's rest is the next document's head, and that document
    begins the next window. stream (the default): the documents concatenated and cut as natural ones."""
    corpus = write_corpus(tmp_path / "c", MIXED, source=_every_other_generated)
    generated = {d: ids for d, ids in corpus.items() if _every_other_generated(d).startswith("synthetic")}
    stream = [t for ids in generated.values() for t in ids]
    offsets, at = [], 0
    for ids in generated.values():  # manifest order
        offsets.append((at, at + len(ids)))
        at += len(ids)
    want, i = [], 0
    while i < len(offsets) and offsets[i][0] + 64 <= len(stream):
        begin = offsets[i][0]
        want.append(stream[begin : begin + 64])
        cut = next(k for k in range(i, len(offsets)) if offsets[k][1] > begin + 64 or k == len(offsets) - 1)
        i = cut if cut > i and offsets[cut][1] > begin + 64 else cut + 1
    assert len(want) >= 5
    aligned = LongDocumentLoader(
        tmp_path / "c", 64, 1, "pack", 0, synthetic=True, synthetic_windows="aligned"
    )
    assert _windows(aligned, generated) == want
    for begin, end in offsets[:-1]:  # each document whole (or its head) in one window
        n = min(end - begin, 64)
        assert any(stream[begin : begin + n] == w[k : k + n] for w in want for k in range(65 - n))
    stream_loader = LongDocumentLoader(tmp_path / "c", 64, 1, "pack", 0, synthetic=True)  # the default
    assert _windows(stream_loader, generated) == [stream[k : k + 64] for k in range(0, len(stream) - 63, 64)]
    with pytest.raises(ValueError, match="synthetic_windows"):
        LongDocumentLoader(tmp_path / "c", 64, 1, "pack", 0, synthetic=True, synthetic_windows="zip")
