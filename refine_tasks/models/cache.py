"""`past_key_values` for Hugging Face `generate()`: the model's State and how many tokens it holds."""

from __future__ import annotations

from refine_tasks.models.state import State


class FastWeightCache:
    """A fixed-size recurrent cache: `state` after `seen_tokens` tokens of every row."""

    is_compileable = False

    def __init__(self, state: State, seen_tokens: int) -> None:
        self.state = state
        self.seen_tokens = seen_tokens

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self.seen_tokens

    def __len__(self) -> int:
        return len(self.state.layers)
