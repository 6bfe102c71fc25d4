"""LaCT's attention half: rotary embeddings and causal sliding-window attention, with no flash-attn.

Two exact paths, named by the caller (`LaCTOptions.lact_attention`: `band`, `flex`, or `auto`:
`flex` on CUDA, `band` elsewhere); `flex` takes only calls where every key is valid, `band` the rest.
On an H100 at paper-760m's shapes (16K tokens) `flex` ran fwd+bwd 2.6x faster than `band`.
- `band` (torch SDPA, any device): queries go in blocks of up to `window`, and each block attends
  to the keys it can see (its own span plus the window-1 keys before it) under a band mask, so the
  work is about twice the band's, never the full T x T square. SDPA takes the mask as a dense bias,
  which rules out its flash kernels.
- `flex` (torch FlexAttention, compiled): one call over the whole sequence with a block-sparse
  sliding-window mask, so only the band's tiles are computed. No per-stream key validity (a state
  with an unfilled window goes on `band`); its backward needs a GPU.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

ATTENTION_PATHS = ("band", "flex")
ATTENTION_CHOICES = ("auto", *ATTENTION_PATHS)


def rotary(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """Rotate-half RoPE: x [N, T, heads, d] (d even) at absolute positions [N, T]."""
    d = x.shape[-1]
    dtype = torch.promote_types(x.dtype, torch.float32)
    inv_freq = theta ** -(torch.arange(0, d, 2, device=x.device, dtype=dtype) / d)
    angles = positions.to(dtype)[..., None, None] * inv_freq  # [N, T, 1, d/2]
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.to(dtype).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def attention_path(q: Tensor, key_valid: Tensor | None, choice: str = "auto") -> str:
    """`band` or `flex` for this call: `choice` (one of ATTENTION_CHOICES; `auto`: `flex` on CUDA,
    `band` elsewhere) where every key is valid; `band` takes the rest."""
    if choice not in ATTENTION_CHOICES:
        raise ValueError(f"lact_attention={choice!r}: expected one of {', '.join(ATTENTION_CHOICES)}")
    if choice == "auto":
        choice = "flex" if q.is_cuda else "band"
    return "flex" if choice == "flex" and key_valid is None else "band"


def sliding_window_attention(
    q: Tensor, k: Tensor, v: Tensor, window: int, key_valid: Tensor | None = None, path: str = "auto"
) -> Tensor:
    """Causal attention where query t sees keys t-window+1 .. t.

    q: [N, T, heads, d]; k, v: [N, S, heads, d] with S - T >= 0 keys before the first query
    (at most window-1 are used); key_valid: [N, S] bool (None: all valid); path: `auto`, `band` or
    `flex` (`attention_path`). Returns [N, T, heads, d].
    """
    n, t, heads, d = q.shape
    s = k.shape[1]
    before = s - t
    if before < 0:
        raise ValueError(
            f"sliding_window_attention: {s} keys for {t} queries; need at least one key per query"
        )
    if attention_path(q, key_valid, path) == "flex":
        return flex_window_attention(q, k, v, window)
    if key_valid is None:
        key_valid = torch.ones(n, s, dtype=torch.bool, device=q.device)
    # Exactly window-1 keys before the first query: query t's keys are then [t, t + window - 1].
    keep = min(before, window - 1)
    k, v, key_valid = k[:, before - keep :], v[:, before - keep :], key_valid[:, before - keep :]
    front = window - 1 - keep
    block = min(window, t)
    n_blocks = -(-t // block)
    span = -(-(block + window - 1) // 8) * 8  # keys per block, padded to a multiple of 8 for SDPA
    length = (n_blocks - 1) * block + span
    end = length - front - k.shape[1]
    k = F.pad(k, (0, 0, 0, 0, front, end))
    v = F.pad(v, (0, 0, 0, 0, front, end))
    # Front padding is invisible; end padding is seen only by padding queries (never an all-masked row).
    key_valid = F.pad(key_valid, (front, 0), value=False)
    key_valid = F.pad(key_valid, (0, end), value=True)
    q = F.pad(q, (0, 0, 0, 0, 0, n_blocks * block - t))
    qb = q.view(n, n_blocks, block, heads, d).permute(0, 1, 3, 2, 4).reshape(n * n_blocks, heads, block, d)
    kb = k.unfold(1, span, block).permute(0, 1, 2, 4, 3).reshape(n * n_blocks, heads, span, d)
    vb = v.unfold(1, span, block).permute(0, 1, 2, 4, 3).reshape(n * n_blocks, heads, span, d)
    rows = torch.arange(block, device=q.device)[:, None]
    cols = torch.arange(span, device=q.device)[None, :]
    band = (cols >= rows) & (cols <= rows + window - 1)  # [block, span]
    visible = key_valid.unfold(1, span, block).reshape(n * n_blocks, 1, 1, span)
    o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=band & visible)
    return (
        o.view(n, n_blocks, heads, block, d)
        .permute(0, 1, 3, 2, 4)
        .reshape(n, n_blocks * block, heads, d)[:, :t]
    )


def flex_window_attention(q: Tensor, k: Tensor, v: Tensor, window: int) -> Tensor:
    """`sliding_window_attention` on FlexAttention, every key valid (shapes as there)."""
    t, s = q.shape[1], k.shape[1]
    mask = _window_mask(t, s, window, q.device)
    o = _flex(q.is_cuda)(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask)
    return o.transpose(1, 2)


@cache
def _flex(compiled: bool):
    """FlexAttention: compiled for CUDA tensors (a second sequence length recompiles it for any
    length); eager it computes every score and has no CPU backward, which is enough for the CPU
    checks against `band`."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention) if compiled else flex_attention


@cache
def _window_mask(t: int, s: int, window: int, device: torch.device):
    """The block mask of query i (absolute position s - t + i) seeing key j iff 0 <= s-t+i-j < window;
    built once per shape (at L = 16K, 128 x 128 blocks)."""
    from torch.nn.attention.flex_attention import create_block_mask

    before = s - t

    def visible(b, h, i, j):
        ahead = before + i - j
        return (ahead >= 0) & (ahead < window)

    return create_block_mask(visible, None, None, t, s, device=device)
