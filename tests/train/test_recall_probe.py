"""The recall probe: every record's value found in a generated document, and the base's copy of it
read from teacher-forced argmax predictions (a model that knows each next token, one that knows none,
and one that knows only what the document said before)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import torch

from refine_tasks.corpus.retrieval_docs import retrieval_document
from refine_tasks.corpus.tokenizer import load_tokenizer
from refine_tasks.train.recall_probe import recall_probe, unseen_texts, value_spans

PARAGRAPHS = [
    "The harvest was late that year and the roads were poor.",
    "Merchants waited at the crossing for the water to fall.",
    "In the spring the council met again to settle the accounts of the town.",
] * 4


TEXTS = ["\n\n".join(PARAGRAPHS[i:] + PARAGRAPHS[:i]) for i in range(3)]


def seen(row: list[int], t: int) -> int:
    """The next token where the document had it before, else 0: a perfect retriever."""
    nxt = row[min(t + 1, len(row) - 1)]
    return nxt if nxt in row[: t + 1] else 0


class Predicts(torch.nn.Module):
    """A model whose argmax at each position is `rule(ids, t)`'s token for position t + 1."""

    def __init__(self, vocab: int, rule) -> None:
        super().__init__()
        self.vocab, self.rule, self.w = vocab, rule, torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids: torch.Tensor):
        row = ids[0].tolist()
        logits = torch.zeros(1, len(row), self.vocab)
        for t in range(len(row)):
            logits[0, t, self.rule(row, t)] = 1.0
        return SimpleNamespace(logits=logits)


def test_value_spans_are_every_records_statement_and_uses() -> None:
    doc = retrieval_document(random.Random(3), PARAGRAPHS, 4, 1500)
    spans = value_spans(doc)
    statements = [doc[s.start : s.stop] for s in spans if s.kind == "statement"]
    uses = [doc[s.start : s.stop] for s in spans if s.kind == "use"]
    assert len(statements) == 4 and 4 <= len(uses) <= 12
    assert set(uses) == set(statements)  # each use recalls a value stated before it
    for s in spans:
        first = doc.index(doc[s.start : s.stop])
        assert (first == s.start) == (s.kind == "statement")


def test_the_probe_reads_copies_from_the_models_predictions(tokenizer) -> None:

    vocab = len(tokenizer)
    knows_all = recall_probe(Predicts(vocab, lambda r, t: r[min(t + 1, len(r) - 1)]), tokenizer, TEXTS,
                             facts=4, chars=1500, seq_len=2048)  # fmt: skip
    assert knows_all["use_exact"] == knows_all["statement_exact"] == 1.0 and knows_all["uses"] >= 12
    assert abs(knows_all["gain"]) < 1e-6  # as sure of every value token wherever it stands
    knows_none = recall_probe(
        Predicts(vocab, lambda r, t: 0), tokenizer, TEXTS, facts=4, chars=1500, seq_len=2048
    )
    assert knows_none["use_exact"] == knows_none["statement_exact"] == 0.0
    assert abs(knows_none["gain"]) < 1e-6

    retriever = recall_probe(Predicts(vocab, seen), tokenizer, TEXTS, facts=4, chars=1500, seq_len=2048)
    assert retriever["use_exact"] == 1.0 and retriever["statement_exact"] < 1.0  # only uses are retrievable
    # a sure token has log-prob 1 - log(vocab - 1 + e), another -log(vocab - 1 + e): the gain is at most 1
    assert 0.3 < retriever["gain"] <= 1.0
    assert retriever["gain"] == retriever["use_logprob"] - retriever["statement_logprob"]
    short = recall_probe(Predicts(vocab, lambda r, t: 0), tokenizer, TEXTS, facts=4, chars=1500, seq_len=64)
    assert short["uses"] + short["statements"] < knows_none["uses"] + knows_none["statements"]


def test_unseen_texts_are_the_midtraining_share(tmp_path, tokenizer) -> None:
    from corpus_helpers import write_corpus

    write_corpus(tmp_path / "c", [[40 + i for i in range(10)]], source=lambda name: "test")
    assert unseen_texts(tmp_path / "c", tokenizer, 0.0, 5) == []
    some = unseen_texts(tmp_path / "c", tokenizer, 0.5, 20)
    assert 0 < len(some) < 10 and some == unseen_texts(tmp_path / "c", tokenizer, 0.5, 20)
    assert unseen_texts(tmp_path / "c", tokenizer, 0.5, 2) == some[:2]


def test_padding_to_seq_len_leaves_the_predictions_alone(tokenizer, tiny_model) -> None:
    """Each document is padded at its end to seq_len (the shape training compiled); a causal model's
    predictions before the padding, and so the probe, do not change with it."""
    texts = TEXTS[:2]
    kw = {"facts": 4, "chars": 1000}
    assert len(tokenizer.encode(retrieval_document(random.Random(0), PARAGRAPHS, 4, 1000))) < 1536
    at = [recall_probe(tiny_model, tokenizer, texts, seq_len=n, **kw) for n in (1536, 2048)]
    assert at[0] == at[1] and at[0]["uses"] > 0
    ids = torch.randint(0, len(tokenizer), (1, 300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        alone = tiny_model(ids).logits
        padded = tiny_model(torch.cat([ids, torch.zeros(1, 212, dtype=torch.long)], 1)).logits[:, :300]
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-4)


def test_the_probe_finds_the_values_with_the_gpu_profiles_tokenizer() -> None:
    """The 32,000-piece Mistral SentencePiece (params-gpu-small.yaml) gives the offsets the probe
    reads values by: a perfect retriever copies every used value and no stated one."""
    tokenizer = load_tokenizer("mistral-common:tokenizer.model.v1")

    probe = recall_probe(Predicts(len(tokenizer), seen), tokenizer, TEXTS, facts=4, chars=1500, seq_len=2048)
    assert probe["uses"] >= 12 and probe["statements"] == 12
    assert probe["use_exact"] == 1.0 and probe["statement_exact"] == 0.0
