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
~6,000 launches a step at 1.3B, 8 positions, which left the step host-bound). Everything after
the kernel call (chain, correction, captured and final states) is one autograd node with a
hand-written backward: as ~70 small nodes a layer it kept a small model's step host-bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from refine_tasks.kernels import Backend, delta_rule
from refine_tasks.kernels.state_chain import naive
from refine_tasks.kernels.state_chain import triton as state_chain
from refine_tasks.kernels.state_chain.naive import SegmentBlocks
from refine_tasks.kernels.state_chain.triton import BLOCK_T, MAX_KEY_DIM


@dataclass
class SegmentPlan:
    """Where each row's sequence is cut. Rows [B], segments j = 0..P between sorted positions.

    order[b]: the row's positions sorted (indices into the row); sizes[b]: the P+1 segment
    lengths (zeros allowed); lengths: the non-empty ones of all rows in order; cu_seqlens:
    their boundaries in the flattened [B*T] sequence (device and host copies, reused across
    layers so that fla's per-tensor caches hit and no layer syncs); steps[b]: the row's count
    of non-empty segments.

    The states of all rows live in one tensor of n + B rows (n non-empty segments): row b's
    chain S_0 .. S_steps[b] at rows base[b] .. base[b] + steps[b]. On the device, made once per
    plan: start_rows [n] (the state each segment starts from, in segment order; `starts` on the
    host), capture_rows
    [B*P] (the state after each position, row-major), base_rows [B], final_rows [B].
    """

    order: list[list[int]]
    sizes: list[list[int]]
    lengths: list[int]
    cu_seqlens: Tensor
    cu_seqlens_cpu: Tensor
    blocks: SegmentBlocks
    steps: list[int]
    base: list[int]
    starts: list[int]
    start_rows: Tensor
    capture_rows: Tensor
    base_rows: Tensor
    final_rows: Tensor
    starts_made: dict = field(default_factory=dict)  # identity_start's tensors by (H, K, V, dtype)
    kernel_maps: KernelMaps | None = None  # the Triton path's index maps, made on its first use

    def identity_start(self, H: int, K: int, V: int, dtype: torch.dtype) -> Tensor:
        """[0 | I] per segment [n, H, K, V + K]: the kernel's initial states, made once per plan
        and shape (every layer of a pass reuses them; the kernel only reads them)."""
        key = (H, K, V, dtype)
        if key not in self.starts_made:
            start = self.cu_seqlens.new_zeros(len(self.lengths), H, K, V + K, dtype=dtype)
            start[..., V:] = torch.eye(K, dtype=dtype, device=start.device)
            self.starts_made[key] = start
        return self.starts_made[key]

    def maps(self) -> KernelMaps:
        if self.kernel_maps is None:
            self.kernel_maps = KernelMaps.build(self)
        return self.kernel_maps

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
        base = [sum(steps[:b]) + b for b in range(len(rows))]
        start_rows, capture_rows = [], []
        for b, (rank, row) in enumerate(zip(order, sizes, strict=True)):
            start_rows += range(base[b], base[b] + steps[b])
            before = [sum(1 for size in row[:i] if size) for i in range(len(row))]  # per segment
            position_rank = sorted(range(len(rank)), key=rank.__getitem__)
            capture_rows += [base[b] + before[1 + r] for r in position_rank]
        index = (start_rows, capture_rows, base, [at + n for at, n in zip(base, steps, strict=True)])
        blocks = SegmentBlocks.build(lengths, device)
        on_device = (torch.tensor(i, dtype=torch.long).to(device) for i in index)
        return cls(order, sizes, lengths, host.to(device), host, blocks, steps, base, start_rows, *on_device)


