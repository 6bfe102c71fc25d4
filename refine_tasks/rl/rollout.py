"""Rollouts from branched states: n_chunks x n_rollouts streams per sequence, decoded in one batch.

Indexing follows the state API: a rollout at prefix length p has consumed x[:p]; y_0 is
sampled from the main sequence's distribution after x[:p] (the head applied to hidden[p-1]),
y_i (i > 0) from the decode of y_{i-1}. Decoding y_i also yields y_i's own last-layer hidden
state, which the rewards compare with the true token's. So L tokens take L decode steps, all
streams of all sequences advancing together.

Layout: streams are ordered (b, p, r), so tensors reshape to [B, P, R, ...].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn


class DecodingModel(Protocol):
    """What rollouts need from a model (see `refine_tasks.models`)."""

    def decode_stream(self, state): ...

    def get_output_embeddings(self) -> nn.Module: ...


class PrefillingModel(DecodingModel, Protocol):
    def prefill(self, input_ids: Tensor, capture: Tensor | None = None, return_logits: bool = True): ...


@dataclass
class Rollouts:
    tokens: Tensor  # [B, P, R, L] sampled y_0..y_{L-1}
    log_probs: Tensor  # [B, P, R, L] log pi(y_i | ...) at the sampling temperature, float32+
    hidden: Tensor  # [B, P, R, L, D] last-layer hidden state of each y_i (from decoding it)


@dataclass
class SamplingParams:
    """temperature > 0 scales the logits; top_k = 0 and top_p = 1.0 switch those filters off."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


def scaled_log_probs(logits: Tensor, temperature: float) -> Tensor:
    """log_softmax(logits / temperature) in float32 at least: the policy whose ratio GRPO clips.

    Top-k / top-p only shape which tokens get sampled; like verl, the policy log-probs are those
    of the full tempered distribution, so rollout and loss pass score tokens the same way.
    """
    return torch.log_softmax(
        logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature, dim=-1
    )


def filter_logits(logp: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Mask (to -inf) tokens outside the top-k and outside the smallest top-p nucleus: [N, V] -> [N, V]."""
    if top_k > 0 and top_k < logp.shape[-1]:
        kth = logp.topk(top_k, dim=-1).values[..., -1:]
        logp = logp.masked_fill(logp < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        mass_before = sorted_logp.softmax(dim=-1).cumsum(dim=-1) - sorted_logp.softmax(dim=-1)
        drop_sorted = mass_before >= top_p  # keeps the first token always, and every token the nucleus needs
        logp = logp.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logp


def sample_tokens(
    logits: Tensor, params: SamplingParams, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Sample one token per row: logits [N, V] -> (tokens [N], their log-probs [N] under the tempered policy)."""
    logp = scaled_log_probs(logits, params.temperature)
    probs = filter_logits(logp, params.top_k, params.top_p).softmax(dim=-1)
    # A diverged model (NaN/inf logits) samples uniformly instead of crashing: its loss is
    # non-finite anyway, and the trainer skips and counts such steps.
    probs = torch.where(torch.isfinite(probs).all(dim=-1, keepdim=True), probs, 1.0)
    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def prefix_hidden(hidden: Tensor, positions: Tensor) -> Tensor:
    """The hidden state that predicts each rollout's first token: hidden [B, T, D] at p-1 -> [B, P, D]."""
    idx = (positions - 1).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    return hidden.gather(1, idx)


def true_continuation(
    input_ids: Tensor, hidden: Tensor, positions: Tensor, length: int
) -> tuple[Tensor, Tensor]:
    """The true next tokens x[p : p+L] [B, P, L] and their hidden states hidden[p : p+L] [B, P, L, D]."""
    offsets = positions.unsqueeze(-1) + torch.arange(length, device=positions.device)  # [B, P, L]
    b, p, _ = offsets.shape
    tokens = input_ids.gather(1, offsets.flatten(1)).view(b, p, length)
    flat = offsets.flatten(1).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    return tokens, hidden.gather(1, flat).view(b, p, length, hidden.shape[-1])


@torch.no_grad()
def rollout(
    model: DecodingModel,
    captured,
    first_hidden: Tensor,
    n_rollouts: int,
    length: int,
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> Rollouts:
    """Sample `n_rollouts` rollouts of `length` tokens from each captured state.

    captured: State of B*P streams (row b*P+j after x[b, :positions[b, j]], from prefill);
    first_hidden: [B, P, D] hidden state at p-1 (see `prefix_hidden`), whose head output
    gives y_0. Streams are repeated n_rollouts times in place, so stream (b, p, r) is
    row (b*P + p)*R + r of every decode.
    """
    b, p, d = first_hidden.shape
    state = captured.repeat_interleave(n_rollouts)
    logits = model.get_output_embeddings()(first_hidden.reshape(b * p, d)).repeat_interleave(
        n_rollouts, dim=0
    )
    tokens, log_probs, hidden = [], [], []
    stream = model.decode_stream(state)  # the streams' State stays in the decoder between steps
    for _ in range(length):
        y, lp = sample_tokens(logits, params, generator)
        out = stream.step(y)  # on CUDA: views of the decoder's buffers, valid until the next step
        tokens.append(y)
        log_probs.append(lp)
        hidden.append(out.hidden.clone())
        logits = out.logits
    shape = (b, p, n_rollouts, length)
    return Rollouts(
        tokens=torch.stack(tokens, dim=-1).view(shape),
        log_probs=torch.stack(log_probs, dim=-1).view(shape),
        hidden=torch.stack(hidden, dim=1).view(*shape, -1),
    )


@torch.no_grad()
def naive_rollout(
    model: PrefillingModel,
    input_ids: Tensor,
    positions: Tensor,
    n_rollouts: int,
    length: int,
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> Rollouts:
    """The reference implementation's way: every prefix input_ids[b, :p] re-run on its own.

    positions: [B, P]. Costs ~P*T/2 extra prefill tokens per sequence; kept to compare with
    `rollout` (same streams, same sampling order, so the same generator gives the same tokens).
    """
    finals, last_hidden = [], []
    for b, row in enumerate(positions.tolist()):
        for p in row:
            out = model.prefill(input_ids[b : b + 1, :p], return_logits=False)
            finals.append(out.final)
            last_hidden.append(out.hidden[0, -1])
    first_hidden = torch.stack(last_hidden).view(*positions.shape, -1)
    return rollout(model, type(finals[0]).cat(finals), first_hidden, n_rollouts, length, params, generator)
