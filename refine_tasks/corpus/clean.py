"""Clean-up and filtering: Unicode normalisation, control characters, length limits, exact dedup.

A document's id is the SHA-256 of its cleaned text (UTF-8), so the same text always has the
same id, whichever file it came from, and exact duplicates are the documents whose id was
already seen.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from refine_tasks.config import CorpusConfig
from refine_tasks.corpus.sources import DropLog, RawDocument

# C0 and C1 control characters except tab and newline (carriage returns become newlines first),
# plus the byte-order mark, which some editors scatter through concatenated files.
CONTROL_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")
NEWLINES = re.compile("\r\n?")


SYNTHETIC_PREFIX = "synthetic:"  # the source of documents our own generators wrote (not read text)


def for_midtrain(doc_id: str, share: float) -> bool:
    """Whether natural document `doc_id` is kept for mid-training (corpus.midtrain_share): chosen by
    the hash of its id, so the same documents every time; none when share is 0."""
    return share > 0 and int(hashlib.sha256(doc_id.encode()).hexdigest()[:16], 16) < share * 16**16


@dataclass(frozen=True)
class Document:
    doc_id: str  # sha256 hex of `text`
    source: str  # the RawDocument's origin
    text: str


def clean_text(text: str, form: str = "NFC") -> str:
    """Normalise newlines and Unicode (`form`: NFC or NFKC), drop control characters, strip."""
    text = NEWLINES.sub("\n", text)
    text = unicodedata.normalize(form, text)
    return CONTROL_CHARS.sub("", text).strip()


def document_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def clean_documents(raw: Iterable[RawDocument], cfg: CorpusConfig, drops: DropLog) -> Iterator[Document]:
    """Cleaned, long-enough, first-seen documents of `raw`; every other one is dropped with a reason."""
    seen: dict[str, str] = {}
    for doc in raw:
        if len(doc.text) > cfg.max_doc_chars:
            drops.drop(
                "too_long",
                f"{doc.origin}: {len(doc.text):,} characters exceeds corpus.max_doc_chars={cfg.max_doc_chars:,}",
            )
            continue
        text = clean_text(doc.text, cfg.normalization)
        if not text:
            drops.drop("empty", f"{doc.origin}: no text after clean-up")
            continue
        if len(text) < cfg.min_chars:
            drops.drop(
                "too_short", f"{doc.origin}: {len(text)} characters, below corpus.min_chars={cfg.min_chars}"
            )
            continue
        doc_id = document_id(text)
        if doc_id in seen:
            drops.drop("duplicate", f"{doc.origin}: same text as {seen[doc_id]} (doc_id {doc_id[:12]})")
            continue
        seen[doc_id] = doc.origin
        yield Document(doc_id, doc.origin, text)
