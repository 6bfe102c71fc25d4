"""prefill / decode / forward_branched against running each sequence on its own (float64)."""

from __future__ import annotations

import pytest
import torch
from models_helpers import VOCAB, randomized, rel_err

from refine_tasks.models import build_model
from refine_tasks.models.branched import forward_branched_naive


def assert_states_close(a, b, tol):
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert la.keys() == lb.keys()
        for name in la:
            assert la[name].shape == lb[name].shape, name
            assert rel_err(la[name], lb[name]) < tol, name


def test_prefill_captured_state_equals_prefix_alone(tiny64, ids):
    capture = torch.tensor([[30, 1, 45], [7, 7, 44]])  # unsorted, repeated, first and last
    out = tiny64.prefill(ids, capture=capture)
    assert out.captured.batch_size == 6 and out.final.batch_size == 2
    assert out.logits.shape == (2, 45, VOCAB) and out.hidden.shape == (2, 45, 64)
    for b in range(2):
        for j in range(3):
            alone = tiny64.prefill(ids[b : b + 1, : int(capture[b, j])]).final
            assert_states_close(out.captured.select(torch.tensor([b * 3 + j])), alone, 1e-12)
    assert_states_close(out.final.select(torch.tensor([1])), tiny64.prefill(ids[1:]).final, 1e-12)


def test_decode_continues_prefill_and_leaves_input_alone(tiny64, ids):
    state = tiny64.prefill(ids[:, :30]).final
    before = state.clone()
    step = tiny64.decode(state, ids[:, 30])
    full = tiny64.prefill(ids[:, :31])
    assert rel_err(step.logits, full.logits[:, 30]) < 1e-12
    assert rel_err(step.hidden, full.hidden[:, 30]) < 1e-12
    assert_states_close(step.state, full.final, 1e-12)
    assert_states_close(state, before, 0.0 + 1e-300)
    stream = tiny64.decode_stream(state)
    for t in range(30, 34):
        out = stream.step(ids[:, t])
    assert rel_err(out.logits, tiny64.prefill(ids[:, :34]).logits[:, 33]) < 1e-12


def branched_inputs(ids):
    positions = torch.tensor([[20, 3, 44], [45, 12, 12]])
    branch_tokens = torch.randint(0, VOCAB, (2, 3, 5), generator=torch.Generator().manual_seed(3))
    return positions, branch_tokens


def loss_of(out):
    # A loss that weighs every logit differently, so gradients are not symmetric by accident.
    w = torch.linspace(-1, 1, out.logits.shape[-1], dtype=out.logits.dtype)
    return (
        (out.logits.tanh() * w).sum() + (out.branch_logits.sin() * w).sum() + out.branch_hidden.pow(2).sum()
    )


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_forward_branched_equals_separate_sequences(ids, dtype, tol):
    torch.manual_seed(0)
    model = randomized(build_model("tiny", VOCAB, use_gate=True).to(dtype), seed=4)
    positions, branch_tokens = branched_inputs(ids)
    fast = model.forward_branched(ids, positions, branch_tokens)
    naive = forward_branched_naive(model, ids, positions, branch_tokens)
    for name in ("logits", "hidden", "branch_logits", "branch_hidden"):
        assert getattr(fast, name).shape == getattr(naive, name).shape, name
        assert rel_err(getattr(fast, name), getattr(naive, name)) < tol, name
    params = [p for _, p in model.named_parameters()]
    grads_fast = torch.autograd.grad(loss_of(fast), params)
    grads_naive = torch.autograd.grad(loss_of(naive), params)
    for (name, _), a, b in zip(model.named_parameters(), grads_fast, grads_naive, strict=True):
        assert b.norm() > 0, name
        assert rel_err(a, b) < tol, name


def test_forward_branched_rejects_bad_positions(tiny64, ids):
    tokens = torch.zeros(2, 1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="1..45"):
        tiny64.forward_branched(ids, torch.tensor([[0], [5]]), tokens)
    with pytest.raises(ValueError, match="positions"):
        tiny64.forward_branched(ids, torch.tensor([[1, 2], [5, 6]]), tokens)


def test_generate_greedy_equals_step_by_step_decode(tiny64, ids):
    generated = tiny64.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(generated[:, :45], ids)
    first = tiny64.prefill(ids)
    state, token, tokens = first.final, first.logits[:, -1].argmax(-1), []
    for _ in range(6):
        tokens.append(token)
        step = tiny64.decode(state, token)
        state, token = step.state, step.logits.argmax(-1)
    assert torch.equal(generated[:, 45:], torch.stack(tokens, 1))


def test_hf_forward_loss_and_cache(tiny64, ids):
    out = tiny64(ids, labels=ids, use_cache=True)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert rel_err(out.loss, expected) < 1e-12
    assert out.past_key_values.get_seq_length() == 45
    more = tiny64(ids[:, :5], past_key_values=out.past_key_values, use_cache=True)
    joined = tiny64(torch.cat([ids, ids[:, :5]], 1)).logits[:, 45:]
    assert rel_err(more.logits, joined) < 1e-12 and more.past_key_values.get_seq_length() == 50