@dataclass
class KernelMaps:
    """What the Triton kernels of `refine_tasks.kernels.state_chain.triton` read, on the device.

    rows: (base, first segment, steps) per row [B]; blocks: (first token, token count, start-state
    row) per block of at most state_chain.BLOCK_T tokens of one segment [nb]; segments: (first
    block, block count, start-state row) per segment [n]; max_steps, max_blocks: loop bounds."""

    rows: tuple[Tensor, Tensor, Tensor]
    blocks: tuple[Tensor, Tensor, Tensor]
    segments: tuple[Tensor, Tensor, Tensor]
    max_steps: int
    max_blocks: int

    @classmethod
    def build(cls, plan: SegmentPlan) -> KernelMaps:
        device = plan.cu_seqlens.device
        first = [base - b for b, base in enumerate(plan.base)]
        start, length, row, seg_first, seg_count = [], [], [], [], []
        begins = plan.cu_seqlens_cpu.tolist()[:-1]  # each segment's first token
        for begin, size, state in zip(begins, plan.lengths, plan.starts, strict=True):
            seg_first.append(len(start))
            offsets = range(0, size, BLOCK_T)
            seg_count.append(len(offsets))
            start += [begin + o for o in offsets]
            length += [min(BLOCK_T, size - o) for o in offsets]
            row += [state] * len(offsets)

        def on_device(*lists: list[int]) -> tuple[Tensor, ...]:
            return tuple(torch.tensor(x, dtype=torch.long).to(device) for x in lists)

        return cls(
            on_device(plan.base, first, plan.steps),
            on_device(start, length, row),
            on_device(seg_first, seg_count, plan.starts),
            max(plan.steps, default=0),
            max(seg_count, default=0),
        )


def segment_plan(positions: Tensor, T: int, device: torch.device) -> SegmentPlan:
    """The plan for positions [B, P] (one host copy of the positions); a pass builds it once, through
    its `Capture`, and every layer reuses it."""
    return SegmentPlan.build(positions.tolist(), T, device)


