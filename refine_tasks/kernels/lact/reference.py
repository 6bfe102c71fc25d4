"""LaCT's SwiGLU fast-weight op in plain torch: the CPU path and the reference for the Triton kernels.

One fast-weight network per (batch row, head), f(x) = W1 (silu(W0 x) * (W2 x)) with
W0, W2: [H, D] and W1: [D, H]. It learns at test time by a gradient step on the dot-product
loss l_t = -<f(k_t), v_t>, one step per large chunk of tokens, with per-token learning rates
(one per weight matrix), optional momentum or Muon, and each row of each weight L2-renormalised
back to its initial norm after every step. All tensors carry a leading batch axis B (batch x
heads); every function here is differentiable by torch autograd.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

RENORM_EPS = 1e-5  # w / (||w|| + eps) * norm0, as in LaCT's post-norm update
# Newton-Schulz quintic coefficients (Muon), one triple per iteration, as LaCT uses them.
NEWTON_SCHULZ_COEFFS = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)


class FastWeights(NamedTuple):
    """The three fast-weight matrices: w0, w2 [B, H, D] (gate and up) and w1 [B, D, H] (down)."""

    w0: Tensor
    w1: Tensor
    w2: Tensor


def row_norms(w: FastWeights) -> FastWeights:
    """Per-row L2 norms [B, rows] of each matrix: what every update renormalises back to."""
    return FastWeights(*(m.norm(dim=-1) for m in w))


def swiglu_apply(w: FastWeights, x: Tensor) -> Tensor:
    """f(x) for each token: x [B, T, D] -> [B, T, D]."""
    gate = x @ w.w0.transpose(1, 2)
    up = x @ w.w2.transpose(1, 2)
    return (F.silu(gate) * up) @ w.w1.transpose(1, 2)


def swiglu_fast_weight_grad(
    w: FastWeights, k: Tensor, v: Tensor, lr0: Tensor, lr1: Tensor, lr2: Tensor
) -> FastWeights:
    """The update step: minus the per-token-lr-weighted gradient of sum_t -<f(k_t), v_t>.

    k, v: [B, C, D]; lr0, lr1, lr2: [B, C] (the rates of w0, w1, w2). Derived by hand:
    with g = W0 k, u = W2 k, e = W1^T v (the loss gradient w.r.t. the hidden, negated),
    step1 = sum_t lr1 v (silu(g) u)^T, step2 = sum_t lr2 (e silu(g)) k^T and
    step0 = sum_t lr0 (e u silu'(g)) k^T.
    """
    gate = k @ w.w0.transpose(1, 2)  # [B, C, H]
    up = k @ w.w2.transpose(1, 2)
    e = v @ w.w1  # [B, C, H]
    sig = torch.sigmoid(gate)
    act = gate * sig
    dact = sig * (1 + gate * (1 - sig))  # silu'(gate)
    step0 = (lr0[..., None] * e * up * dact).transpose(1, 2) @ k
    step1 = v.transpose(1, 2) @ (lr1[..., None] * act * up)
    step2 = (lr2[..., None] * e * act).transpose(1, 2) @ k
    return FastWeights(step0, step1, step2)


def momentum_step(step: FastWeights, previous: FastWeights, gate: Tensor) -> FastWeights:
    """step + gate * previous, the new momentum; gate [B] is the chunk's mean momentum gate."""
    g = gate[:, None, None]
    return FastWeights(*(s + g * p for s, p in zip(step, previous, strict=True)))


def newton_schulz(g: Tensor, compute_dtype: torch.dtype | None = None) -> Tensor:
    """Muon's orthogonalisation of each matrix of g [B, m, n] by five quintic Newton-Schulz steps."""
    x = g.to(compute_dtype or g.dtype)
    wide = x.shape[1] > x.shape[2]
    if wide:
        x = x.transpose(1, 2)
    x = x / (x.norm(dim=(1, 2), keepdim=True) + 1e-7)  # spectral norm <= 1 before iterating
    for a, b, c in NEWTON_SCHULZ_COEFFS:
        gram = x @ x.transpose(1, 2)
        x = a * x + (b * gram + c * gram @ gram) @ x
    if wide:
        x = x.transpose(1, 2)
    return x.to(g.dtype)


def renormalised_update(w: Tensor, step: Tensor, norm0: Tensor) -> Tensor:
    """(w + step) with each row scaled back to the L2 norm norm0 [B, rows]: w, step [B, rows, n]."""
    new = w + step
    return new / (new.norm(dim=-1, keepdim=True) + RENORM_EPS) * norm0[..., None]
