"""The chained delta rule's state chain and output correction as torch ops: the CPU path, and the
reference the Triton kernels beside it (`triton.py`) are tested against.

A sequence split into n segments (B rows) was run through the delta rule once, every segment
from the state [0 | I]: per segment its end state from zero F and its transition A (`free`,
`transition` [n, H, K, V] and [n, H, K, K]); per token its output from zero o0 and response r
(`o_free`, `response` [N, H, V] and [N, H, K]). These functions chain the true states (S_{j+1} =
A_j S_j + F_j along each row, from the row's initial state) and correct the outputs (o = o0 +
S^T r, S the state before the token's segment), and their backward. States live in one tensor
`chains` of n + B rows: row b's chain S_0 .. S_steps[b] at rows base[b] .. base[b] + steps[b].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

BLOCK = 256  # tokens per block of the batched correction: padding waste <= BLOCK - 1 per segment


@dataclass
class SegmentBlocks:
    """The flattened tokens of the non-empty segments (lengths, in order) regrouped into blocks of
    `size` slots, each block within one segment, the last block of a segment padded.

    segment [nb]: the segment of each block; gather [nb * size]: the token each slot reads
    (padding slots read token 0; their results are never read back); padding [nb * size]: the
    slots that hold no token; slot [N]: the slot of each token (N = sum of lengths).
    """

    size: int
    segment: Tensor
    gather: Tensor
    padding: Tensor
    slot: Tensor

    @classmethod
    def build(cls, lengths: list[int], device: torch.device) -> SegmentBlocks:
        size = min(BLOCK, max(lengths, default=1))
        n = torch.tensor(lengths, dtype=torch.long)  # tensor ops, not Python lists: ~16K tokens a step
        blocks = (n + size - 1) // size  # per segment
        first_slot = (blocks.cumsum(0) - blocks) * size
        first_token = n.cumsum(0) - n
        segment_of_token = torch.repeat_interleave(torch.arange(len(lengths)), n)
        token = torch.arange(int(n.sum()))
        slot = first_slot[segment_of_token] + token - first_token[segment_of_token]
        slots = int(blocks.sum()) * size
        gather = torch.zeros(slots, dtype=torch.long).index_copy_(0, slot, token)
        padding = torch.ones(slots, dtype=torch.bool).index_fill_(0, slot, False)
        segment = torch.repeat_interleave(torch.arange(len(lengths)), blocks)
        return cls(size, *(t.to(device) for t in (segment, gather, padding, slot)))


def blocked(x: Tensor, blocks: SegmentBlocks) -> Tensor:
    """Token rows [N, H, C] regrouped into blocks [nb, H, size, C] (padding slots read token 0)."""
    _, H, C = x.shape
    return x.index_select(0, blocks.gather).view(-1, blocks.size, H, C).transpose(1, 2)


def unblocked(x: Tensor, blocks: SegmentBlocks) -> Tensor:
    """Blocks [nb, H, size, C] back to token rows [N, H, C] (padding slots dropped)."""
    H, C = x.shape[1], x.shape[-1]
    return x.transpose(1, 2).reshape(-1, H, C).index_select(0, blocks.slot)


def chain_forward(
    chains: Tensor,
    initial: Tensor,
    free: Tensor,
    transition: Tensor,
    base_rows: Tensor,
    base: list[int],
    steps: list[int],
) -> None:
    """Fill chains [n + B, H, K, V]: each row's initial state [B, H, K, V] at base_rows, then
    S_{j+1} = A_j S_j + F_j for its steps[b] segments (segments in row order)."""
    chains.index_copy_(0, base_rows, initial)
    rows = chains.unbind(0)
    pairs = zip(free.unbind(0), transition.unbind(0), strict=True)
    for first, count in zip(base, steps, strict=True):
        for j in range(count):
            f, a = next(pairs)
            torch.baddbmm(f, a, rows[first + j], out=rows[first + j + 1])


def correction_forward(
    chains: Tensor,
    o_free: Tensor,
    response: Tensor,
    start_rows: Tensor,
    blocks: SegmentBlocks,
    dtype: torch.dtype,
) -> Tensor:
    """o = o0 + S^T r per token [N, H, V] in dtype; start_rows [n]: each segment's state row."""
    per_block = chains.index_select(0, start_rows).index_select(0, blocks.segment)
    r = blocked(response, blocks)  # [nb, H, size, K]
    correction = unblocked(torch.matmul(r, per_block.to(r.dtype)), blocks)
    # o = o0 + S^T r at the kernel's output precision (fla's own output kernel reads the states
    # in the input dtype too); the chain itself stays in float32 or wider.
    return (o_free.to(chains.dtype) + correction.to(chains.dtype)).to(dtype)


def correction_backward(
    grad_o: Tensor,
    response: Tensor,
    chains: Tensor,
    grad_out: Tensor,
    d: Tensor,
    start_rows: Tensor,
    blocks: SegmentBlocks,
) -> None:
    """The correction's backward: grad_out [N, H, V + K] = [d o0 | d r]; d[start rows] = d S."""
    V = chains.shape[-1]
    grad_out[..., :V] = grad_o
    g = blocked(grad_o.to(response.dtype), blocks)  # [nb, H, size, V]
    g = g.masked_fill(blocks.padding.view(-1, 1, blocks.size, 1), 0)  # padding reads token 0
    per_block = chains.index_select(0, start_rows).index_select(0, blocks.segment)
    grad_out[..., V:] = unblocked(torch.matmul(g, per_block.to(g.dtype).transpose(-1, -2)), blocks)
    grad_blocks = torch.matmul(blocked(response, blocks).transpose(-1, -2), g)  # [nb, H, K, V]
    starts = torch.zeros_like(d[: start_rows.shape[0]]).index_add_(0, blocks.segment, grad_blocks.to(d.dtype))
    d.index_copy_(0, start_rows, starts)


def chain_backward(d: Tensor, transition: Tensor, starts: list[int]) -> None:
    """d_j += A_j^T d_{j+1} along each chain, latest segment first (starts: each segment's state row)."""
    rows = d.unbind(0)
    for a_t, row in reversed(list(zip(transition.transpose(-1, -2).unbind(0), starts, strict=True))):
        rows[row].baddbmm_(a_t, rows[row + 1])
