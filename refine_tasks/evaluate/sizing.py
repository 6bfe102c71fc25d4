"""Fit a generated prompt to a token budget with the model's own tokenizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Tokenizer(Protocol):
    """What evaluation needs of a tokenizer (a Hugging Face tokenizer satisfies it)."""

    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


def largest_fitting(
    build: Callable[[int], str], tokenizer: Tokenizer, budget: int, max_units: int | None = None
) -> tuple[int, str, int]:
    """The largest n (1 <= n <= max_units) whose text `build(n)` takes at most `budget` tokens.

    Assumes the token count grows with n (more haystack units, more tokens). Returns
    (n, text, tokens). Raises ValueError when even one unit is over the budget.
    """
    cap = max_units if max_units is not None else 2**40
    if cap < 1:
        raise ValueError("largest_fitting: no haystack units to choose from")

    def measure(n: int) -> tuple[int, str, int] | None:
        text = build(n)
        tokens = len(tokenizer.encode(text))
        return (n, text, tokens) if tokens <= budget else None

    best = measure(1)
    if best is None:
        raise ValueError(f"a prompt with one haystack unit is already over the budget of {budget} tokens")
    # Grow from an estimate (tokens per unit so far), doubling until over budget or out of units.
    over = None
    while over is None and best[0] < cap:
        n, _, tokens = best
        guess = min(cap, max(n + 1, int(n * budget / max(tokens, 1) * 1.1) + 1, 16 if n == 1 else 0))
        got = measure(guess)
        if got is None:
            over = guess
        else:
            best = got
    # Bisect between the largest fitting n and the smallest n known to be over.
    while over is not None and over - best[0] > 1:
        mid = (best[0] + over) // 2
        got = measure(mid)
        if got is None:
            over = mid
        else:
            best = got
    return best
