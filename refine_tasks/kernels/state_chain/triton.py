"""Triton kernels for the chained delta rule's bookkeeping: the state chain and the correction.

`refine_tasks.models.deltanet.segments` runs the delta rule once over all segments of a split sequence,
each from [0 | I], then chains the segments' affine maps (S_{j+1} = A_j S_j + F_j) and corrects
every token's output by its segment's start state (o_t = o0_t + S_j^T r_t). In torch that is
~50 small launches a layer forward and backward, and at a small model's size their host time,
not the GPU, sets the step's pace. Here each part is one launch:

- `chain_forward`: every row's chain, a program per (row, head, value tile) walking its segments.
- `chain_backward`: the reverse recurrence d_j += A_j^T d_{j+1}, in place, the same way.
- `correction_forward`: o = o0 + r S for a block of one segment's tokens per program.
- `correction_backward`: per block, the gradients of o0 (a copy) and of r (g S^T); per segment,
  the gradient of its start state (sum over its blocks of r^T g, in a fixed order: no atomics).

States are float32 (fp32 dots at full IEEE precision); token tensors are the kernel's dtype
(bf16 in training: dots in bf16 with float32 accumulation, as the torch path's matmul). Token
tensors are [N, H, C] with unit stride along C; states [R, H, K, V] likewise. Each chain program
holds a [K, K] float32 transition: fine at K = 64, but at K = 128 it spills (measured on an H100
at paper-1.3b: 4.9 ms a call), so `segments` runs these kernels for key dims up to MAX_KEY_DIM only.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

BLOCK_T = 64  # tokens per correction block (all of one segment)
MAX_KEY_DIM = 64  # largest key dim the kernels take (see the module docstring)


@triton.jit
def _chain_program(base, first, steps, K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr):
    """A chain program's place: (head, row, key and value-tile index vectors, value mask, the row's
    first state row, first segment, and segment count), from program ids (value tile, head, row)."""
    pv, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rv = pv * BV + tl.arange(0, BV)
    row0, seg0, n = tl.load(base + b), tl.load(first + b), tl.load(steps + b)
    return h, b, tl.arange(0, K), rv, rv[None, :] < V, row0, seg0, n


@triton.jit
def _chain_fwd_kernel(
    initial, free, transition, chains, base, first, steps,
    s_ib, s_ih, s_ik, s_fn, s_fh, s_fk, s_tn, s_th, s_tk, s_cr, s_ch, s_ck,
    K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr, MAX_STEPS: tl.constexpr,
):  # fmt: skip
    h, b, rk, rv, mask, row0, seg0, n = _chain_program(base, first, steps, K, V, BV)
    state = tl.load(initial + b * s_ib + h * s_ih + rk[:, None] * s_ik + rv[None, :], mask=mask, other=0.0)
    tl.store(chains + row0 * s_cr + h * s_ch + rk[:, None] * s_ck + rv[None, :], state, mask=mask)
    for j in range(MAX_STEPS):
        if j < n:
            a = tl.load(transition + (seg0 + j) * s_tn + h * s_th + rk[:, None] * s_tk + rk[None, :])
            f = tl.load(
                free + (seg0 + j) * s_fn + h * s_fh + rk[:, None] * s_fk + rv[None, :], mask=mask, other=0.0
            )
            state = tl.dot(a, state, input_precision="ieee") + f
            tl.store(
                chains + (row0 + j + 1) * s_cr + h * s_ch + rk[:, None] * s_ck + rv[None, :], state, mask=mask
            )


@triton.jit
def _chain_bwd_kernel(
    d, transition, base, first, steps,
    s_tn, s_th, s_tk, s_dr, s_dh, s_dk,
    K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr, MAX_STEPS: tl.constexpr,
):  # fmt: skip
    h, b, rk, rv, mask, row0, seg0, n = _chain_program(base, first, steps, K, V, BV)
    later = tl.load(d + (row0 + n) * s_dr + h * s_dh + rk[:, None] * s_dk + rv[None, :], mask=mask, other=0.0)
    for i in range(MAX_STEPS):
        j = MAX_STEPS - 1 - i
        if j < n:
            a_t = tl.load(transition + (seg0 + j) * s_tn + h * s_th + rk[None, :] * s_tk + rk[:, None])
            at = d + (row0 + j) * s_dr + h * s_dh + rk[:, None] * s_dk + rv[None, :]
            later = tl.load(at, mask=mask, other=0.0) + tl.dot(a_t, later, input_precision="ieee")
            tl.store(at, later, mask=mask)


@triton.jit
def _block_program(block_start, block_len, block_row, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr):
    """A correction program's place: (head, the block's token indices, their mask, key and value
    index vectors, the block's state row), from program ids (block, head)."""
    blk, h = tl.program_id(0), tl.program_id(1)
    rt = tl.load(block_start + blk) + tl.arange(0, BT)
    mask_t = tl.arange(0, BT)[:, None] < tl.load(block_len + blk)
    return h, rt, mask_t, tl.arange(0, K), tl.arange(0, V), tl.load(block_row + blk)


