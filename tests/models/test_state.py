"""State: selecting, repeating, concatenating, moving streams."""

from __future__ import annotations

import torch

from refine_tasks.models import State


def make_state(n: int, offset: float = 0.0) -> State:
    rows = torch.arange(n, dtype=torch.float64)[:, None] + offset
    return State([{"a": rows.repeat(1, 3), "b": rows.repeat(1, 2).float()}, {"c": rows.clone()}])


def test_select_repeat_cat():
    s = make_state(4)
    assert s.batch_size == 4
    picked = s.select(torch.tensor([3, 0]))
    assert picked.layers[0]["a"][:, 0].tolist() == [3.0, 0.0]
    rep = s.repeat_interleave(2)
    assert rep.batch_size == 8 and rep.layers[1]["c"][:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    both = State.cat([s, make_state(2, offset=10)])
    assert both.layers[0]["b"][:, 0].tolist() == [0, 1, 2, 3, 10, 11]


def test_to_detach_clone():
    s = make_state(2)
    half = s.to(torch.float32)
    assert half.layers[0]["a"].dtype == torch.float32
    leaf = s.layers[1]["c"].requires_grad_()
    assert not s.detach().layers[1]["c"].requires_grad and leaf.requires_grad
    copy = s.clone()
    copy.layers[0]["a"].add_(1)
    assert s.layers[0]["a"][0, 0] == 0


def test_tensors_pair_up_between_prefill_and_decode_states():
    """Bulk copies (the CUDA-graph decoder) pair States tensor by tensor, whatever built them."""
    from refine_tasks.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny", 50)
    ids = torch.randint(0, 50, (2, 9))
    prefilled = model.prefill(ids, capture=torch.tensor([[3], [9]])).captured
    decoded = model.decode(model.empty_state(2), ids[:, 0]).state
    assert [t.shape for t in prefilled.tensors()] == [t.shape for t in decoded.tensors()]
    assert [t.dtype for t in prefilled.tensors()] == [t.dtype for t in decoded.tensors()]


def test_put_replaces_the_named_streams_in_order() -> None:
    g = torch.Generator().manual_seed(3)
    state = State([{"s": torch.randn(4, 2, generator=g, dtype=torch.float64)}])
    part = State([{"s": torch.randn(2, 2, generator=g, dtype=torch.float64)}])
    out = state.put(torch.tensor([3, 1]), part)
    assert torch.equal(out.layers[0]["s"][[3, 1]], part.layers[0]["s"])
    assert torch.equal(out.layers[0]["s"][[0, 2]], state.layers[0]["s"][[0, 2]])
    assert not torch.equal(state.layers[0]["s"][3], out.layers[0]["s"][3])  # a new State: the old one kept
