"""Generated retrieval documents: facts stated early and used later; never the evaluation sets'
wording, needles or keys; mixed in at the configured ratio, read by base pretraining only."""

from __future__ import annotations

import random
import re

from refine_tasks.corpus.clean import Document, document_id, for_midtrain
from refine_tasks.corpus.retrieval_docs import (
    PEOPLE,
    PLACES,
    STATEMENTS,
    USES,
    retrieval_document,
    sentence_pattern,
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


def _facts(paragraphs: list[str], templates) -> list[tuple[int, str, str, str]]:
    """(paragraph index, subject, attribute, value) of every paragraph one of `templates` reads."""
    found = []
    for i, text in enumerate(paragraphs):
        for template in templates:
            m = sentence_pattern(template).match(text)
            if m:
                found.append((i, m["subject"], m["attribute"], m["value"]))
                break
    return found


def test_each_fact_is_stated_in_the_first_half_and_used_later_with_its_value():
    natural = [f"Paragraph {i} speaks of tariffs, harbours and wages, at some length." for i in range(40)]
    for seed in range(20):
        text = retrieval_document(random.Random(seed), natural, 8, 8000)
        assert len(text) >= 8000
        paragraphs = text.split("\n\n")
        n_natural = sum(p in natural for p in paragraphs)
        stated = _facts(paragraphs, STATEMENTS)
        used = _facts(paragraphs, USES)
        assert len(stated) == 8 and len({s for _, s, _, _ in stated}) == 8
        assert 8 <= len(used) <= 24
        for at, subject, attribute, value in stated:
            assert sum(p in natural for p in paragraphs[:at]) < n_natural // 2 + 1  # in the first half
            uses = [u for u in used if u[1] == subject]
            assert uses, subject
            for later, _, use_attribute, use_value in uses:  # after the statement, the same record
                assert later > at and (use_attribute, use_value) == (attribute, value)
            words = subject.split()
            assert subject in (*PLACES, *PEOPLE) or words[0] == "the" and "-" not in subject


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


def test_documents_kept_for_midtraining_are_neither_counted_nor_drawn_from():
    natural = [
        Document(document_id(f"n{i}"), f"src:{i}", "\n\n".join(f"Address {i}, part {k}." for k in range(30)))
        for i in range(16)
    ]
    kept = {d.doc_id for d in natural if for_midtrain(d.doc_id, 0.5)}
    assert 0 < len(kept) < 16
    mixed = list(with_retrieval_documents(natural, 2, 600, 2, midtrain_share=0.5))
    assert [d for d in mixed if not d.source.startswith("synthetic:")] == natural  # all passed through
    synthetic = [d for d in mixed if d.source.startswith("synthetic:")]
    assert len(synthetic) == 2 * (16 - len(kept))  # counted for the base's documents only
    kept_addresses = {d.source.split(":")[1] for d in natural if d.doc_id in kept}
    drawn = {m for d in synthetic for m in re.findall(r"Address (\d+), part", d.text)}
    assert drawn and not drawn & kept_addresses
