"""RULER's needle-in-a-haystack (NIAH) records: 8 variants, sized to a target length, at a depth.

A needle reads "One of the special magic {type} for {key} is: {value}." The prompt ends with
the answer prefix, so the model only has to continue it. A record's `depth` places the first
needle of the first asked key at that percentage of the haystack units (sentence boundaries
for `essay`, lines for `noise` and `needle`); other needles go to depths drawn from RULER's
40-point grid. Everything random comes from one seeded generator per record, so the same
(seed, variant, length, depth, index) always gives the same record.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Literal

from refine_tasks.evaluate.haystack import NOISE_PARAGRAPH, essay_sentences, key_words
from refine_tasks.evaluate.records import EvalError, EvalRecord
from refine_tasks.evaluate.sizing import Tokenizer, largest_fitting

NeedleType = Literal["words", "numbers", "uuids"]
NEEDLE = "One of the special magic {kind} for {key} is: {value}."
# Depths (percent) for the needles that are not pinned to the record's depth, as in RULER.
RULER_DEPTHS: tuple[int, ...] = tuple(round(100 * i / 39) for i in range(40))


@dataclass(frozen=True)
class NiahVariant:
    haystack: Literal["essay", "noise", "needle"]
    key_type: NeedleType
    value_type: NeedleType
    num_keys: int = 1
    num_values: int = 1
    num_queries: int = 1


VARIANTS: dict[str, NiahVariant] = {
    "niah_single_1": NiahVariant("noise", "words", "numbers"),
    "niah_single_2": NiahVariant("essay", "words", "numbers"),
    "niah_single_3": NiahVariant("essay", "words", "uuids"),
    "niah_multikey_1": NiahVariant("essay", "words", "numbers", num_keys=4),
    "niah_multikey_2": NiahVariant("needle", "words", "numbers"),
    "niah_multikey_3": NiahVariant("needle", "uuids", "uuids"),
    "niah_multivalue": NiahVariant("essay", "words", "numbers", num_values=4),
    "niah_multiquery": NiahVariant("essay", "words", "numbers", num_queries=4),
}


def random_needle_item(rng: random.Random, kind: NeedleType) -> str:
    """A key or value: an adjective-noun pair, a 7-digit number or a UUID."""
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    adjectives, nouns = key_words()
    return f"{rng.choice(adjectives)}-{rng.choice(nouns)}"


def _distinct(rng: random.Random, kind: NeedleType, n: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        item = random_needle_item(rng, kind)
        if item not in taken:
            taken.add(item)
            out.append(item)
    return out


def _prompt(kind: str, queries: list[str], n_answers: int, context: str) -> str:
    query = queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]
    if n_answers == 1:
        one = kind[:-1]  # "numbers" -> "number": singular wording for a single answer
        return (
            f"A special magic {one} is hidden within the following text. Make sure to memorize it. "
            f"I will quiz you about the {one} afterwards.\n{context}\n"
            f"What is the special magic {one} for {query} mentioned in the provided text? "
            f"The special magic {one} for {query} mentioned in the provided text is"
        )
    return (
        f"Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
        f"I will quiz you about the {kind} afterwards.\n{context}\n"
        f"What are all the special magic {kind} for {query} mentioned in the provided text? "
        f"The special magic {kind} for {query} mentioned in the provided text are"
    )


class _NiahSample:
    """The random draws of one record; `context(n)` lays the needles into n haystack units."""

    def __init__(self, name: str, variant: NiahVariant, seed: int, length: int, depth: float, index: int):
        if not 0 <= depth <= 100:
            raise EvalError(f"NIAH depth must be in [0, 100] percent, got {depth}")
        self.variant = variant
        self.key = f"niah:{seed}:{name}:{length}:{depth:g}:{index}"
        rng = random.Random(self.key)
        num_keys = max(variant.num_keys, variant.num_queries)
        taken: set[str] = set()
        self.keys = _distinct(rng, variant.key_type, num_keys, taken)
        self.values = [_distinct(rng, variant.value_type, variant.num_values, taken) for _ in self.keys]
        self.asked = sorted(rng.sample(range(num_keys), variant.num_queries))
        pinned = (self.asked[0], 0)  # the first value of the first asked key sits at `depth`
        self.needles: list[tuple[float, str]] = []
        others = [(k, v) for k in range(num_keys) for v in range(variant.num_values) if (k, v) != pinned]
        for (k, v), d in zip(others, rng.sample(RULER_DEPTHS, len(others)), strict=True):
            self.needles.append((float(d), self._needle(k, v)))
        self.needles.insert(0, (depth, self._needle(*pinned)))
        self.taken = taken
        self.essay_start = rng.random()

    def _needle(self, k: int, v: int) -> str:
        return NEEDLE.format(kind=self.variant.value_type, key=self.keys[k], value=self.values[k][v])

    @property
    def answers(self) -> list[str]:
        return [value for k in self.asked for value in self.values[k]]

    def positions(self, n: int) -> list[int]:
        """Haystack-unit index before which each needle goes (same order as `needles`)."""
        return [int(n * d / 100) for d, _ in self.needles]

    def units(self, n: int, sentences: tuple[str, ...]) -> list[str]:
        if self.variant.haystack == "noise":
            return [NOISE_PARAGRAPH] * n
        if self.variant.haystack == "essay":
            start = int(self.essay_start * len(sentences))
            return [sentences[(start + i) % len(sentences)] for i in range(n)]
        # Decoy needles: a stream of its own, so n decoys are a prefix of n + 1 decoys.
        rng = random.Random(self.key + ":decoys")
        taken = set(self.taken)
        decoys = []
        for _ in range(n):
            key = _distinct(rng, self.variant.key_type, 1, taken)[0]
            value = random_needle_item(rng, self.variant.value_type)
            decoys.append(NEEDLE.format(kind=self.variant.value_type, key=key, value=value))
        return decoys

    def context(self, n: int, sentences: tuple[str, ...]) -> str:
        units = self.units(n, sentences)
        at = self.positions(n)
        pieces: list[str] = []
        for i in range(n + 1):
            pieces.extend(text for (_, text), p in zip(self.needles, at, strict=True) if p == i)
            if i < n:
                pieces.append(units[i])
        return (" " if self.variant.haystack == "essay" else "\n").join(pieces)

    def prompt(self, n: int, sentences: tuple[str, ...]) -> str:
        queries = [self.keys[k] for k in self.asked]
        return _prompt(self.variant.value_type, queries, len(self.answers), self.context(n, sentences))


def make_niah_record(
    name: str,
    tokenizer: Tokenizer,
    length: int,
    depth: float,
    *,
    seed: int = 0,
    index: int = 0,
    max_new_tokens: int = 128,
    haystack: str = "sotu",
) -> EvalRecord:
    """One NIAH record of variant `name` whose prompt plus `max_new_tokens` fits `length` tokens."""
    if name not in VARIANTS:
        raise EvalError(f"unknown NIAH variant {name!r}; known: {', '.join(VARIANTS)}")
    sample = _NiahSample(name, VARIANTS[name], seed, length, depth, index)
    sentences = essay_sentences(haystack) if sample.variant.haystack == "essay" else ()
    budget = length - max_new_tokens
    try:
        n, prompt, tokens = largest_fitting(lambda k: sample.prompt(k, sentences), tokenizer, budget)
    except ValueError as e:
        raise EvalError(
            f"NIAH {name} at length {length}: {e}; raise the length or lower max_new_tokens"
        ) from None
    return EvalRecord(
        family="niah",
        task=name,
        sample_id=f"{name}:{length}:{depth:g}:{index}",
        prompt=prompt,
        references=tuple(sample.answers),
        max_new_tokens=max_new_tokens,
        stop_on_newline=False,
        metric="string_match_all",
        length=length,
        depth=float(depth),
        meta={
            "prompt_tokens": tokens,
            "haystack_units": n,
            "needles": [text for _, text in sample.needles],
            "needle_units": sample.positions(n),
            "seed": seed,
        },
    )


def niah_records(
    variants: list[str],
    tokenizer: Tokenizer,
    lengths: list[int],
    depths: list[float],
    *,
    samples: int = 1,
    seed: int = 0,
    max_new_tokens: int = 128,
    haystack: str = "sotu",
) -> list[EvalRecord]:
    """The grid variants x lengths x depths x samples, in that order."""
    return [
        make_niah_record(
            v, tokenizer, n, d, seed=seed, index=i, max_new_tokens=max_new_tokens, haystack=haystack
        )
        for v in variants
        for n in lengths
        for d in depths
        for i in range(samples)
    ]
