"""The delta rule: chunked reference vs the token-by-token recurrence, varlen packing, chaining."""

from __future__ import annotations

import pytest
import torch

from refine_tasks.kernels import delta_rule, delta_rule_chunked, delta_rule_recurrent, l2_normalize


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def random_inputs(B=2, T=37, H=3, K=8, V=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=g, dtype=dtype)
    k = l2_normalize(torch.randn(B, T, H, K, generator=g, dtype=dtype), 1e-6)
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    beta = torch.rand(B, T, H, generator=g, dtype=dtype)
    s0 = torch.randn(B, H, K, V, generator=g, dtype=dtype)
    return q, k, v, beta, s0


def naive_by_hand(q, k, v, beta, scale, s0):
    """The delta rule written out per (batch, head, token), independently of the reference."""
    B, T, H, _ = q.shape
    o = torch.zeros(B, T, H, v.shape[-1], dtype=q.dtype)
    S = s0.clone()
    for b in range(B):
        for h in range(H):
            for t in range(T):
                kt = k[b, t, h]
                S[b, h] = S[b, h] + beta[b, t, h] * torch.outer(kt, v[b, t, h] - S[b, h].T @ kt)
                o[b, t, h] = S[b, h].T @ (q[b, t, h] * scale)
    return o, S


def test_recurrence_matches_hand_written_delta_rule():
    q, k, v, beta, s0 = random_inputs(T=9)
    o, S = delta_rule_recurrent(q, k, v, beta, 0.5, s0)
    o_ref, S_ref = naive_by_hand(q, k, v, beta, 0.5, s0)
    assert rel_err(o, o_ref) < 1e-12 and rel_err(S, S_ref) < 1e-12


@pytest.mark.parametrize("chunk_size", [4, 16, 64])
def test_chunked_matches_recurrence_float64(chunk_size):
    q, k, v, beta, s0 = random_inputs(T=37)
    o, S = delta_rule_chunked(q, k, v, beta, 0.35, s0, chunk_size=chunk_size)
    o_ref, S_ref = delta_rule_recurrent(q, k, v, beta, 0.35, s0)
    assert o.shape == o_ref.shape and S.shape == S_ref.shape
    assert rel_err(o, o_ref) < 1e-10
    assert rel_err(S, S_ref) < 1e-10


def test_chunked_matches_recurrence_float32():
    q, k, v, beta, s0 = random_inputs(T=50, dtype=torch.float32)
    o, S = delta_rule_chunked(q, k, v, beta, 0.35, s0, chunk_size=16)
    o_ref, S_ref = delta_rule_recurrent(*(x.double() for x in (q, k, v, beta)), 0.35, s0.double())
    assert rel_err(o.double(), o_ref) < 1e-5 and rel_err(S.double(), S_ref) < 1e-5


def test_chaining_two_halves_equals_whole():
    q, k, v, beta, s0 = random_inputs(T=40)
    o, S = delta_rule(q, k, v, beta, backend="torch", initial_state=s0, output_final_state=True)
    o1, S1 = delta_rule(
        *(x[:, :13] for x in (q, k, v, beta)), backend="torch", initial_state=s0, output_final_state=True
    )
    o2, S2 = delta_rule(
        *(x[:, 13:] for x in (q, k, v, beta)), backend="torch", initial_state=S1, output_final_state=True
    )
    assert rel_err(torch.cat([o1, o2], 1), o) < 1e-12 and rel_err(S2, S) < 1e-12


def test_varlen_packing_equals_separate_sequences():
    q, k, v, beta, s0 = random_inputs(B=1, T=30)
    cu = torch.tensor([0, 7, 8, 30])
    states = torch.randn(3, *s0.shape[1:], dtype=torch.float64)
    o, S = delta_rule(
        q,
        k,
        v,
        beta,
        backend="torch",
        initial_state=states,
        output_final_state=True,
        cu_seqlens=cu,
        mode="recurrent",
    )
    for n in range(3):
        s, e = int(cu[n]), int(cu[n + 1])
        o_n, S_n = delta_rule(
            *(x[:, s:e] for x in (q, k, v, beta)),
            backend="torch",
            initial_state=states[n : n + 1],
            output_final_state=True,
        )
        assert rel_err(o[:, s:e], o_n) < 1e-12 and rel_err(S[n : n + 1], S_n) < 1e-12


def test_normalize_qk_is_the_l2_norm_of_q_and_k():
    q, k, v, beta, s0 = random_inputs(T=12)
    k = k * 3.0  # not unit length any more
    o, _ = delta_rule(q, k, v, beta, backend="torch", initial_state=s0)
    scale = q.shape[-1] ** -0.5
    o_ref, _ = delta_rule_recurrent(l2_normalize(q, 1e-6), l2_normalize(k, 1e-6), v, beta, scale, s0)
    assert rel_err(o, o_ref) < 1e-12
    assert o.dtype == v.dtype


def test_triton_backend_refuses_float32_chunk():
    q, k, v, beta, _ = random_inputs(T=4, dtype=torch.float32)
    with pytest.raises(ValueError, match="bfloat16"):
        delta_rule(q, k, v, beta, backend="triton")
