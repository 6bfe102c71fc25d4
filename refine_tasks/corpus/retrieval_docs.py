"""Retrieval-bearing long documents for base pretraining: facts stated early, used later, in natural text.

A base model trained from scratch at `small` scale on natural text alone scarcely learns to copy a
fact it read thousands of tokens before, so needle tasks stay at zero and mid-training has nothing
to move. Each generated document is natural paragraphs (the recent natural documents' own,
shuffled) with a few records woven in: every record is *stated* in the first fifth of the
document and *used* once or twice later, each time in another wording, so predicting the value
at a use means retrieving it from the statement.

Never the evaluation sets: no wording here is RULER's (its needle "One of the special magic ...",
its questions, the QA instruction), the values are never 7-digit numbers or UUIDs (RULER NIAH's),
and the keys come from word lists of our own, not RULER's (tests/corpus/test_retrieval_docs.py
checks all three). Documents carry the source `synthetic:retrieval:<after>:<i>`, which the
loader reads only for base pretraining (`train.synthetic_docs`); mid-training reads natural
documents only. Everything random is seeded by the natural document a generated one follows, so
the same corpus always gives the same generated documents.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Iterator

from refine_tasks.corpus.clean import SYNTHETIC_PREFIX, Document, document_id

PLACES = (
    "the harbour office", "the north granary", "the river mill", "the old observatory", "the glass works",
    "the county archive", "the east depot", "the lighthouse", "the seed bank", "the upper quarry",
    "the telegraph station", "the salt market", "the clock tower", "the ferry landing", "the wool exchange",
)  # fmt: skip
PEOPLE = (
    "Aldous Brenner", "Mira Castellan", "Tobias Wren", "Ilse Marchetti", "Jonah Abernathy", "Petra Sollis",
    "Dorian Keel", "Agnes Thorne", "Rafael Umber", "Wilhelmina Crane", "Cyrus Pell", "Leona Fairweather",
)  # fmt: skip
ATTRIBUTES = (
    "ledger number", "gate code", "storage bay", "shipment count", "assigned route", "registry mark",
    "locker number", "survey grid", "cargo tally", "watch rota",
)  # fmt: skip
CODE_WORDS = (
    "amber", "basalt", "cedar", "dune", "ember", "fjord", "garnet", "heron", "indigo", "juniper",
    "kestrel", "lantern", "marble", "nettle", "oriole", "pewter", "quartz", "russet", "sable", "thistle",
)  # fmt: skip

# {subject}, {attribute}, {value}; statements make the fact, uses recall it later.
STATEMENTS = (
    "For the record, the {attribute} of {subject} was set down as {value}.",
    "The clerk wrote that {subject} had {value} as its {attribute}.",
    "According to the register, {subject} was given the {attribute} {value}.",
    "It was agreed that the {attribute} for {subject} would be {value}.",
)
USES = (
    "When the inspectors came, they checked {subject} and found the {attribute} to be {value}.",
    "As noted earlier, the {attribute} of {subject} is {value}.",
    "Anyone asking after {subject} was told that its {attribute} remained {value}.",
    "The report confirmed once more that {subject} carried the {attribute} {value}.",
)


def _value(rng: random.Random) -> str:
    """A short record value: a 3-5 digit number, or a code word with a number ("heron 42", "HERON-421");
    never 7 digits, and never RULER's adjective-noun pairs (a test checks its word lists)."""
    kind = rng.randrange(3)
    if kind == 0:
        return str(rng.randint(100, 99_999))
    if kind == 1:
        return f"{rng.choice(CODE_WORDS)} {rng.randint(2, 99)}"
    return f"{rng.choice(CODE_WORDS).upper()}-{rng.randint(10, 999)}"


def retrieval_document(rng: random.Random, paragraphs: list[str], n_facts: int, target_chars: int) -> str:
    """One document of about target_chars characters: paragraphs (shuffled; reused as needed) with
    n_facts records stated in its first fifth and used, in other words, once or twice after it."""
    pool = list(paragraphs)
    rng.shuffle(pool)
    body: list[str] = []
    while sum(len(p) + 2 for p in body) < target_chars:
        body.append(pool[len(body) % len(pool)])
    subjects = rng.sample([*PLACES, *PEOPLE], n_facts)
    facts = [(s, rng.choice(ATTRIBUTES), _value(rng)) for s in subjects]
    n = len(body)
    early = max(1, n // 5)
    inserts: list[tuple[int, str]] = []
    for subject, attribute, value in facts:
        fields = {"subject": subject, "attribute": attribute, "value": value}
        inserts.append((rng.randrange(early), rng.choice(STATEMENTS).format(**fields)))
        for _ in range(rng.randint(1, 2)):
            inserts.append((rng.randrange(early, n) + 1, rng.choice(USES).format(**fields)))
    for index, sentence in sorted(inserts, key=lambda x: x[0], reverse=True):
        body.insert(index, sentence)
    return "\n\n".join(body)


def with_retrieval_documents(
    docs: Iterable[Document], ratio: float, target_chars: int, n_facts: int = 6, pool_docs: int = 4
) -> Iterator[Document]:
    """`docs` with generated retrieval documents mixed in: `ratio` of them per natural document
    (0.5: one after every second), built from the paragraphs of the last `pool_docs` natural ones."""
    recent: deque[list[str]] = deque(maxlen=pool_docs)
    owed = 0.0
    for doc in docs:
        yield doc
        recent.append([p for p in doc.text.split("\n\n") if p.strip()])
        owed += ratio
        i = 0
        while owed >= 1.0:
            owed -= 1.0
            rng = random.Random(f"retrieval:{doc.doc_id}:{i}")
            text = retrieval_document(rng, [p for ps in recent for p in ps], n_facts, target_chars)
            yield Document(document_id(text), f"{SYNTHETIC_PREFIX}retrieval:{doc.source}:{i}", text)
            i += 1
