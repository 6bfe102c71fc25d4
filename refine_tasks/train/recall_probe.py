"""Does the base retrieve in context on the kind of document it was trained on? The recall probe.

NIAH asks for a value in RULER's wording, which the base never reads; a 0 there does not say
whether the base learnt to retrieve at all or only not in that wording. The probe answers the
first question. It builds retrieval documents (refine_tasks.corpus.retrieval_docs) from natural
text the base never read (the documents kept for mid-training, corpus.midtrain_share), runs the
base over each once, and reads the argmax prediction at every token of every record's value,
teacher-forced:

  use_exact        the share of later uses whose whole value the base predicts: retrievable,
                   the value was stated earlier in the document;
  statement_exact  the same at the statements, where the value first appears: not retrievable,
                   near 0 for any model (a few digits of chance).

A base that retrieves in context has use_exact well above statement_exact; one that has only
learnt the documents' wording has both near 0. Before whole values come out right, the log-probs
move first:

  gain             the mean log-probability of a value's tokens where it is used, minus where it is
                   stated (nats/token): the value is random, so only reading it back from its
                   statement raises the first above the second (0 for a model that does not).
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from refine_tasks.config import PipelineConfig
from refine_tasks.corpus import shard_paths
from refine_tasks.corpus.loader import reads
from refine_tasks.corpus.retrieval_docs import STATEMENTS, USES, retrieval_document, sentence_pattern
from refine_tasks.corpus.shards import read_shard

_USES = [sentence_pattern(t) for t in USES]
_STATEMENTS = [sentence_pattern(t) for t in STATEMENTS]


@dataclass(frozen=True)
class ValueSpan:
    kind: str  # "use" or "statement"
    start: int  # characters of the document
    stop: int


def value_spans(text: str) -> list[ValueSpan]:
    """Every record's value in a generated document: where it is stated and where it is used (each
    inserted sentence is a paragraph of its own)."""
    spans, offset = [], 0
    for paragraph in text.split("\n\n"):
        for kind, patterns in (("use", _USES), ("statement", _STATEMENTS)):
            m = next((m for p in patterns if (m := p.match(paragraph))), None)
            if m is not None:
                spans.append(ValueSpan(kind, offset + m.start("value"), offset + m.end("value")))
                break
        offset += len(paragraph) + 2
    return spans


def unseen_texts(corpus_dir: Path, tokenizer, midtrain_share: float, n: int) -> list[str]:
    """Up to n natural documents kept for mid-training (the loader's `reads` for mid-training: never
    read by the base, never drawn into a generated document), decoded from the corpus's shards; the
    same ones every time (by id hash). Only the chosen documents' tokens leave Arrow: the GPU
    profile's corpus holds 50M tokens."""
    if not midtrain_share:
        return []
    chosen = []  # (id hash, shard, row)
    tables = [read_shard(path, ["doc_id", "source", "input_ids"]) for path in shard_paths(corpus_dir)]
    for s, table in enumerate(tables):
        for row, (doc_id, source) in enumerate(
            zip(table["doc_id"].to_pylist(), table["source"].to_pylist(), strict=True)
        ):
            if reads(source, doc_id, False, midtrain_share):
                chosen.append((hashlib.sha256(doc_id.encode()).hexdigest(), s, row))
    return [
        tokenizer.decode(tables[s]["input_ids"][row].as_py(), skip_special_tokens=True)
        for _, s, row in sorted(chosen)[:n]
    ]


def recall_probe(
    model, tokenizer, texts: list[str], *, facts: int, chars: int, seq_len: int, seed: int = 0
) -> dict[str, float | int | None]:
    """`probe_documents` over one generated document per text (retrieval_document with `facts`
    records in `chars` characters of its paragraphs)."""
    documents = []
    for i, text in enumerate(texts):
        paragraphs = [p for p in text.split("\n\n") if p.strip()]
        if paragraphs:
            documents.append(retrieval_document(random.Random(f"probe:{seed}:{i}"), paragraphs, facts, chars))
    return probe_documents(model, tokenizer, documents, seq_len)


@torch.no_grad()
def probe_documents(model, tokenizer, documents: list[str], seq_len: int) -> dict[str, float | int | None]:
    """{"use_exact", "statement_exact", "uses", "statements", "use_logprob", "statement_logprob", "gain"}
    over generated documents (the first seq_len tokens of each; values cut by that end are left out;
    a share, a mean log-prob per value token, or the gain, is None when there was no value of its
    kind)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    hits: dict[str, list[bool]] = {"use": [], "statement": []}
    logprobs: dict[str, list[float]] = {"use": [], "statement": []}
    try:
        for document in documents:
            encoded = tokenizer(document, return_offsets_mapping=True, add_special_tokens=False)
            ids, offsets = encoded["input_ids"][:seq_len], encoded["offset_mapping"][:seq_len]
            # padded at the end to seq_len, the shape training compiled its kernels for (a causal
            # model's predictions before the padding do not see it)
            padded = ids + [tokenizer.pad_token_id or 0] * (seq_len - len(ids))
            logits = model(torch.tensor([padded], device=device)).logits[0]
            predicted = logits.argmax(-1).tolist()
            kinds, at = [], []  # each value token: its span's kind, its position
            for span in value_spans(document):
                tokens = [t for t, (a, b) in enumerate(offsets) if a < span.stop and b > span.start]
                if not tokens or tokens[0] == 0 or offsets[-1][1] < span.stop:
                    continue  # at the very start, or cut by seq_len
                hits[span.kind].append(all(predicted[t - 1] == ids[t] for t in tokens))
                kinds += [span.kind] * len(tokens)
                at += tokens
            if at:  # log-softmax of the value tokens' rows alone (a 4,096 x 32,000 one is 0.5 GB)
                rows = torch.tensor([t - 1 for t in at], device=device)
                target = torch.tensor([ids[t] for t in at], device=device)
                lp = logits[rows].float().log_softmax(-1).gather(-1, target[:, None])[:, 0].tolist()
                for kind, value in zip(kinds, lp, strict=True):
                    logprobs[kind].append(value)
    finally:
        model.train(was_training)
    share = {k: (sum(v) / len(v) if v else None) for k, v in hits.items()}
    mean = {k: (sum(v) / len(v) if v else None) for k, v in logprobs.items()}
    return {
        "use_exact": share["use"],
        "statement_exact": share["statement"],
        "uses": len(hits["use"]),
        "statements": len(hits["statement"]),
        "use_logprob": mean["use"],
        "statement_logprob": mean["statement"],
        "gain": None if None in mean.values() else mean["use"] - mean["statement"],
    }


def base_probe(cfg: PipelineConfig, n: int) -> Callable[..., dict] | None:
    """recall_probe(model) at a run's settings (corpus.retrieval_facts and retrieval_chars, train.seq_len)
    on n unseen texts (`unseen_texts`, read once); None without text the run has not read
    (corpus.midtrain_share 0). The base's validation runs it at every point, and its stage at the end."""
    from refine_tasks.corpus.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(cfg.paths.tokenizer_dir)
    texts = unseen_texts(cfg.paths.corpus_dir, tokenizer, cfg.corpus.midtrain_share, n)
    if not texts:
        return None
    c = cfg.corpus
    return functools.partial(
        recall_probe,
        tokenizer=tokenizer,
        texts=texts,
        facts=c.retrieval_facts,
        chars=c.retrieval_chars,
        seq_len=cfg.train.seq_len,
    )
