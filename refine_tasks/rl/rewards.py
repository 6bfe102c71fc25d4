"""Self-supervised rollout rewards: one scalar per rollout, scored against the true continuation.

Every reward takes the same four tensors, so the trainer can compute all of them for metrics
and train on the one named in the config:
  tokens [..., L]         sampled rollout tokens y_0..y_{L-1}
  hidden [..., L, D]      last-layer hidden state of each sampled token (from decoding it)
  true_tokens [..., L]    the true continuation x[p : p+L]
  true_hidden [..., L, D] last-layer hidden state of each true token (from the main pass)
and returns [...] in float32 (float64 if the hidden states are).

Register a new reward with `@register_reward("name")`, or name any importable function as
"package.module:function" in the config; `get_reward` resolves both.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

RewardFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]

REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make `fn` available to the config as `reward: name`."""

    def add(fn: RewardFn) -> RewardFn:
        if name in REWARDS and REWARDS[name] is not fn:
            raise ValueError(f"reward {name!r} is already registered ({REWARDS[name].__qualname__})")
        REWARDS[name] = fn
        return fn

    return add


def get_reward(name: str) -> RewardFn:
    """A registered reward by name, or an importable 'package.module:function'."""
    if name in REWARDS:
        return REWARDS[name]
    if ":" in name:
        module_name, attr = name.split(":", 1)
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"reward {name!r}: cannot import it ({e})") from None
        if not callable(fn):
            raise ValueError(f"reward {name!r}: {attr} is not a function")
        return fn
    raise ValueError(
        f"reward {name!r} is unknown: choose one of {sorted(REWARDS)} or give 'package.module:function'"
    )


def _token_cosine(hidden: Tensor, true_hidden: Tensor) -> Tensor:
    # bf16 hidden states make a noisy cosine: compare in float32 at least.
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    return F.cosine_similarity(hidden.to(dtype), true_hidden.to(dtype), dim=-1, eps=1e-8)


def _token_match(tokens: Tensor, true_tokens: Tensor, like: Tensor) -> Tensor:
    return (tokens == true_tokens).to(torch.promote_types(like.dtype, torch.float32))


@register_reward("cosine")
def cosine_reward(tokens: Tensor, hidden: Tensor, true_tokens: Tensor, true_hidden: Tensor) -> Tensor:
    """Mean over rollout tokens of cos(hidden of the sampled token, hidden of the true token): -1..1."""
    return _token_cosine(hidden, true_hidden).mean(dim=-1)


@register_reward("exact")
def exact_reward(tokens: Tensor, hidden: Tensor, true_tokens: Tensor, true_hidden: Tensor) -> Tensor:
    """Share of rollout tokens equal to the true token at the same offset: 0..1."""
    return _token_match(tokens, true_tokens, hidden).mean(dim=-1)


@register_reward("hybrid")
def hybrid_reward(tokens: Tensor, hidden: Tensor, true_tokens: Tensor, true_hidden: Tensor) -> Tensor:
    """Per token cosine + exact match, then the mean over the rollout: -1..2."""
    per_token = _token_cosine(hidden, true_hidden) + _token_match(tokens, true_tokens, hidden)
    return per_token.mean(dim=-1)
