"""LaCT's sliding-window attention: both paths against a full-mask float64 reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refine_tasks.models.lact.attention import attention_path, flex_window_attention, sliding_window_attention

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def full_mask_reference(q, k, v, window, key_valid=None):
    """Every query against every key under the window mask: [N, T, heads, d]."""
    t, s = q.shape[1], k.shape[1]
    i = torch.arange(t)[:, None] + (s - t)
    j = torch.arange(s)[None, :]
    mask = (j <= i) & (i - j < window)  # [T, S]
    if key_valid is not None:
        mask = mask[None, None] & key_valid[:, None, None, :]
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    return o.transpose(1, 2)


def inputs(t, s, seed=0, heads=3, d=8, n=2):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, t, heads, d, generator=g, dtype=torch.float64)
    k, v = (torch.randn(n, s, heads, d, generator=g, dtype=torch.float64) for _ in range(2))
    return q, k, v


# (queries, keys, window): one block, several blocks with a ragged end, keys before the queries
SHAPES = [(8, 8, 16), (37, 37, 8), (40, 47, 8), (130, 130, 33), (5, 12, 8)]


@pytest.mark.parametrize(("t", "s", "window"), SHAPES)
def test_band_path_equals_full_mask_with_gradients(t, s, window):
    q, k, v = (x.requires_grad_(True) for x in inputs(t, s))
    got = sliding_window_attention(q, k, v, window, path="band")
    want = full_mask_reference(q, k, v, window)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    grad = torch.randn_like(got)
    g_got = torch.autograd.grad(got, (q, k, v), grad)
    g_want = torch.autograd.grad(want, (q, k, v), grad)
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_band_path_honours_key_validity():
    q, k, v = inputs(6, 13)
    valid = torch.rand(2, 13, generator=torch.Generator().manual_seed(3)) > 0.4
    valid[:, 7:] = True  # every query keeps at least its own key
    got = sliding_window_attention(q, k, v, 8, valid)
    torch.testing.assert_close(got, full_mask_reference(q, k, v, 8, valid), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("t", "s", "window"), SHAPES)
def test_flex_path_equals_full_mask(t, s, window):
    """Eager FlexAttention on the CPU (forward only: it has no CPU backward; the GPU benchmark
    checks its gradients against `band`)."""
    q, k, v = inputs(t, s, seed=1)
    got = flex_window_attention(q, k, v, window)
    torch.testing.assert_close(got, full_mask_reference(q, k, v, window), rtol=1e-10, atol=1e-12)


def test_path_choice():
    q = torch.zeros(1, 2, 1, 2)
    valid = torch.ones(1, 2, dtype=torch.bool)
    assert attention_path(q, None) == attention_path(q, None, "auto") == "band"  # auto on a CPU
    assert attention_path(torch.zeros(1, 2, 1, 2, device="meta"), None) == "band"
    assert attention_path(q, None, "flex") == "flex"
    assert attention_path(q, valid, "flex") == "band"  # flex takes no key validity
    with pytest.raises(ValueError, match="lact_attention='fast'"):
        attention_path(q, None, "fast")
