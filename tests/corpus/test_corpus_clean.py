"""refine_tasks.corpus.clean: normalisation, control characters, length limits, exact dedup."""

from __future__ import annotations

import hashlib
import random
import unicodedata

from refine_tasks.config import CorpusConfig
from refine_tasks.corpus.clean import CONTROL_CHARS, clean_documents, clean_text, document_id
from refine_tasks.corpus.sources import DropLog, RawDocument

BODY = "We hold these truths to be self-evident, that all men are created equal. " * 4


def random_messy_text(rng: random.Random, n: int) -> str:
    pool = [chr(c) for c in range(0x00, 0xA0)] + [
        "e\u0301",
        "\u00e9",
        "\ufb01",
        "\ufeff",
        "\r\n",
        "\u4e2d",
        "😀",
    ]
    return "".join(rng.choice(pool) for _ in range(n))


def test_clean_text_examples() -> None:
    assert (
        clean_text("  Cafe\u0301\r\nline\rnext\x00\x07\x1b[0m\ttab \ufeff ")
        == "Caf\u00e9\nline\nnext[0m\ttab"
    )
    assert clean_text("\ufb01ne \u2460", "NFKC") == "fine 1"
    assert clean_text("\ufb01ne \u2460", "NFC") == "\ufb01ne \u2460"
    assert clean_text("\x85\x9f\x7f") == ""  # C1 controls and DEL only


def test_clean_text_on_random_input_is_normal_control_free_and_idempotent() -> None:
    rng = random.Random(0)
    for _ in range(200):
        raw = random_messy_text(rng, rng.randint(0, 200))
        for form in ("NFC", "NFKC"):
            out = clean_text(raw, form)
            assert not CONTROL_CHARS.search(out)
            assert "\r" not in out
            assert unicodedata.is_normalized(form, out)
            assert out == out.strip()
            assert clean_text(out, form) == out


def test_document_id_is_sha256_of_the_cleaned_text() -> None:
    text = clean_text("Fellow-Citizens \u00e9")
    assert document_id(text) == hashlib.sha256(text.encode("utf-8")).hexdigest()


def run(docs: list[RawDocument], **cfg) -> tuple[list, DropLog]:
    drops = DropLog()
    return list(clean_documents(docs, CorpusConfig(**cfg), drops)), drops


def test_duplicates_are_exact_after_clean_up() -> None:
    docs = [
        RawDocument("Cafe\u0301 " + BODY, "a.txt"),
        RawDocument(
            "Caf\u00e9 " + BODY.replace(". ", ".\x00 ") + "\r\n", "b.jsonl:4"
        ),  # same text once cleaned
        RawDocument("Cafe " + BODY, "c.txt"),  # one letter differs: not a duplicate
    ]
    out, drops = run(docs)
    assert [d.source for d in out] == ["a.txt", "c.txt"]
    assert drops.counts == {"duplicate": 1}
    assert drops.examples["duplicate"] == [f"b.jsonl:4: same text as a.txt (doc_id {out[0].doc_id[:12]})"]
    assert out[0].doc_id == document_id(out[0].text)


def test_too_short_empty_and_too_long_are_dropped_with_their_origin() -> None:
    docs = [
        RawDocument("tiny", "t.txt"),
        RawDocument(" \x00\x01 \n", "e.jsonl:2"),
        RawDocument("x" * 1001, "long.jsonl:1"),
        RawDocument(BODY, "ok.txt"),
    ]
    out, drops = run(docs, min_chars=100, max_doc_chars=1000)
    assert [d.source for d in out] == ["ok.txt"]
    assert drops.counts == {"too_short": 1, "empty": 1, "too_long": 1}
    assert drops.examples["too_short"] == ["t.txt: 4 characters, below corpus.min_chars=100"]
    assert drops.examples["empty"] == ["e.jsonl:2: no text after clean-up"]
    assert drops.examples["too_long"] == ["long.jsonl:1: 1,001 characters exceeds corpus.max_doc_chars=1,000"]


def test_drop_log_keeps_counts_beyond_its_examples() -> None:
    out, drops = run([RawDocument(f"short {i}", f"f{i}") for i in range(50)])
    assert out == [] and drops.counts["too_short"] == 50 and drops.total == 50
    assert len(drops.examples["too_short"]) == 20
