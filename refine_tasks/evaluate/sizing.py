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

    Each try encodes a whole prompt (up to max_prompt_tokens), so the search aims where a straight
    line through the two nearest tries puts the budget (tokens grow about linearly with n), then
    checks the next n up when the line puts it over: 6.4 encodings a record of the GPU profile's
    320-record NIAH grid (1K-8K), where doubling and bisecting took 8.3. Every n it settles on was
    measured, and the one above it is over the budget (or max_units)."""
    cap = max_units if max_units is not None else 2**40
    if cap < 1:
        raise ValueError("largest_fitting: no haystack units to choose from")
    tried: dict[int, tuple[int, str, int]] = {}

    def measure(n: int) -> tuple[int, str, int]:
        if n not in tried:
            text = build(n)
            tried[n] = (n, text, len(tokenizer.encode(text)))
        return tried[n]

    best = measure(1)
    if best[2] > budget:
        raise ValueError(f"a prompt with one haystack unit is already over the budget of {budget} tokens")
    over: tuple[int, str, int] | None = None  # the smallest n known to be over the budget
    tries = 0
    while best[0] < cap and (over is None or over[0] - best[0] > 1):
        high = over[0] - 1 if over is not None else cap  # the candidates: best[0] + 1 .. high
        # the line through the fitting try and the nearest other one (the over try, or the
        # fitting try before it); with one try only, through the origin's side: tokens / n
        other = over or max((t for t in tried.values() if t[0] < best[0]), default=None)
        if other is None:
            per_unit = best[2] / best[0]
        else:
            per_unit = (other[2] - best[2]) / (other[0] - best[0])
        guess = best[0] + int((budget - best[2]) / per_unit) if per_unit > 0 else high
        tries += 1
        if tries > 3:  # the line keeps missing (token counts far from linear): bisect, or double
            guess = (best[0] + over[0]) // 2 if over is not None else 2 * best[0]
        guess = min(high, max(best[0] + 1, guess))
        got = measure(guess)
        if got[2] <= budget:
            best = got
            # the next n up settles it when the line puts it over the budget
            if guess < high and per_unit > 0 and got[2] + per_unit > budget:
                nxt = measure(guess + 1)
                if nxt[2] <= budget:
                    best = nxt
                else:
                    over = nxt
        else:
            over = got
    return best
