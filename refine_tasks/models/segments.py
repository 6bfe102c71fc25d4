"""The delta rule over a sequence split at prefix lengths, chaining the state across segments.

This is how `forward_branched` and `prefill(capture=...)` get the exact state after every
requested prefix in one pass: segment j of every row runs in one varlen kernel call whose
initial states are the final states of segment j-1 (fla's chunk kernel returns the gradient
of the initial state, so gradients flow through the chain exactly).
"""

from __future__ import annotations

import torch
from torch import Tensor

from refine_tasks.kernels import Backend, delta_rule


def chained_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    positions: Tensor,
    *,
    backend: Backend,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """o [B, T, H, V], states at positions [B, P, H, K, V], final state [B, H, K, V].

    q, k: [B, T, H, K]; v: [B, T, H, V]; beta: [B, T, H]; positions: LongTensor [B, P] with
    prefix lengths 0..T in any order; initial_state: [B, H, K, V] or None (zeros).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    P = positions.shape[1]
    if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) > T):
        raise ValueError(
            f"positions must be prefix lengths in 0..{T}, got min {int(positions.min())} max {int(positions.max())}"
        )
    order = positions.argsort(dim=1, stable=True)
    bounds = torch.cat(
        [positions.new_zeros(B, 1), positions.gather(1, order), positions.new_full((B, 1), T)], dim=1
    ).tolist()
    state_dtype = torch.promote_types(q.dtype, torch.float32)
    state = initial_state if initial_state is not None else q.new_zeros(B, H, K, V, dtype=state_dtype)
    flat = [x.flatten(0, 1) for x in (q, k, v, beta)]  # token b*T + t
    pieces, piece_index, at_sorted = [], [], []
    for j in range(P + 1):
        rows = [b for b in range(B) if bounds[b][j + 1] > bounds[b][j]]
        if rows:
            spans = [(b * T + bounds[b][j], b * T + bounds[b][j + 1]) for b in rows]
            index = torch.cat([torch.arange(s, e, device=q.device) for s, e in spans])
            lengths = torch.tensor([0] + [e - s for s, e in spans], device=q.device)
            o_j, last = delta_rule(
                *(x.index_select(0, index)[None] for x in flat),
                backend=backend,
                initial_state=state if len(rows) == B else state[rows],
                output_final_state=True,
                cu_seqlens=lengths.cumsum(0),
            )
            pieces.append(o_j[0])
            piece_index.append(index)
            last = last.to(state.dtype)
            state = last if len(rows) == B else state.index_copy(0, torch.tensor(rows, device=q.device), last)
        if j < P:
            at_sorted.append(state)
    o = torch.cat(pieces).new_zeros(B * T, H, V).index_copy(0, torch.cat(piece_index), torch.cat(pieces))
    if not at_sorted:
        return o.view(B, T, H, V), state.new_zeros(B, 0, H, K, V), state
    sorted_states = torch.stack(at_sorted, dim=1)  # [B, P, H, K, V] in sorted-position order
    unsorted = sorted_states.gather(1, order.argsort(dim=1)[:, :, None, None, None].expand_as(sorted_states))
    return o.view(B, T, H, V), unsorted, state
