"""RMS norms and the L2 norm against their formulas."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refine_tasks.kernels import add_rms_norm, l2_normalize, rms_norm, rms_norm_gated


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_norms_match_formulas():
    g = torch.Generator().manual_seed(0)
    x, r, gate = (torch.randn(3, 5, 8, generator=g, dtype=torch.float64) for _ in range(3))
    w = torch.rand(8, generator=g, dtype=torch.float64) + 0.5
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * w
    assert rel_err(rms_norm(x, w, 1e-6, "torch"), expected) < 1e-14
    assert rel_err(rms_norm_gated(x, gate, w, 1e-6, "torch"), expected * F.silu(gate)) < 1e-14
    normed, total = add_rms_norm(x, r, w, 1e-6, "torch")
    assert torch.equal(total, x + r)
    assert rel_err(normed, rms_norm(x + r, w, 1e-6, "torch")) < 1e-14
    assert rel_err(l2_normalize(x, 1e-6), x / torch.sqrt((x**2).sum(-1, keepdim=True) + 1e-6)) < 1e-14


def test_low_precision_input_keeps_its_dtype():
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    assert rms_norm(x, torch.ones(16), 1e-6, "torch").dtype == torch.bfloat16


def test_row_chunks_have_power_of_two_block_counts():
    from refine_tasks.kernels.norms import row_chunks

    for unit in (4, 2048):
        seen_blocks = set()
        for rows in range(1, 40 * unit, max(1, unit // 7)):
            sizes = row_chunks(rows, unit)
            assert sum(sizes) == rows
            blocks = [-(-s // unit) for s in sizes]
            assert all(b & (b - 1) == 0 for b in blocks), (rows, sizes)
            assert len(sizes) <= 1 + (rows // unit).bit_length()
            seen_blocks.update(blocks)
        # 39 full blocks at most: NB takes the powers of two up to 32, never a new value per row count
        assert seen_blocks == {1, 2, 4, 8, 16, 32}
    assert row_chunks(3 * 2048, 2048) == [4096, 2048]
    assert row_chunks(3000, 2048) == [3000]  # cdiv is 2 already: one call


def test_norms_in_row_chunks_equal_one_pass():
    """The chunked call is the same row-wise computation: outputs equal one pass (float64), for
    the plain, the residual (two outputs) and the gated forms, on random rows past several blocks."""
    from refine_tasks.kernels.norms import in_row_chunks

    g = torch.Generator().manual_seed(1)
    x, r, gate = (torch.randn(3, 7, 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
    w = torch.rand(8, generator=g, dtype=torch.float64) + 0.5
    calls = []

    def plain(x):
        calls.append(x.shape[0])
        return rms_norm(x, w, 1e-6, "torch")

    out = in_row_chunks(plain, (x,), 4)  # 42 rows: blocks of 4 -> chunks 32, 8, 2
    assert calls == [32, 8, 2]
    assert torch.equal(out, rms_norm(x, w, 1e-6, "torch"))
    normed, total = in_row_chunks(lambda x, r: add_rms_norm(x, r, w, 1e-6, "torch"), (x, r), 4)
    ref_normed, ref_total = add_rms_norm(x, r, w, 1e-6, "torch")
    assert torch.equal(normed, ref_normed) and torch.equal(total, ref_total)
    gated = in_row_chunks(lambda x, g: rms_norm_gated(x, g, w, 1e-6, "torch"), (x, gate), 4)
    assert torch.equal(gated, rms_norm_gated(x, gate, w, 1e-6, "torch"))
    # Misaligned chunks (a wrong offset) would not be equal: the rows differ.
    assert not torch.equal(out[0], out[1])
