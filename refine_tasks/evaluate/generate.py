"""Batched greedy generation through the state API: prefill each prompt once, decode the batch.

A fast-weight model's whole past is its state, so prompts of any lengths batch without padding:
each prompt is prefilled as a chain of power-of-two pieces carrying the state (`prefill_pieces`:
a bounded set of shapes), and every decode step advances all unfinished streams at once
(finished ones leave the batch via `State.select`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from refine_tasks.evaluate.sizing import Tokenizer
from refine_tasks.models import FastWeightCache, FastWeightForCausalLM, State


@dataclass(frozen=True)
class GenerationRequest:
    """Prompt token ids, budget, and whether a newline ends the answer."""

    prompt: Sequence[int]
    max_new_tokens: int
    stop_on_newline: bool = False


class NewlineStop:
    """Decides when a newline ends a stream, from the text of each generated token.

    A stream stops at a newline that follows some text other than white space, so leading blank
    lines do not end it. Under both first-line rules (RULER's split and LongBench's lstrip-then-split)
    the scored line is then exactly that of generating the whole budget.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._text: dict[int, str] = {}

    def text(self, token: int) -> str:
        if token not in self._text:
            self._text[token] = self._tokenizer.decode([token], skip_special_tokens=True)
        return self._text[token]

    def step(self, token: int, seen_text: bool) -> tuple[bool, bool]:
        """(stop now, seen non-newline text so far) after generating `token`."""
        piece = self.text(token)
        stop = "\n" in (("x" if seen_text else "") + piece).lstrip()
        return stop, seen_text or bool(piece.strip())


def prefill_pieces(length: int) -> list[int]:
    """The bucket sizes a prompt of `length` tokens is prefilled in: its binary digits, largest
    first (4095 -> 2048, 1024, ..., 2, 1). Every piece is a power of two, so prompts of up to 2^k
    tokens run at k + 1 sequence lengths in all, whatever their lengths: the shapes that compile
    kernels (Triton specialisations and autotuning keys, torch.compile graphs, LaCT's attention
    masks) are bounded, and `refine warmup` can compile them all ahead of time."""
    if length < 1:
        raise ValueError("cannot generate from an empty prompt")
    return [1 << bit for bit in reversed(range(length.bit_length())) if length >> bit & 1]


@torch.no_grad()
def bucketed_prefill(
    model: FastWeightForCausalLM, prompts: Sequence[Sequence[int]]
) -> tuple[State, torch.Tensor]:
    """Final State (B streams, in `prompts` order) and next-token logits [B, V] of each prompt.

    Each prompt runs as the chain of its `prefill_pieces`, the state carried from piece to piece
    (the recurrence is the same computation split at other points: equal to one pass up to
    rounding). Pieces of one size run together for every prompt that has one, so prompts of any
    lengths share the batch; a prompt not started yet joins from the empty state."""
    device = next(model.parameters()).device
    pieces = [prefill_pieces(len(p)) for p in prompts]
    state: State | None = None
    logits = torch.empty(0)
    done = [0] * len(prompts)
    for size in sorted({s for chain in pieces for s in chain}, reverse=True):
        rows = [i for i, chain in enumerate(pieces) if size in chain]
        ids = torch.tensor([list(prompts[i][done[i] : done[i] + size]) for i in rows], device=device)
        index = torch.tensor(rows, device=device)
        cache = None if state is None else FastWeightCache(state.select(index), 0)
        out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        if state is None:
            state = _empty_like(model, len(prompts), out.past_key_values.state)
            logits = out.logits.new_empty(len(prompts), out.logits.shape[-1], dtype=torch.float32)
        state = state.put(index, out.past_key_values.state)
        logits.index_copy_(0, index, out.logits[:, -1].float())
        for i in rows:
            done[i] += size
    return state, logits


def _empty_like(model: FastWeightForCausalLM, batch_size: int, like: State) -> State:
    """The empty State of `batch_size` streams with the tensor dtypes of `like` (a pass's output
    state may be wider than the model's dtype, e.g. fla's float32 delta-rule state)."""
    empty = model.empty_state(batch_size)
    return State(
        [
            {name: t.to(layer_like[name].dtype) for name, t in layer.items()}
            for layer, layer_like in zip(empty.layers, like.layers, strict=True)
        ]
    )


@torch.no_grad()
def greedy_generate(
    model: FastWeightForCausalLM,
    requests: Sequence[GenerationRequest],
    tokenizer: Tokenizer,
    *,
    batch_size: int = 8,
    eos_token_id: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """Greedy continuations (EOS not included) of every request, in request order.

    Prompts are batched longest first so a batch holds similar lengths. `on_batch(n)` is
    called after each batch with the number of requests it finished.
    """
    if batch_size < 1:
        raise ValueError(f"evaluate.batch_size must be >= 1, got {batch_size}")
    newline = NewlineStop(tokenizer)
    outputs: list[list[int]] = [[] for _ in requests]
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].prompt))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        state, logits = bucketed_prefill(model, [requests[i].prompt for i in chunk])
        _decode(
            model,
            state,
            logits,
            [requests[i] for i in chunk],
            [outputs[i] for i in chunk],
            newline,
            eos_token_id,
        )
        if on_batch is not None:
            on_batch(len(chunk))
    return outputs


def _decode(
    model: FastWeightForCausalLM,
    state: State,
    logits: torch.Tensor,
    requests: list[GenerationRequest],
    outputs: list[list[int]],
    newline: NewlineStop,
    eos_token_id: int | None,
) -> None:
    """Decode one batch: state (B streams), logits [B, V] of each stream's next token."""
    # Batch row j serves request rows[j]. A finished row stays in the batch (its outputs are
    # ignored) until at most half the rows are alive; then the batch is compacted. So a batch
    # of B runs at no more than log2(B) + 1 sizes (each a CUDA graph of its own on a GPU).
    rows = list(range(len(requests)))
    alive = [True] * len(rows)
    seen_text = [False] * len(requests)
    next_tokens = logits.argmax(-1)
    while True:
        for j, token in enumerate(next_tokens.tolist()):
            b = rows[j]
            if not alive[j]:
                continue
            if token == eos_token_id:
                alive[j] = False
                continue
            outputs[b].append(token)
            stop = len(outputs[b]) >= requests[b].max_new_tokens
            if requests[b].stop_on_newline:
                at_newline, seen_text[b] = newline.step(token, seen_text[b])
                stop = stop or at_newline
            alive[j] = not stop
        n_alive = sum(alive)
        if n_alive == 0:
            return
        if n_alive <= len(rows) // 2:
            keep = [j for j, a in enumerate(alive) if a]
            index = torch.tensor(keep, device=next_tokens.device)
            state, next_tokens = state.select(index), next_tokens[index]
            rows, alive = [rows[j] for j in keep], [True] * len(keep)
        out = model.decode(state, next_tokens)
        state, next_tokens = out.state, out.logits.argmax(-1)
