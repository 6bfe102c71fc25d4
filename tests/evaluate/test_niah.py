"""NIAH records: needle at the requested depth, answers of the asked keys only, length, determinism."""

from __future__ import annotations

import re

import pytest

from refine_tasks.evaluate.haystack import NOISE_PARAGRAPH, split_sentences
from refine_tasks.evaluate.niah import VARIANTS, make_niah_record, niah_records
from refine_tasks.evaluate.sizing import largest_fitting

NEEDLE_RE = re.compile(r"One of the special magic (numbers|uuids|words) for (\S+) is: (\S+)\.")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _context(prompt: str) -> str:
    # The haystack sits between the instruction line and the question line.
    return prompt.split("\n", 1)[1].rsplit("\nWhat ", 1)[0]


def _asked_keys(prompt: str) -> list[str]:
    query = re.search(r"special magic \w+ for (.+?) mentioned in the provided text\?", prompt)[1]
    return [k.strip() for k in re.split(r", and |, ", query)]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_answers_are_exactly_the_values_of_the_asked_keys(tokenizer, name):
    variant = VARIANTS[name]
    record = make_niah_record(name, tokenizer, 1024, 50.0, seed=3, max_new_tokens=64)
    pairs = NEEDLE_RE.findall(_context(record.prompt))
    asked = _asked_keys(record.prompt)
    assert len(asked) == variant.num_queries
    found = [value for _, key, value in pairs if key in asked]
    assert sorted(found) == sorted(record.references)
    assert len(record.references) == variant.num_queries * variant.num_values
    # Keys and values have the variant's types.
    for value in record.references:
        assert re.fullmatch(r"\d{7}", value) if variant.value_type == "numbers" else UUID_RE.match(value)
    for key in asked:
        assert UUID_RE.match(key) if variant.key_type == "uuids" else re.fullmatch(r"[a-z'-]+-[a-z'-]+", key)
    # The real needles are all present; decoy needles only in the `needle` haystack.
    assert all(n in record.prompt for n in record.meta["needles"])
    n_decoys = len(pairs) - len(record.meta["needles"])
    assert (n_decoys > 0) == (variant.haystack == "needle")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_prompt_length_within_target(tokenizer, name):
    record = make_niah_record(name, tokenizer, 1024, 25.0, max_new_tokens=64)
    tokens = len(tokenizer.encode(record.prompt))
    assert tokens == record.meta["prompt_tokens"]
    assert 0.75 * (1024 - 64) <= tokens <= 1024 - 64


@pytest.mark.parametrize("depth", [0.0, 30.0, 50.0, 100.0])
def test_essay_needle_sits_at_the_requested_sentence_boundary(tokenizer, depth):
    record = make_niah_record("niah_single_2", tokenizer, 1024, depth, max_new_tokens=32)
    sentences = split_sentences(_context(record.prompt))
    needle = record.meta["needles"][0]
    n = record.meta["haystack_units"]
    assert len(sentences) == n + 1  # n haystack sentences and the needle
    assert sentences.index(needle) == int(n * depth / 100)
    # And in characters: the needle starts near depth% of the context.
    context = _context(record.prompt)
    assert context.index(needle) / len(context) == pytest.approx(depth / 100, abs=0.15)


@pytest.mark.parametrize("name,unit", [("niah_single_1", NOISE_PARAGRAPH), ("niah_multikey_2", None)])
def test_line_haystacks_put_the_needle_on_the_requested_line(tokenizer, name, unit):
    for depth in (0.0, 40.0, 100.0):
        record = make_niah_record(name, tokenizer, 1024, depth, seed=1, max_new_tokens=32)
        lines = _context(record.prompt).split("\n")
        n = record.meta["haystack_units"]
        assert len(lines) == n + 1
        assert lines.index(record.meta["needles"][0]) == int(n * depth / 100)
        if unit is not None:
            assert lines.count(unit) == n


def test_multi_needle_variants_pin_the_first_asked_needle(tokenizer):
    record = make_niah_record("niah_multivalue", tokenizer, 2048, 75.0, seed=5, max_new_tokens=64)
    sentences = split_sentences(_context(record.prompt))
    n = record.meta["haystack_units"]
    needles = record.meta["needles"]
    assert len(needles) == 4 and len(sentences) == n + 4
    first = sentences.index(needles[0])
    # Needles placed before it shift its index; its haystack position is still int(n * 0.75).
    before = sum(sentences.index(x) < first for x in needles[1:])
    assert first - before == int(n * 0.75)
    assert record.meta["needle_units"][0] == int(n * 0.75)


def test_same_seed_same_record_other_seed_other_record(tokenizer):
    a = make_niah_record("niah_multikey_3", tokenizer, 1024, 50.0, seed=7)
    b = make_niah_record("niah_multikey_3", tokenizer, 1024, 50.0, seed=7)
    c = make_niah_record("niah_multikey_3", tokenizer, 1024, 50.0, seed=8)
    assert a == b
    assert a.prompt != c.prompt and a.references != c.references


def test_wording_is_singular_for_one_answer_and_plural_otherwise(tokenizer):
    one = make_niah_record("niah_single_2", tokenizer, 1024, 50.0)
    many = make_niah_record("niah_multiquery", tokenizer, 1024, 50.0)
    assert one.prompt.startswith("A special magic number is hidden")
    assert one.prompt.endswith("mentioned in the provided text is")
    assert many.prompt.startswith("Some special magic numbers are hidden")
    assert many.prompt.endswith("mentioned in the provided text are")
    assert ", and " in many.prompt.rsplit("\n", 1)[1]


def test_grid_order_and_errors(tokenizer):
    records = niah_records(
        ["niah_single_1"], tokenizer, [512, 1024], [0.0, 100.0], samples=2, max_new_tokens=16
    )
    assert [(r.length, r.depth) for r in records] == [
        (n, d) for n in (512, 1024) for d in (0.0, 100.0) for _ in "ab"
    ]
    assert len({r.sample_id for r in records}) == len(records)
    with pytest.raises(ValueError, match="unknown NIAH variant"):
        make_niah_record("niah_single_9", tokenizer, 1024, 0.0)
    with pytest.raises(ValueError, match="depth"):
        make_niah_record("niah_single_1", tokenizer, 1024, 120.0)
    with pytest.raises(ValueError, match="raise the length"):
        make_niah_record("niah_single_2", tokenizer, 64, 0.0, max_new_tokens=32)


def test_largest_fitting_is_maximal(tokenizer):
    def build(n: int) -> str:
        return " ".join(f"word{i}" for i in range(n))

    for budget in (5, 77, 300):
        n, text, tokens = largest_fitting(build, tokenizer, budget)
        assert text == build(n) and tokens == len(tokenizer.encode(text)) <= budget
        assert len(tokenizer.encode(build(n + 1))) > budget
    n, _, _ = largest_fitting(build, tokenizer, 10_000, max_units=12)
    assert n == 12
