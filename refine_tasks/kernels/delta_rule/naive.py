"""The delta rule in plain torch: the obviously-correct recurrence and the chunked (WY) form.

Both take fla's layout and meaning, so the torch path and fla's kernels are interchangeable:
q, k: [B, T, H, K] (already L2-normalised if the model wants that), v: [B, T, H, V],
beta: [B, T, H], state S: [B, H, K, V]. Per token, with scale s:

    S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T,    o_t = s * S_t^T q_t

The chunked form is the CPU path of the model; the recurrence is what the tests check it with.
Both compute (and return o and S) in the input dtype promoted to at least float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _initial(q: Tensor, v: Tensor, initial_state: Tensor | None, dtype: torch.dtype) -> Tensor:
    B, _, H, K = q.shape
    if initial_state is None:
        return q.new_zeros(B, H, K, v.shape[-1], dtype=dtype)
    return initial_state.to(dtype)


def delta_rule_recurrent(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, scale: float, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Token-by-token recurrence. Returns o [B, T, H, V] and S_T [B, H, K, V]."""
    dtype = _compute_dtype(q.dtype)
    q, k, v, beta = (x.to(dtype) for x in (q, k, v, beta))
    S = _initial(q, v, initial_state, dtype)
    outputs = []
    for t in range(q.shape[1]):
        k_t, v_t, b_t = k[:, t], v[:, t], beta[:, t, :, None]
        u_t = b_t * (v_t - torch.einsum("bhkv,bhk->bhv", S, k_t))
        S = S + k_t[..., :, None] * u_t[..., None, :]
        outputs.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t] * scale))
    o = torch.stack(outputs, dim=1) if outputs else v.new_zeros(v.shape)
    return o, S


def delta_rule_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    scale: float,
    initial_state: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Chunkwise-parallel form (WY representation), same contract as `delta_rule_recurrent`.

    Within a chunk of C tokens, the C sequential rank-1 updates collapse into one triangular
    solve: with A = strict_lower(diag(beta) K K^T), W = (I + A)^-1 diag(beta) K and
    U = (I + A)^-1 diag(beta) V, the chunk's new values are U - W S and
    S_next = S + K^T (U - W S). Padding the sequence with k = beta = 0 leaves S unchanged,
    so any T works.
    """
    dtype = _compute_dtype(q.dtype)
    B, T, H, K = q.shape
    V = v.shape[-1]
    S = _initial(q, v, initial_state, dtype)
    pad = (-T) % chunk_size
    # [B, H, N, C, D] chunks, heads first so that every matmul below is batched over (B, H, N).
    q, k, v = (
        F.pad(x.to(dtype), (0, 0, 0, 0, 0, pad)).transpose(1, 2).unflatten(2, (-1, chunk_size))
        for x in (q, k, v)
    )
    beta = F.pad(beta.to(dtype), (0, 0, 0, pad)).transpose(1, 2).unflatten(2, (-1, chunk_size))[..., None]
    eye = torch.eye(chunk_size, dtype=dtype, device=q.device)
    strict_lower = torch.tril(torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device), -1)
    causal = torch.tril(torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device))
    A = ((beta * k) @ k.transpose(-1, -2)).masked_fill(~strict_lower, 0)
    W = torch.linalg.solve_triangular(eye + A, beta * k, upper=False, unitriangular=True)
    U = torch.linalg.solve_triangular(eye + A, beta * v, upper=False, unitriangular=True)
    q = q * scale
    scores = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0)
    outputs = []
    for n in range(q.shape[2]):
        new_v = U[:, :, n] - W[:, :, n] @ S
        outputs.append(q[:, :, n] @ S + scores[:, :, n] @ new_v)
        S = S + k[:, :, n].transpose(-1, -2) @ new_v
    o = torch.stack(outputs, dim=2).flatten(2, 3)[:, :, :T].transpose(1, 2)
    return o.reshape(B, T, H, V), S
