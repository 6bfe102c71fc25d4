"""benchmarks/base_memorise_cpu.py's measure: where a generated document states and uses each record's
value, and the retrieval gain (value log-prob where used minus where stated) it computes from them."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.base_memorise_cpu import retrieval_gain, value_spans  # noqa: E402
from refine_tasks.corpus.retrieval_docs import retrieval_document  # noqa: E402

PARAGRAPHS = [f"Paragraph {i} speaks of tariffs, harbours and wages, at some length." for i in range(40)]


def test_value_spans_are_each_records_value_stated_once_then_used() -> None:
    for seed in range(10):
        text = retrieval_document(random.Random(seed), PARAGRAPHS, 6, 4000)
        spans = value_spans(text)
        stated = [text[a:b] for kind, a, b in spans if kind == "stated"]
        used = [text[a:b] for kind, a, b in spans if kind == "used"]
        assert len(stated) == len(set(stated)) == 6 and 6 <= len(used) <= 18
        assert set(used) == set(stated)  # every record used at least once, nothing else
        first_use = min(a for kind, a, _ in spans if kind == "used")
        assert any(a < first_use for kind, a, _ in spans if kind == "stated")
        assert all(not text[a:b].endswith(".") and text[a:b].strip() == text[a:b] for _, a, b in spans)


class CopyModel(torch.nn.Module):
    """Predicts every token with log-prob 0 where it repeats an earlier bigram (a perfect copier),
    uniform elsewhere: its gain is log(vocab) per value token."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, ids: torch.Tensor):
        seq = ids[0].tolist()
        logits = torch.zeros(1, len(seq), self.vocab)
        for i in range(1, len(seq)):
            for j in range(i - 1):
                if seq[j] == seq[i - 1] and seq[j + 1] == seq[i]:
                    logits[0, i - 1, seq[i]] = 1e4
        return type("Out", (), {"logits": logits})()


class CharTokenizer:
    """One token per character, with offsets."""

    def __call__(self, text: str, add_special_tokens: bool, return_offsets_mapping: bool) -> dict:
        return {
            "input_ids": [ord(c) % 256 for c in text],
            "offset_mapping": [(i, i + 1) for i in range(len(text))],
        }


def test_a_model_that_copies_gains_and_a_uniform_one_does_not() -> None:
    texts = [retrieval_document(random.Random(s), PARAGRAPHS, 4, 1500) for s in range(3)]
    gain, uses = retrieval_gain(CopyModel(256), CharTokenizer(), texts, seq_len=100_000)
    assert uses > 0 and gain > 2.0  # values copied where used, guessed (mostly) where stated
    flat = lambda ids: type("Out", (), {"logits": torch.zeros(1, ids.shape[1], 256)})()  # noqa: E731
    assert retrieval_gain(flat, CharTokenizer(), texts, seq_len=100_000)[0] == 0.0