@triton.jit
def _correction_fwd_kernel(
    out, response, chains, o, block_start, block_len, block_row,
    s_ot, s_oh, s_rt, s_rh, s_cr, s_ch, s_ck, s_yt, s_yh,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    h, rt, mask_t, rk, rv, row = _block_program(block_start, block_len, block_row, K, V, BT)
    r = tl.load(response + rt[:, None] * s_rt + h * s_rh + rk[None, :], mask=mask_t, other=0.0)
    s = tl.load(chains + row * s_cr + h * s_ch + rk[:, None] * s_ck + rv[None, :]).to(r.dtype)
    acc = tl.dot(r, s, input_precision="ieee" if IEEE else "tf32")
    acc += tl.load(out + rt[:, None] * s_ot + h * s_oh + rv[None, :], mask=mask_t, other=0.0).to(tl.float32)
    tl.store(o + rt[:, None] * s_yt + h * s_yh + rv[None, :], acc.to(o.dtype.element_ty), mask=mask_t)


@triton.jit
def _correction_bwd_tokens_kernel(
    grad_o, chains, grad_out, block_start, block_len, block_row,
    s_gt, s_gh, s_cr, s_ch, s_ck, s_xt, s_xh,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    h, rt, mask_t, rk, rv, row = _block_program(block_start, block_len, block_row, K, V, BT)
    g = tl.load(grad_o + rt[:, None] * s_gt + h * s_gh + rv[None, :], mask=mask_t, other=0.0).to(
        grad_out.dtype.element_ty
    )
    tl.store(grad_out + rt[:, None] * s_xt + h * s_xh + rv[None, :], g, mask=mask_t)  # d o0 = d o
    s_t = tl.load(chains + row * s_cr + h * s_ch + rk[None, :] * s_ck + rv[:, None]).to(g.dtype)  # S^T [V, K]
    grad_r = tl.dot(g, s_t, input_precision="ieee" if IEEE else "tf32")
    tl.store(grad_out + rt[:, None] * s_xt + h * s_xh + V + rk[None, :], grad_r.to(g.dtype), mask=mask_t)


@triton.jit
def _correction_bwd_states_kernel(
    grad_o, response, d, segment_block, segment_blocks, start_rows, block_start, block_len,
    s_gt, s_gh, s_rt, s_rh, s_dr, s_dh, s_dk,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, IEEE: tl.constexpr, MAX_BLOCKS: tl.constexpr,
):  # fmt: skip
    seg, h = tl.program_id(0), tl.program_id(1)
    rk = tl.arange(0, K)
    rv = tl.arange(0, V)
    first = tl.load(segment_block + seg)
    n = tl.load(segment_blocks + seg)
    acc = tl.zeros((K, V), dtype=tl.float32)
    for i in range(MAX_BLOCKS):
        if i < n:
            rt = tl.load(block_start + first + i) + tl.arange(0, BT)
            mask_t = tl.arange(0, BT)[:, None] < tl.load(block_len + first + i)
            r = tl.load(response + rt[:, None] * s_rt + h * s_rh + rk[None, :], mask=mask_t, other=0.0)
            g = tl.load(grad_o + rt[:, None] * s_gt + h * s_gh + rv[None, :], mask=mask_t, other=0.0)
            acc = tl.dot(tl.trans(r), g.to(r.dtype), acc, input_precision="ieee" if IEEE else "tf32")
    row = tl.load(start_rows + seg)
    tl.store(d + row * s_dr + h * s_dh + rk[:, None] * s_dk + rv[None, :], acc)


def _bound(n: int) -> int:
    """A loop bound as a compile-time constant, rounded up to a power of two: Triton's interpreter
    takes no run-time loop bound, and the rounding keeps the compiled variants few (the longest
    segment changes with every step's positions)."""
    return 1 << max(n - 1, 0).bit_length()


def _value_tile(V: int) -> int:
    return min(V, 64)


def chain_forward(
    initial: Tensor,
    free: Tensor,
    transition: Tensor,
    chains: Tensor,
    rows: tuple[Tensor, Tensor, Tensor],
    max_steps: int,
) -> None:
    """chains[base[b] + j] = S_j of row b (S_0 = initial[b]; S_{j+1} = A S_j + F of segment first[b] + j).

    initial [B, H, K, V], free [n, H, K, V], transition [n, H, K, K], chains [n + B, H, K, V] (written);
    rows = (base, first, steps) [B] each, on the device; max_steps: the largest of steps."""
    B, H, K, V = initial.shape
    bv = _value_tile(V)
    _chain_fwd_kernel[(triton.cdiv(V, bv), H, B)](
        initial, free, transition, chains, *rows,
        *initial.stride()[:3], *free.stride()[:3], *transition.stride()[:3], *chains.stride()[:3],
        K=K, V=V, BV=bv, MAX_STEPS=_bound(max_steps), num_warps=8 if K >= 128 else 4,
    )  # fmt: skip


def chain_backward(
    d: Tensor, transition: Tensor, rows: tuple[Tensor, Tensor, Tensor], max_steps: int
) -> None:
    """In place on d [n + B, H, K, V] (the direct gradient of each state): d_j += A_j^T d_{j+1}, from
    each row's last state to its first."""
    _, H, K, V = d.shape
    bv = _value_tile(V)
    _chain_bwd_kernel[(triton.cdiv(V, bv), H, rows[0].shape[0])](
        d, transition, *rows, *transition.stride()[:3], *d.stride()[:3],
        K=K, V=V, BV=bv, MAX_STEPS=_bound(max_steps), num_warps=8 if K >= 128 else 4,
    )  # fmt: skip


def correction_forward(
    out: Tensor, response: Tensor, chains: Tensor, o: Tensor, blocks: tuple[Tensor, Tensor, Tensor]
) -> None:
    """o[t] = out[t] + r[t] S for every token t of every block (written into o [N, H, V]).

    out [N, H, V] (o0), response [N, H, K] (r), chains [R, H, K, V]; blocks = (start, length, row)
    [nb] each: a block's first token, its token count (<= BLOCK_T) and its segment's start state."""
    _, H, K, V = chains.shape
    _correction_fwd_kernel[(blocks[0].shape[0], H)](
        out, response, chains, o, *blocks,
        *out.stride()[:2], *response.stride()[:2], *chains.stride()[:3], *o.stride()[:2],
        K=K, V=V, BT=BLOCK_T, IEEE=response.dtype.is_floating_point and response.element_size() == 4,
        num_warps=8 if K * V >= 16384 else 4,
    )  # fmt: skip


def correction_backward(
    grad_o: Tensor,
    response: Tensor,
    chains: Tensor,
    grad_out: Tensor,
    d: Tensor,
    blocks: tuple[Tensor, Tensor, Tensor],
    segments: tuple[Tensor, Tensor, Tensor],
    max_blocks: int,
) -> None:
    """The gradients of o = o0 + r S: grad_out [N, H, V + K] gets [d o0 | d r] for every token;
    d[start row of each segment] gets the sum over its blocks of r^T grad_o (written, not added).

    segments = (first block, block count, start row) [n] each; max_blocks: the largest count."""
    _, H, K, V = chains.shape
    ieee = response.element_size() == 4
    warps = 8 if K * V >= 16384 else 4
    _correction_bwd_tokens_kernel[(blocks[0].shape[0], H)](
        grad_o, chains, grad_out, *blocks,
        *grad_o.stride()[:2], *chains.stride()[:3], *grad_out.stride()[:2],
        K=K, V=V, BT=BLOCK_T, IEEE=ieee, num_warps=warps,
    )  # fmt: skip
    _correction_bwd_states_kernel[(segments[0].shape[0], H)](
        grad_o, response, d, *segments, blocks[0], blocks[1],
        *grad_o.stride()[:2], *response.stride()[:2], *d.stride()[:3],
        K=K, V=V, BT=BLOCK_T, IEEE=ieee, MAX_BLOCKS=_bound(max_blocks), num_warps=warps,
    )  # fmt: skip
