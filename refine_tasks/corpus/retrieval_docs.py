"""Retrieval-bearing long documents for base pretraining: facts stated early, used later, in natural text.

A base model trained from scratch at `small` scale on natural text alone scarcely learns to copy a
fact it read thousands of tokens before, so needle tasks stay at zero and mid-training has nothing
to move. Each generated document is natural paragraphs (the recent natural documents' own,
shuffled) with records woven in: every record is *stated* in the first half of the document and
*used* one to three times later (up to its end), each time in another wording, some as a question
and its answer, so predicting the value at a use means retrieving it from the statement. Record
subjects are fixed names or keys made of the document's own words, so retrieval is learnt over
open-ended keys; the H200 base of 2026-12-04, trained on the first version (six records about 27
fixed names, stated in the first fifth), scored 0 on every NIAH variant.

Never the evaluation sets: no wording here is RULER's (its needle "One of the special magic ...",
its questions, the QA instruction), the values are never 7-digit numbers or UUIDs (RULER NIAH's),
and the keys come from word lists of our own or the document's words joined by spaces, never
RULER's hyphenated adjective-noun pairs (tests/corpus/test_retrieval_docs.py checks all three).
Documents carry the source `synthetic:retrieval:<after>:<i>`, which the loader reads only for
base pretraining (`train.synthetic_docs`); mid-training reads natural documents only. Everything
random is seeded by the natural document a generated one follows, so the same corpus always gives
the same generated documents.
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Iterable, Iterator

from refine_tasks.corpus.clean import SYNTHETIC_PREFIX, Document, document_id, for_midtrain

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

# Kinds of thing a key made of the document's own words names ("the tariff season account").
KEY_KINDS = ("account", "file", "crate", "permit", "contract", "parcel", "lot", "register", "dossier")

# {subject}, {attribute}, {value}; statements make the fact, uses recall it later.
STATEMENTS = (
    "For the record, the {attribute} of {subject} was set down as {value}.",
    "The clerk wrote that {subject} had {value} as its {attribute}.",
    "According to the register, {subject} was given the {attribute} {value}.",
    "It was agreed that the {attribute} for {subject} would be {value}.",
    "Note this well: the {attribute} assigned to {subject} is {value}.",
    "Among the entries made that day, {subject} received {attribute} {value}.",
)
USES = (
    "When the inspectors came, they checked {subject} and found the {attribute} to be {value}.",
    "As noted earlier, the {attribute} of {subject} is {value}.",
    "Anyone asking after {subject} was told that its {attribute} remained {value}.",
    "The report confirmed once more that {subject} carried the {attribute} {value}.",
    "What was the {attribute} of {subject}? It was {value}.",
    "Asked to recall the {attribute} for {subject}, the keeper answered {value}.",
    "Looking back through these pages, the {attribute} given to {subject} was {value}.",
)


def sentence_pattern(template: str) -> re.Pattern[str]:
    """A STATEMENTS or USES template as a regular expression matching a whole inserted sentence, with
    the groups subject, attribute and value (what tests and benchmarks read records back with)."""
    fields = {
        "subject": "(?P<subject>.+?)",
        "attribute": "(?P<attribute>" + "|".join(map(re.escape, ATTRIBUTES)) + ")",
        "value": "(?P<value>.+?)",
    }
    parts = re.split(r"\{([a-z]+)\}", template)
    return re.compile("".join(fields[p] if i % 2 else re.escape(p) for i, p in enumerate(parts)) + "$")


def _value(rng: random.Random) -> str:
    """A record value: a number of 3-6 or 8-9 digits, or a code word with a number ("heron 42",
    "HERON-421"); never 7 digits (RULER NIAH's values), never RULER's adjective-noun pairs."""
    kind = rng.randrange(4)
    if kind <= 1:
        digits = rng.choice((3, 4, 5, 6, 8, 9))
        return str(rng.randint(10 ** (digits - 1), 10**digits - 1))
    if kind == 2:
        return f"{rng.choice(CODE_WORDS)} {rng.randint(2, 99)}"
    return f"{rng.choice(CODE_WORDS).upper()}-{rng.randint(10, 999)}"


def key_vocabulary(paragraphs: list[str]) -> list[str]:
    """Words of the paragraphs a key may be made of: lower-case, 4-10 letters."""
    return sorted({w for p in paragraphs for w in re.findall(r"\b[a-z]{4,10}\b", p)})


def _subjects(rng: random.Random, paragraphs: list[str], n: int, vocab: list[str] | None = None) -> list[str]:
    """n distinct record subjects: the fixed places and people, and keys made of two words of the
    document's own text ("the tariff season permit", "the lot of harbour wages"), so that
    retrieval is learnt over open-ended keys, not a memorised list. Words are joined by spaces,
    never by a hyphen as RULER's adjective-noun keys are. `vocab`: key_vocabulary(paragraphs), when
    the caller has it already."""
    vocab = key_vocabulary(paragraphs) if vocab is None else vocab
    out: list[str] = []
    while len(out) < n:
        kind = rng.randrange(3) if len(vocab) >= 2 else 0
        if kind == 0:
            subject = rng.choice([*PLACES, *PEOPLE])
        elif kind == 1:
            a, b = rng.sample(vocab, 2)
            subject = f"the {a} {b} {rng.choice(KEY_KINDS)}"
        else:
            a, b = rng.sample(vocab, 2)
            subject = f"the {rng.choice(KEY_KINDS)} of {a} {b}"
        if not any(subject in o or o in subject for o in out):  # distinct, and none inside another
            out.append(subject)
    return out


def retrieval_document(
    rng: random.Random, paragraphs: list[str], n_facts: int, target_chars: int, vocab: list[str] | None = None
) -> str:
    """One document of about target_chars characters: paragraphs (shuffled; reused as needed) with
    n_facts records, each stated in the first half and used, in other words, one to three times
    after it (the last use anywhere up to the document's end: recall across every distance).
    `vocab`: key_vocabulary(paragraphs), when the caller has it (the same pool makes many documents)."""
    pool = list(paragraphs)
    rng.shuffle(pool)
    body: list[str] = []
    while sum(len(p) + 2 for p in body) < target_chars:
        body.append(pool[len(body) % len(pool)])
    facts = [(s, rng.choice(ATTRIBUTES), _value(rng)) for s in _subjects(rng, paragraphs, n_facts, vocab)]
    n = len(body)
    half = max(1, n // 2)
    inserts: list[tuple[int, int, str]] = []  # (paragraph index, order among equal indices, sentence)
    for subject, attribute, value in facts:
        fields = {"subject": subject, "attribute": attribute, "value": value}
        stated = rng.randrange(half)
        inserts.append((stated, 0, rng.choice(STATEMENTS).format(**fields)))
        for _ in range(rng.randint(1, 3)):
            inserts.append((rng.randrange(stated, n) + 1, 1, rng.choice(USES).format(**fields)))
    for index, _, sentence in sorted(inserts, key=lambda x: (x[0], x[1]), reverse=True):
        body.insert(index, sentence)
    return "\n\n".join(body)


def with_retrieval_documents(
    docs: Iterable[Document],
    ratio: float,
    target_chars: int,
    n_facts: int = 6,
    pool_docs: int = 4,
    midtrain_share: float = 0.0,
) -> Iterator[Document]:
    """`docs` with generated retrieval documents mixed in: `ratio` of them per natural document
    (0.5: one after every second), built from the paragraphs of the last `pool_docs` natural ones.
    Documents kept for mid-training (`midtrain_share`, clean.for_midtrain) are passed through but
    neither counted nor drawn from: the base reads none of their text."""
    recent: deque[list[str]] = deque(maxlen=pool_docs)
    owed = 0.0
    for doc in docs:
        yield doc
        if for_midtrain(doc.doc_id, midtrain_share):
            continue
        recent.append([p for p in doc.text.split("\n\n") if p.strip()])
        owed += ratio
        i = 0
        pool = [p for ps in recent for p in ps]
        vocab = key_vocabulary(pool) if owed >= 1.0 else None  # once per pool: most of the time at ratio 56
        while owed >= 1.0:
            owed -= 1.0
            rng = random.Random(f"retrieval:{doc.doc_id}:{i}")
            text = retrieval_document(rng, pool, n_facts, target_chars, vocab)
            yield Document(document_id(text), f"{SYNTHETIC_PREFIX}retrieval:{doc.source}:{i}", text)
            i += 1
