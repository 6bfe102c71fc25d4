"""The chained delta rule against the plain recurrence, values and gradients (float64, random inputs);
its Triton kernels against its torch path (the interpreter, in a subprocess)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from models_helpers import rel_err
from triton_interpreter import run_interpreted

from refine_tasks.kernels import delta_rule_recurrent, l2_normalize
from refine_tasks.kernels.state_chain import naive as chain_naive
from refine_tasks.kernels.state_chain.naive import SegmentBlocks
from refine_tasks.models.deltanet.segments import chained_delta_rule, segment_plan
from refine_tasks.models.state import Capture

B, T, H, K, V = 2, 23, 2, 4, 3


def inputs(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, T, H, K), (B, T, H, K), (B, T, H, V), (B, T, H), (B, H, K, V)]
    q, k, v, beta, h0 = (torch.randn(s, generator=g, dtype=torch.float64) for s in shapes)
    return [q, k, v, beta.sigmoid(), h0]


def recurrence(q, k, v, beta, h0, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """o [B, p, H, V] and the state after the first p tokens, token by token (the definition)."""
    q, k = l2_normalize(q, 1e-6), l2_normalize(k, 1e-6)
    return delta_rule_recurrent(q[:, :p], k[:, :p], v[:, :p], beta[:, :p], K**-0.5, h0)


@pytest.fixture(params=[256, 4], ids=["one-block-per-segment", "padded-blocks"])
def block(request, monkeypatch) -> int:
    """The correction's block size: the default (every segment here fits one block) and 4
    (segments span several blocks, last ones padded)."""
    monkeypatch.setattr(chain_naive, "BLOCK", request.param)
    return request.param


def test_chained_outputs_and_states_equal_the_recurrence(block):
    q, k, v, beta, h0 = inputs(0)
    positions = torch.tensor([[17, 0, 5, 17], [23, 9, 1, 12]])  # unsorted, repeated, 0 and T
    o, at, final = chained_delta_rule(q, k, v, beta, positions, backend="torch", initial_state=h0)
    assert o.shape == (B, T, H, V) and at.shape == (B, 4, H, K, V) and final.shape == (B, H, K, V)
    full_o, full_state = recurrence(q, k, v, beta, h0, T)
    assert rel_err(o, full_o) < 1e-12
    assert rel_err(final, full_state) < 1e-12
    for b in range(B):
        for j in range(4):
            p = int(positions[b, j])
            want = recurrence(q[b : b + 1], k[b : b + 1], v[b : b + 1], beta[b : b + 1], h0[b : b + 1], p)[1]
            assert rel_err(at[b, j], want[0]) < 1e-12, (b, j)


def test_chained_gradients_equal_the_recurrence(block):
    """Gradients reach every input through the chain: a loss on o, the captured and the final states."""
    tensors = [t.requires_grad_() for t in inputs(1)]
    positions = torch.tensor([[3, 20, 11], [22, 6, 6]])
    g = torch.Generator().manual_seed(5)
    w_o = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    w_s = torch.randn(B, 3, H, K, V, generator=g, dtype=torch.float64)
    w_f = torch.randn(B, H, K, V, generator=g, dtype=torch.float64)

    o, at, final = chained_delta_rule(*tensors[:4], positions, backend="torch", initial_state=tensors[4])
    fast = torch.autograd.grad((o * w_o).sum() + (at * w_s).sum() + (final * w_f).sum(), tensors)

    q, k, v, beta, h0 = tensors
    whole, last = recurrence(q, k, v, beta, h0, T)
    loss = (whole * w_o).sum() + (last * w_f).sum()
    for b in range(B):
        for j in range(3):
            rows = [x[b : b + 1] for x in tensors]
            loss = loss + (recurrence(*rows, int(positions[b, j]))[1][0] * w_s[b, j]).sum()
    slow = torch.autograd.grad(loss, tensors)
    for name, a, want in zip(("q", "k", "v", "beta", "h0"), fast, slow, strict=True):
        assert want.norm() > 0, name
        assert rel_err(a, want) < 1e-10, name


def test_chained_without_initial_state_and_without_positions():
    q, k, v, beta, _ = inputs(3)
    zero = torch.zeros(B, H, K, V, dtype=torch.float64)
    o, at, final = chained_delta_rule(q, k, v, beta, torch.tensor([[5], [9]]), backend="torch")
    assert rel_err(o, recurrence(q, k, v, beta, zero, T)[0]) < 1e-12
    assert rel_err(at[1, 0], recurrence(q[1:], k[1:], v[1:], beta[1:], zero[1:], 9)[1][0]) < 1e-12
    o, at, final = chained_delta_rule(q, k, v, beta, torch.zeros(B, 0, dtype=torch.long), backend="torch")
    assert at.shape == (B, 0, H, K, V) and rel_err(final, recurrence(q, k, v, beta, zero, T)[1]) < 1e-12


def test_segment_blocks_map_tokens_to_padded_slots_of_their_own_segment(monkeypatch):
    assert SegmentBlocks.build([2, 5, 1], torch.device("cpu")).size == 5  # the longest, under BLOCK
    monkeypatch.setattr(chain_naive, "BLOCK", 2)
    blocks = SegmentBlocks.build([2, 5, 1], torch.device("cpu"))
    assert blocks.size == 2 and blocks.segment.tolist() == [0, 1, 1, 1, 2]
    assert blocks.gather.tolist() == [0, 1, 2, 3, 4, 5, 6, 0, 7, 0]  # padding slots read token 0
    assert blocks.padding.tolist() == [False] * 7 + [True, False, True]
    assert blocks.slot.tolist() == [0, 1, 2, 3, 4, 5, 6, 8]


def test_segment_plan_is_built_once_per_pass_and_shared_by_its_layers():
    positions = torch.tensor([[4, 2, 4], [0, 9, 3]])
    plan = segment_plan(positions, 10, torch.device("cpu"))
    assert plan.sizes == [[2, 2, 0, 6], [0, 3, 6, 1]] and plan.order == [[1, 0, 2], [0, 2, 1]]
    assert plan.lengths == [2, 2, 6, 3, 6, 1] and plan.cu_seqlens_cpu.tolist() == [0, 2, 4, 10, 13, 19, 20]
    capture, built = Capture(positions), []

    def build():
        built.append(1)
        return segment_plan(positions, 10, torch.device("cpu"))

    first = capture.derive(("segments", 10), build)
    assert capture.derive(("segments", 10), build) is first and built == [1]  # every layer: no new host copy
    assert Capture(positions).derive(("segments", 10), build) is not first  # a new pass plans anew


def test_a_capturing_pass_plans_once_for_all_layers(tiny64, ids, monkeypatch):
    """The shell hands one Capture to every layer: the DeltaNet layers build one plan between them."""
    from refine_tasks.models.deltanet import layer as deltanet_layer

    calls = []
    real = deltanet_layer.segment_plan
    monkeypatch.setattr(deltanet_layer, "segment_plan", lambda *a: calls.append(1) or real(*a))
    tiny64.prefill(ids, capture=torch.tensor([[5, 17], [30, 2]]))
    assert len(tiny64.model.layers) > 1 and calls == [1]


def test_positions_out_of_range_are_a_clear_error():
    q, k, v, beta, _ = inputs(2)
    with pytest.raises(ValueError, match=f"0..{T}"):
        chained_delta_rule(q, k, v, beta, torch.tensor([[3], [T + 1]]), backend="torch")


def test_state_chain_kernels_equal_the_torch_path_under_the_interpreter():
    """chain_interpreter_cases.py in its own process with TRITON_INTERPRET=1 (Triton decides
    between compiling and interpreting when first imported, so only a fresh process can be sure)."""
    run_interpreted(Path(__file__).with_name("chain_interpreter_cases.py"), 2)
