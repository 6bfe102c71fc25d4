"""Where ReFINE's rollouts start: next-token entropy, smoothed, one position per chunk.

Indexing (see the state API): a position is a prefix LENGTH p; the rollout's first token is
sampled from the distribution after x[:p], whose entropy is H[p-1]. So a position p is
scored by the smoothed entropy at index p-1, and its true continuation is x[p : p+L].
"""

from __future__ import annotations

import hashlib
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refine_tasks.errors import SequenceTooShort

Selection = Literal["entropy", "uniform", "argmax", "argmin"]


def entropy_window(rollout_len: int) -> int:
    """Smoothing window: the rollout length, rounded up to an odd number (centred 'same' window)."""
    return rollout_len if rollout_len % 2 == 1 else rollout_len + 1


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy (nats) of softmax(logits) over the last dim: [..., V] -> [...], float32 or wider."""
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


@torch.no_grad()
def token_entropy(hidden: Tensor, lm_head: nn.Module, chunk: int = 1024) -> Tensor:
    """Per-token next-token entropy from last-layer hidden states: hidden [B, T, D] -> [B, T].

    The head runs over `chunk` tokens at a time, so at most [B, chunk, V] float32 logits exist
    at once: at T = 16K and V = 32K a whole float32 logits tensor would be 2 GiB per sequence.
    """
    if chunk < 1:
        raise ValueError(f"entropy chunk={chunk}: must be >= 1")
    parts = [entropy_from_logits(lm_head(hidden[:, s : s + chunk])) for s in range(0, hidden.shape[1], chunk)]
    return torch.cat(parts, dim=1)


@torch.no_grad()
def sequence_entropy(model: nn.Module, input_ids: Tensor, chunk: int = 1024) -> Tensor:
    """Next-token entropy [B, T] of input_ids [B, T] under `model`: one prefill, no [T, V] logits kept."""
    hidden = model.prefill(input_ids, return_logits=False, return_final=False).hidden
    return token_entropy(hidden, model.get_output_embeddings(), chunk)


def smooth_entropy(entropy: Tensor, window: int) -> Tensor:
    """Centred moving average, stride 1, 'same' zero padding: [B, T] -> [B, T].

    Zero padding (the mean still divides by `window`) lowers the first and last window//2
    values; the 20-token margin keeps rollout starts away from them anyway.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"smoothing window={window}: must be odd and >= 1 (see entropy_window)")
    if window == 1:
        return entropy
    pooled = F.avg_pool1d(entropy.unsqueeze(1), window, stride=1, padding=window // 2, count_include_pad=True)
    return pooled.squeeze(1)


def min_sequence_length(n_chunks: int, rollout_len: int, margin: int) -> int:
    """Shortest sequence ReFINE accepts: every chunk holds a rollout plus a margin on both sides."""
    return n_chunks * (rollout_len + 2 * margin)


def check_sequence_length(seq_len: int, n_chunks: int, rollout_len: int, margin: int) -> None:
    """Raise SequenceTooShort naming the numbers and the fix when sequences are too short for ReFINE."""
    need = min_sequence_length(n_chunks, rollout_len, margin)
    if seq_len < need:
        raise SequenceTooShort(
            f"sequence length {seq_len} is shorter than n_chunks * (rollout_len + 2 * margin) = "
            f"{n_chunks} * ({rollout_len} + 2 * {margin}) = {need}: raise train.seq_len, or lower "
            "positions.n_chunks / refine.rollout_len / positions.margin"
        )


def valid_span(seq_len: int, rollout_len: int, margin: int) -> tuple[int, int]:
    """Inclusive range [lo, hi] of prefix lengths p a rollout may start at.

    p >= margin and p <= T - margin keep the start `margin` tokens from both ends, and
    p + rollout_len <= T leaves the whole true continuation inside the sequence.
    """
    return margin, seq_len - max(margin, rollout_len)


def chunk_bounds(lo: int, hi: int, n_chunks: int) -> list[tuple[int, int]]:
    """Split [lo, hi] into n_chunks contiguous half-open ranges whose sizes differ by at most one."""
    size = hi - lo + 1
    edges = [lo + (j * size) // n_chunks for j in range(n_chunks + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def select_positions(
    entropy: Tensor,
    n_chunks: int,
    rollout_len: int,
    method: Selection = "entropy",
    margin: int = 20,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One rollout start (prefix length) per chunk of the valid span: entropy [B, T] -> [B, n_chunks].

    entropy: raw per-token next-token entropy (smoothed here with `entropy_window(rollout_len)`).
    method: 'entropy' samples p from softmax(smoothed H[p-1]) within each chunk (the paper);
    'uniform' samples uniformly; 'argmax' / 'argmin' take the most / least uncertain start.
    generator: the random source for the sampled methods (seed it for reproducible draws).
    Positions come back ascending (chunk order), on the entropy's device, as int64.
    """
    b, t = entropy.shape
    check_sequence_length(t, n_chunks, rollout_len, margin)
    scores = smooth_entropy(entropy.float(), entropy_window(rollout_len)).cpu()
    out = torch.empty(b, n_chunks, dtype=torch.long)
    for j, (start, stop) in enumerate(chunk_bounds(*valid_span(t, rollout_len, margin), n_chunks)):
        chunk = scores[:, start - 1 : stop - 1]  # the score of prefix length p is H[p-1]
        if method == "entropy":
            pick = torch.multinomial(torch.softmax(chunk, dim=-1), 1, generator=generator).squeeze(-1)
        elif method == "uniform":
            pick = torch.randint(0, stop - start, (b,), generator=generator)
        elif method == "argmax":
            pick = chunk.argmax(dim=-1)
        elif method == "argmin":
            pick = chunk.argmin(dim=-1)
        else:
            raise ValueError(f"positions.selection={method!r}: expected entropy, uniform, argmax or argmin")
        out[:, j] = start + pick
    return out.to(entropy.device)


def draw_generator(seed: int, *keys: object) -> torch.Generator:
    """A CPU generator seeded from (seed, keys): a sequence's draw never depends on its batch-mates."""
    text = "|".join(str(k) for k in (seed, *keys))
    return torch.Generator().manual_seed(
        int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
    )
