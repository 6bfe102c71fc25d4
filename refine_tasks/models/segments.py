"""The delta rule over a sequence split at prefix lengths, with the exact state after each prefix.

This is how `forward_branched` and `prefill(capture=...)` get the state after every requested
prefix in one pass, differentiably (gradients reach the prefix through the captured states).

The delta rule is affine in its initial state: per head, with P_t = I - beta_t k_t k_t^T,
a segment maps a start state S [K, V] to A S + F (A = P_n ... P_1 [K, K]; F: the segment's end
state from zero) and emits o_t = o0_t + S^T r_t (o0: its output from zero; r_t = scale A_t^T q_t,
A_t the product up to t). The value columns of the state evolve independently, so appending K
value columns of zeros whose initial state is the identity makes ONE kernel call produce, for
every segment at once (varlen, each from [0 | I]): o0 and r as the output's two column blocks,
F and A as the end state's. The chain S_{j+1} = A_j S_j + F_j and the correction S_j^T r are
small batched matmuls. So a layer costs one kernel call with 2V value columns instead of P+1
calls: fla's calls cost ~1 ms of host time each, and one call per segment per layer left the
GPU idle most of the step (measured: 2.1 s of host time against 0.5 s of GPU time at 1.3B/16K).
The correction runs for all segments at once, not per segment: tokens are gathered into blocks
of at most BLOCK tokens of one segment each, so S^T r is one batched matmul per layer (a loop
over segments cost ~9 small ops each, forward and backward, for every segment of every layer:
~6,000 launches a step at 1.3B, 8 positions, which left the step host-bound).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from refine_tasks.kernels import Backend, delta_rule


@dataclass
class SegmentPlan:
    """Where each row's sequence is cut. Rows [B], segments j = 0..P between sorted positions.

    order[b]: the row's positions sorted (indices into the row); sizes[b]: the P+1 segment
    lengths (zeros allowed); lengths: the non-empty ones of all rows in order; cu_seqlens:
    their boundaries in the flattened [B*T] sequence (device and host copies, reused across
    layers so that fla's per-tensor caches hit and no layer syncs); steps[b]: the row's count
    of non-empty segments; at[b] [P]: for each position, how many of them precede it (the
    index of its state in the row's chain of states; on the device, made once per plan).
    """

    order: list[list[int]]
    sizes: list[list[int]]
    lengths: list[int]
    cu_seqlens: Tensor
    cu_seqlens_cpu: Tensor
    blocks: SegmentBlocks
    steps: list[int]
    at: list[Tensor]

    @classmethod
    def build(cls, rows: list[list[int]], T: int, device: torch.device) -> SegmentPlan:
        order, sizes = [], []
        for b, row in enumerate(rows):
            if row and (min(row) < 0 or max(row) > T):
                raise ValueError(f"positions must be prefix lengths in 0..{T}, got row {b}: {row}")
            rank = sorted(range(len(row)), key=row.__getitem__)
            cuts = [0, *(row[j] for j in rank), T]
            order.append(rank)
            sizes.append([end - start for start, end in zip(cuts[:-1], cuts[1:], strict=True)])
        lengths = [size for row in sizes for size in row if size]
        host = torch.tensor([0, *lengths], dtype=torch.long).cumsum(0)
        steps = [sum(1 for size in row if size) for row in sizes]
        at = []
        for rank, row in zip(order, sizes, strict=True):
            before = [sum(1 for size in row[:i] if size) for i in range(len(row))]  # per segment
            position_rank = sorted(range(len(rank)), key=rank.__getitem__)
            at.append(torch.tensor([before[1 + r] for r in position_rank], dtype=torch.long).to(device))
        blocks = SegmentBlocks.build(lengths, device)
        return cls(order, sizes, lengths, host.to(device), host, blocks, steps, at)


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

    def correction(self, response: Tensor, starts: Tensor) -> Tensor:
        """S_j^T r_t for every token t of segment j, in response's dtype: response [N, H, K],
        starts [n, H, K, V] (float32 or wider; their gradient is summed over blocks there) -> [N, H, V]."""
        _, H, K = response.shape
        r = _Gather.apply(response, self.gather, self.slot, None).view(
            -1, self.size, H, K
        )  # [nb, size, H, K]
        per_block = starts.index_select(0, self.segment).to(response.dtype)  # [nb, H, K, V]
        out = torch.einsum("nthk,nhkv->nthv", r, per_block)
        return _Gather.apply(out.reshape(-1, H, out.shape[-1]), self.slot, self.gather, self.padding)


class _Gather(torch.autograd.Function):
    """x.index_select(0, index) where `index` and `inverse` map tokens and block slots one to one,
    up to padding slots (read by no token, their rows `pad` in the slot layout, or reading token 0
    with a gradient that is zero since their outputs are never read). The backward is then the
    gather by `inverse` (padding rows zeroed), not a scatter-add: no atomics, the same bits every run."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor, pad: Tensor | None) -> Tensor:
        ctx.save_for_backward(inverse, pad)
        return x.index_select(0, index)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        inverse, pad = ctx.saved_tensors
        back = grad.index_select(0, inverse)
        if pad is not None:
            back = back.masked_fill(pad.view(-1, *[1] * (grad.dim() - 1)), 0)
        return back, None, None, None


_plan_cache: list[tuple[Tensor, int, int, torch.device, SegmentPlan]] = []


def segment_plan(positions: Tensor, T: int, device: torch.device) -> SegmentPlan:
    """The plan for positions [B, P], built (one host copy of the positions) once per positions
    tensor and in-place version: every layer of a pass receives the same tensor."""
    for cached, version, length, dev, plan in _plan_cache:
        if cached is positions and version == positions._version and length == T and dev == device:
            return plan
    plan = SegmentPlan.build(positions.tolist(), T, device)
    _plan_cache[:] = [(positions, positions._version, T, device, plan)]
    return plan


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
    prefix lengths 0..T in any order (repeats allowed); initial_state: [B, H, K, V] or None (zeros).
    States are float32 or wider; o is in v's dtype.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    plan = segment_plan(positions, T, q.device)
    n = plan.cu_seqlens_cpu.numel() - 1
    state_dtype = torch.promote_types(q.dtype, torch.float32)
    start = q.new_zeros(n, H, K, V + K, dtype=state_dtype)
    start[..., V:] = torch.eye(K, dtype=state_dtype, device=q.device)
    widened = torch.cat([v, v.new_zeros(B, T, H, K)], dim=-1)
    out, ends = delta_rule(
        *(x.flatten(0, 1)[None] for x in (q, k, widened, beta)),
        backend=backend,
        initial_state=start,
        output_final_state=True,
        cu_seqlens=plan.cu_seqlens,
        cu_seqlens_cpu=plan.cu_seqlens_cpu,
    )
    free, transition = ends.split([V, K], dim=-1)  # F [n, H, K, V], A [n, H, K, K]
    o_free, response = out[0].split([V, K], dim=-1)  # o0 [B*T, H, V], r [B*T, H, K]
    if initial_state is None:
        initial_state = q.new_zeros(B, H, K, V, dtype=state_dtype)
    starts, captured, finals = [], [], []  # starts: the state before each non-empty segment
    rows = zip(free.split(plan.steps), transition.split(plan.steps), strict=True)
    for b, (f, a) in enumerate(rows):
        chain = _Chain.apply(initial_state[b].to(state_dtype), f, a)  # [steps + 1, H, K, V]
        starts.append(chain[:-1])
        captured.append(chain.index_select(0, plan.at[b]))
        finals.append(chain[-1])
    # o = o0 + S^T r at the kernel's output precision (fla's own output kernel reads the states in
    # the input dtype too); the chain itself stays in float32 or wider.
    correction = plan.blocks.correction(response, torch.cat(starts))
    o = (o_free.to(state_dtype) + correction.to(state_dtype)).to(v.dtype)
    return o.view(B, T, H, V), torch.stack(captured), torch.stack(finals)


class _Chain(torch.autograd.Function):
    """The states along one row: S_0 = start [H, K, V], S_{j+1} = A_j S_j + F_j (free [n, H, K, V],
    transition [n, H, K, K]) -> [n + 1, H, K, V]. One autograd node with a hand-written backward
    (dS_j = grad_j + A_j^T dS_{j+1}; dA_j = dS_{j+1} S_j^T; dF_j = dS_{j+1}) instead of one per
    step: each node costs more host time than its two small matmuls take on the GPU."""

    @staticmethod
    def forward(ctx, start: Tensor, free: Tensor, transition: Tensor) -> Tensor:
        states = start.new_empty(free.shape[0] + 1, *start.shape)
        states[0] = start
        # unbind: one op for all the per-step views (indexing costs an op per step and operand)
        views = states.unbind(0)
        with torch.autocast(start.device.type, enabled=False):
            for f, a, s, out in zip(free.unbind(0), transition.unbind(0), views[:-1], views[1:], strict=True):
                torch.baddbmm(f, a, s, out=out)
        ctx.save_for_backward(states, transition)
        return states

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        states, transition = ctx.saved_tensors
        d = torch.empty_like(states)  # d[j]: the loss's gradient with respect to S_j, all paths
        d[-1] = grad[-1]
        views = d.unbind(0)
        steps = zip(grad.unbind(0)[:-1], transition.transpose(-1, -2).unbind(0), views[1:], views[:-1], strict=True)
        with torch.autocast(states.device.type, enabled=False):
            for g, a_t, later, out in reversed(list(steps)):
                torch.baddbmm(g, a_t, later, out=out)
            d_transition = torch.matmul(d[1:], states[:-1].transpose(-1, -2))
        return d[0], d[1:], d_transition
