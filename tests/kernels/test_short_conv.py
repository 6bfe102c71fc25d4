"""The short convolution: full-sequence form, its state, and the one-token step."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refine_tasks.kernels import conv_states, short_conv, short_conv_step


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def loop_conv(x, weight, history):
    """y_t = silu(sum_i w[i] * x_{t-W+1+i}) written as a loop; history: the W-1 inputs before x."""
    full = torch.cat([history, x], dim=1)
    W = weight.shape[1]
    out = [F.silu((full[:, t : t + W] * weight.T).sum(1)) for t in range(x.shape[1])]
    return torch.stack(out, 1)


def test_short_conv_matches_loop_with_and_without_state():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 11, 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, 4, generator=g, dtype=torch.float64)
    state = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    assert (
        rel_err(short_conv(x, w, "torch"), loop_conv(x, w, torch.zeros(2, 3, 6, dtype=torch.float64))) < 1e-13
    )
    y = short_conv(x, w, "torch", initial_state=state)
    assert rel_err(y, loop_conv(x, w, state[..., 1:].transpose(1, 2))) < 1e-13


def test_conv_states_hold_the_last_inputs_and_continue_exactly():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 9, 5, generator=g, dtype=torch.float64)
    w = torch.randn(5, 4, generator=g, dtype=torch.float64)
    positions = torch.tensor([[0, 2, 9], [4, 9, 7]])
    states = conv_states(x, positions, 4)  # [B, P, D, W]
    assert torch.equal(states[0, 0], torch.zeros(5, 4, dtype=torch.float64))
    assert torch.equal(states[0, 1][:, 2:], x[0, :2].T) and torch.equal(
        states[0, 1][:, :2], torch.zeros(5, 2, dtype=torch.float64)
    )
    assert torch.equal(states[1, 0], x[1, 0:4].T)
    # the state after 4 tokens continues the conv exactly
    tail = short_conv(x[1:, 4:], w, "torch", initial_state=states[1:, 0])
    assert rel_err(tail, short_conv(x[1:], w, "torch")[:, 4:]) < 1e-13


def test_conv_states_with_initial_state_match_the_padded_sequence():
    """Windows reaching before the sequence read the initial state; gradients reach x and the state."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    init = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    positions = torch.tensor([[0, 2, 6], [5, 1, 3]])
    states = conv_states(x, positions, 4, initial_state=init)
    padded = torch.cat([init.transpose(1, 2), x], dim=1)  # input t sits at 4 + t; slot i of init is input i-4
    want = torch.stack(
        [torch.stack([padded[b, p : p + 4].T for p in positions[b].tolist()]) for b in range(2)]
    )
    assert torch.equal(states, want)
    w = torch.randn(want.shape, generator=g, dtype=torch.float64)
    got_grads = torch.autograd.grad((states * w).sum(), (x, init))
    want_grads = torch.autograd.grad((want * w).sum(), (x, init))
    for got, ref in zip(got_grads, want_grads, strict=True):
        assert ref.norm() > 0 and torch.equal(got, ref)


def test_conv_states_without_initial_state_backpropagate_like_the_zero_padded_sequence():
    """The one-node gather: windows before the sequence are zeros, overlapping and repeated
    windows sum their gradients into x."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    positions = torch.tensor([[1, 5, 6, 6], [7, 3, 0, 4]])
    states = conv_states(x, positions, 4)
    padded = torch.cat([x.new_zeros(2, 4, 3), x], dim=1)
    want = torch.stack(
        [torch.stack([padded[b, p : p + 4].T for p in positions[b].tolist()]) for b in range(2)]
    )
    assert torch.equal(states, want)
    w = torch.randn(want.shape, generator=g, dtype=torch.float64)
    (got,) = torch.autograd.grad((states * w).sum(), x)
    (ref,) = torch.autograd.grad((want * w).sum(), x)
    assert ref.norm() > 0 and rel_err(got, ref) < 1e-14


def test_step_by_step_equals_full_conv():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 7, 4, generator=g, dtype=torch.float64)
    w = torch.randn(4, 4, generator=g, dtype=torch.float64)
    state = torch.randn(3, 4, 4, generator=g, dtype=torch.float64)
    full = short_conv(x, w, "torch", initial_state=state)
    ys = []
    for t in range(7):
        y, state = short_conv_step(x[:, t], state, w)
        ys.append(y)
    assert rel_err(torch.stack(ys, 1), full) < 1e-13
    assert torch.equal(state[..., 1:], x[:, -3:].transpose(1, 2))
