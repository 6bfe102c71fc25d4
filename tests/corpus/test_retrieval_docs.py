"""Generated retrieval documents: facts stated early and used later; never the evaluation sets'
wording, needles or keys; mixed in at the configured ratio, read by base pretraining only."""

from __future__ import annotations

import random
import re

from refine_tasks.corpus.clean import Document, document_id
from refine_tasks.corpus.retrieval_docs import (
    PEOPLE,
    PLACES,
    STATEMENTS,
    USES,
    retrieval_document,
    with_retrieval_documents,
)
from refine_tasks.evaluate.haystack import NOISE_PARAGRAPH, key_words
from refine_tasks.evaluate.niah import NEEDLE, _prompt
from refine_tasks.evaluate.qa import INSTRUCTION, qa_prompt

PARAGRAPHS = [f"Paragraph {i} speaks of plain matters of state and trade, at some length." for i in range(40)]


def _fixed_words(template: str) -> list[str]:
    """The template's own words (placeholders removed), lower-case."""
    return re.findall(r"[a-z]+", re.sub(r"\{[a-z_]+\}", " ", template.lower()))


def _ngrams(words: list[str], n: int = 3) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _eval_texts() -> list[str]:
    texts = [NEEDLE, NOISE_PARAGRAPH, INSTRUCTION]
    texts += [_prompt(kind, ["KEY"], n, "CONTEXT") for kind in ("numbers", "words", "uuids") for n in (1, 2)]
    texts += [_prompt("numbers", ["K1", "K2"], 2, "CONTEXT")]
    texts.append(qa_prompt("Q?", ["D1", "D2"]))
    return texts


def test_templates_share_no_three_words_with_the_evaluation_templates():
    eval_grams = set().union(*(_ngrams(_fixed_words(t)) for t in _eval_texts()))
    assert len(eval_grams) > 30  # the evaluation wording was read
    for template in (*STATEMENTS, *USES):
        shared = _ngrams(_fixed_words(template)) & eval_grams
        assert not shared, (template, shared)


def test_documents_hold_no_needle_values_or_keys_of_the_evaluation():
    adjectives, nouns = key_words()
    ruler_keys = {f"{a}-{n}" for a in adjectives for n in nouns}
    docs = [retrieval_document(random.Random(i), PARAGRAPHS, 6, 6000) for i in range(30)]
    for text in docs:
        assert not re.search(r"\b\d{7}\b", text)  # RULER's values: 7-digit numbers
        assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-", text)  # and UUIDs
        assert "special magic" not in text.lower() and "Question:" not in text
        codes = set(re.findall(r"\b[a-z]+-[a-z]+\b", text))
        assert not codes & ruler_keys


def test_each_fact_is_stated_in_the_first_fifth_and_used_later():
    text = retrieval_document(random.Random(7), PARAGRAPHS, 5, 8000)
    assert len(text) >= 8000
    paragraphs = text.split("\n\n")
    subjects = [s for s in (*PLACES, *PEOPLE) if s in text]
    assert len(subjects) == 5
    for subject in subjects:
        at = [i for i, p in enumerate(paragraphs) if subject in p]
        assert at[0] < len(paragraphs) // 5 + 2 and len(at) >= 2
        stated = paragraphs[at[0]]
        assert any(stated.startswith(t.split("{")[0]) for t in STATEMENTS)
        for later in at[1:]:
            assert any(paragraphs[later].startswith(t.split("{")[0]) for t in USES)
            # the same value, recalled: the statement's last word is in the use
            assert stated.rstrip(".").split()[-1] in paragraphs[later]


def test_mixing_follows_the_ratio_and_is_deterministic():
    natural = [
        Document(document_id(f"n{i}"), f"src:{i}", "\n\n".join(PARAGRAPHS[i : i + 10])) for i in range(8)
    ]
    mixed = list(with_retrieval_documents(natural, 0.5, 2000))
    synthetic = [d for d in mixed if d.source.startswith("synthetic:retrieval:")]
    assert len(synthetic) == 4 and len(mixed) == 12
    assert [d for d in mixed if not d.source.startswith("synthetic:")] == natural
    again = list(with_retrieval_documents(natural, 0.5, 2000))
    assert [d.doc_id for d in again] == [d.doc_id for d in mixed]
    assert all(d.doc_id == document_id(d.text) for d in synthetic)
