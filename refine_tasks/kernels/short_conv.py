"""Depthwise causal short convolution with SiLU, as in fla's `ShortConvolution`.

The conv state of a stream is its last W inputs in fla's cache layout [N, D, W] (slot W-1 the
newest). A width-W conv reads only slots 1..W-1; slot 0 keeps the layout equal to fla's so
the same tensor can go to fla's kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from refine_tasks.kernels.backend import Backend


def short_conv(x: Tensor, weight: Tensor, backend: Backend, initial_state: Tensor | None = None) -> Tensor:
    """silu(causal depthwise conv(x)) -> [B, T, D]; x: [B, T, D], weight: [D, W], initial_state: [B, D, W]."""
    if backend == "triton":
        from fla.modules.causal_conv1d import causal_conv1d

        y, _ = causal_conv1d(x=x, weight=weight, initial_state=initial_state, activation="silu")
        return y
    W = weight.shape[-1]
    if initial_state is None:
        history = x.new_zeros(x.shape[0], W - 1, x.shape[-1])
    else:
        history = initial_state[..., 1:].transpose(1, 2).to(x.dtype)
    window = torch.cat([history, x], dim=1).transpose(1, 2)
    return F.silu(F.conv1d(window, weight[:, None, :].to(x.dtype), groups=x.shape[-1])).transpose(1, 2)


def conv_states(
    x: Tensor,
    positions: Tensor,
    width: int,
    initial_state: Tensor | None = None,
    windows: ConvWindows | None = None,
) -> Tensor:
    """The conv state after each prefix length: [B, P, D, W] for x: [B, T, D], positions: [B, P] in 0..T.

    The state after p tokens holds the inputs p-W..p-1; those before the sequence come from
    `initial_state` ([B, D, W]), else zeros. Gathers straight from x (no padded copy of the
    whole sequence, which would cost a full read and write of x per call), so gradients flow
    back into x (and into initial_state). windows: `conv_windows(positions, width)`, made by the
    caller once for every call with the same positions (each of its index ops is a launch).
    """
    B, P = positions.shape
    D = x.shape[-1]
    w = windows if windows is not None else conv_windows(positions, width)
    if initial_state is None:
        return _WindowGather.apply(x, w.index, w.before if w.early else None, width)
    windows = x.gather(1, w.index[..., None].expand(-1, -1, D)).view(B, P, width, D)
    if w.early:
        history = initial_state.transpose(1, 2).to(x.dtype)  # [B, W, D]: slot i holds input i-W (i >= 0)
        slots = w.slots[..., None].expand(-1, -1, D)
        windows = torch.where(w.before[..., None], history.gather(1, slots).view(B, P, width, D), windows)
    return windows.transpose(2, 3)


class _WindowGather(torch.autograd.Function):
    """Windows [B, P, D, W] of x [B, T, D] at index [B, P*W] (slots in `before` [B, P, W] zeroed),
    as one autograd node: a capturing pass takes three per layer, and the gather's own backward
    chain (gather, view, transpose, mask) cost a node each."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, before: Tensor | None, width: int) -> Tensor:
        B, T, D = x.shape
        ctx.save_for_backward(index, before)
        ctx.shape = x.shape
        windows = x.gather(1, index[..., None].expand(-1, -1, D))
        if before is not None:
            windows = windows.masked_fill(before.view(B, -1, 1), 0)
        return windows.view(B, -1, width, D).transpose(2, 3)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        index, before = ctx.saved_tensors
        B, _, D = ctx.shape
        grad = grad.transpose(2, 3).reshape(B, -1, D)
        if before is not None:
            grad = grad.masked_fill(before.view(B, -1, 1), 0)
        return (
            grad.new_zeros(ctx.shape).scatter_add_(1, index[..., None].expand(-1, -1, D), grad),
            None,
            None,
            None,
        )


@dataclass
class ConvWindows:
    """Where the conv state after each prefix reads: index [B, P*W] into the sequence (clamped),
    before [B, P, W] (slots that predate it), slots [B, P*W] into the initial state's layout, and
    early: whether any slot predates the sequence (else no masking at all)."""

    index: Tensor
    before: Tensor
    slots: Tensor
    early: bool


def conv_windows(positions: Tensor, width: int) -> ConvWindows:
    """The windows of `conv_states` for positions [B, P] (one host sync, for `early`)."""
    B, P = positions.shape
    index = (
        positions[:, :, None] - width + torch.arange(width, device=positions.device)
    )  # [B, P, W]: p-W..p-1
    before = index < 0
    return ConvWindows(
        index.clamp(min=0).reshape(B, P * width),
        before,
        (index + width).clamp(max=width - 1).reshape(B, P * width),
        bool(before.any()),
    )


def short_conv_step(x: Tensor, state: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """One token per stream: x [N, D], state [N, D, W] -> (silu(conv) [N, D], new state [N, D, W])."""
    window = torch.cat([state[..., 1:], x[..., None].to(state.dtype)], dim=-1)
    wide = torch.promote_types(window.dtype, torch.float32)  # accumulate as fla's kernels do
    y = (window.to(wide) * weight.to(wide)).sum(-1)
    return F.silu(y).to(x.dtype), window
