"""benchmarks/base_memorise_cpu.py's measure, the recall probe's on ready documents (probe_documents):
where a generated document states and uses each record's value, and the retrieval gain (value
log-prob where used minus where stated) it computes from them."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from refine_tasks.corpus.retrieval_docs import retrieval_document  # noqa: E402
from refine_tasks.train.recall_probe import probe_documents, value_spans  # noqa: E402

PARAGRAPHS = [f"Paragraph {i} speaks of tariffs, harbours and wages, at some length." for i in range(40)]


def test_value_spans_are_each_records_value_stated_once_then_used() -> None:
    for seed in range(10):
        text = retrieval_document(random.Random(seed), PARAGRAPHS, 6, 4000)
        spans = [("stated" if v.kind == "statement" else "used", v.start, v.stop) for v in value_spans(text)]
        stated = [text[a:b] for kind, a, b in spans if kind == "stated"]
        used = [text[a:b] for kind, a, b in spans if kind == "used"]
        assert len(stated) == len(set(stated)) == 6 and 6 <= len(used) <= 18
        assert set(used) == set(stated)  # every record used at least once, nothing else
        first_use = min(a for kind, a, _ in spans if kind == "used")
        assert any(a < first_use for kind, a, _ in spans if kind == "stated")
        assert all(not text[a:b].endswith(".") and text[a:b].strip() == text[a:b] for _, a, b in spans)


class CopyModel(torch.nn.Module):
    """Predicts every token with log-prob 0 where it repeats an earlier bigram (a perfect copier),
    uniform elsewhere: its gain is log(vocab) per value token; copies=False: uniform everywhere."""

    def __init__(self, vocab: int, copies: bool = True) -> None:
        super().__init__()
        self.vocab, self.copies, self.w = vocab, copies, torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids: torch.Tensor):
        seq = ids[0].tolist() if self.copies else []
        logits = torch.zeros(1, ids.shape[1], self.vocab)
        for i in range(1, len(seq)):
            for j in range(i - 1):
                if seq[j] == seq[i - 1] and seq[j + 1] == seq[i]:
                    logits[0, i - 1, seq[i]] = 1e4
        return type("Out", (), {"logits": logits})()


class CharTokenizer:
    """One token per character, with offsets."""

    pad_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool, return_offsets_mapping: bool) -> dict:
        return {
            "input_ids": [ord(c) % 256 for c in text],
            "offset_mapping": [(i, i + 1) for i in range(len(text))],
        }


def test_a_model_that_copies_gains_and_a_uniform_one_does_not() -> None:
    texts = [retrieval_document(random.Random(s), PARAGRAPHS, 4, 1500) for s in range(3)]
    longest = max(map(len, texts))  # one token a character: every value inside the window
    probe = probe_documents(CopyModel(256), CharTokenizer(), texts, seq_len=longest)
    assert (
        probe["uses"] > 0 and probe["gain"] > 2.0
    )  # values copied where used, guessed (mostly) where stated
    flat = CopyModel(256, copies=False)  # uniform everywhere
    assert probe_documents(flat, CharTokenizer(), texts, seq_len=longest)["gain"] == 0.0