def chained_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    positions: Tensor,
    *,
    backend: Backend,
    chain: str = "auto",
    initial_state: Tensor | None = None,
    plan: SegmentPlan | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """o [B, T, H, V], states at positions [B, P, H, K, V], final state [B, H, K, V].

    q, k: [B, T, H, K]; v: [B, T, H, V]; beta: [B, T, H]; positions: LongTensor [B, P] with
    prefix lengths 0..T in any order (repeats allowed); initial_state: [B, H, K, V] or None (zeros).
    States are float32 or wider; o is in v's dtype. chain: the config's `state_chain` (auto, torch
    or triton): how the chain and correction after the kernel call run on the Triton backend.
    plan: `segment_plan(positions, T, device)`, made once per pass by the caller (None: made here).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    plan = plan if plan is not None else segment_plan(positions, T, q.device)
    state_dtype = torch.promote_types(q.dtype, torch.float32)
    widened = F.pad(v, (0, K))  # K value columns of zeros after V
    out, ends = delta_rule(
        *(x.reshape(1, B * T, *x.shape[2:]) for x in (q, k, widened, beta)),  # varlen: one row
        backend=backend,
        initial_state=plan.identity_start(H, K, V, state_dtype),
        output_final_state=True,
        cu_seqlens=plan.cu_seqlens,
        cu_seqlens_cpu=plan.cu_seqlens_cpu,
    )
    if initial_state is None:
        initial_state = q.new_zeros(B, H, K, V, dtype=state_dtype)
    # The kernels hold a [K, K] float32 transition per program: at K = 128 (paper-1.3b) that spills
    # (measured on an H100: 4.9 ms a call against the torch path's few batched matmuls), while at
    # K = 64 they cut the host time of a small model's step (1.46-1.48x -> 1.32-1.40x NTP, H100).
    triton = backend == "triton" and chain != "torch" and state_dtype == torch.float32 and K <= MAX_KEY_DIM
    if chain == "triton" and backend == "triton" and not triton:
        raise ValueError(
            f"state_chain='triton': the kernels take float32 states and key dims <= {MAX_KEY_DIM} "
            f"(got {state_dtype}, K={K}); use 'auto' or 'torch'"
        )
    o, captured, final = _Chained.apply(out[0], ends, initial_state.to(state_dtype), plan, v.dtype, triton)
    P = positions.shape[1]
    return o.view(B, T, H, V), captured.view(B, P, H, K, V), final


class _Chained(torch.autograd.Function):
    """From the kernel's pass over all segments (each from [0 | I]) to the chained results, as ONE
    autograd node with a hand-written backward (a node per step of it cost more host time than
    its small matmuls take on the GPU; this is all of a layer's work between the kernel and o).

    out [N, H, V + K]: [o0 | r] per token (N = B*T); ends [n, H, K, V + K]: [F | A] per segment;
    initial [B, H, K, V]. Forward: the chain S_{j+1} = A_j S_j + F_j along each row (float32 or
    wider), then o = o0 + S^T r with S the state before the token's segment, computed per block
    of one segment's tokens in the kernel's dtype. Returns o [N, H, V] in `dtype`, the states at
    the positions [B*P, H, K, V] and the final states [B, H, K, V]. With `triton`, the chain and
    the correction run as the kernels of `refine_tasks.kernels.state_chain.triton` (one launch each);
    else as their torch reference, `refine_tasks.kernels.state_chain.naive` (the CPU path).
    """

    @staticmethod
    def forward(
        ctx, out: Tensor, ends: Tensor, initial: Tensor, plan: SegmentPlan, dtype: torch.dtype, triton: bool
    ):
        K = ends.shape[2]
        V = ends.shape[3] - K
        free, transition = ends.split([V, K], dim=-1)
        o_free, response = out.split([V, K], dim=-1)
        chains = ends.new_empty(ends.shape[0] + len(plan.steps), *initial.shape[1:])
        with torch.autocast(out.device.type, enabled=False):
            if triton:
                maps = plan.maps()
                state_chain.chain_forward(initial, free, transition, chains, maps.rows, maps.max_steps)
                o = torch.empty(*o_free.shape, dtype=dtype, device=out.device)
                state_chain.correction_forward(o_free, response, chains, o, maps.blocks)
            else:
                naive.chain_forward(chains, initial, free, transition, plan.base_rows, plan.base, plan.steps)
                o = naive.correction_forward(chains, o_free, response, plan.start_rows, plan.blocks, dtype)
        ctx.plan, ctx.triton = plan, triton
        ctx.save_for_backward(chains, transition, response)
        return o, chains.index_select(0, plan.capture_rows), chains.index_select(0, plan.final_rows)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_o: Tensor | None, grad_captured: Tensor | None, grad_final: Tensor | None):
        chains, transition, response = ctx.saved_tensors
        plan: SegmentPlan = ctx.plan
        K, V = transition.shape[-1], chains.shape[-1]
        grad_out = response.new_empty(response.shape[0], response.shape[1], V + K)
        d = torch.zeros_like(chains)  # d[row]: the loss's gradient with respect to that state, all paths
        with torch.autocast(chains.device.type, enabled=False):
            if grad_o is None:
                grad_out.zero_()
            elif ctx.triton:
                maps = plan.maps()
                state_chain.correction_backward(
                    grad_o, response, chains, grad_out, d, maps.blocks, maps.segments, maps.max_blocks
                )
            else:
                naive.correction_backward(grad_o, response, chains, grad_out, d, plan.start_rows, plan.blocks)
            if grad_captured is not None:
                d.index_add_(0, plan.capture_rows, grad_captured)
            if grad_final is not None:
                d.index_add_(0, plan.final_rows, grad_final)
            if ctx.triton:
                maps = plan.maps()
                state_chain.chain_backward(d, transition, maps.rows, maps.max_steps)
            else:
                naive.chain_backward(d, transition, plan.starts)
            later = d.index_select(0, plan.start_rows + 1)  # d_{j+1} per segment
            grad_transition = torch.matmul(later, chains.index_select(0, plan.start_rows).transpose(-1, -2))
        grad_ends = torch.cat([later, grad_transition], dim=-1)
        grad_initial = d.index_select(0, plan.base_rows) if ctx.needs_input_grad[2] else None
        return grad_out, grad_ends, grad_initial, None, None, None
