"""The LaCT mixer under the state API (float64, tiny preset: chunk 8, window 8), with prefix
lengths just before, at and after chunk edges, against running each sequence on its own."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from models_helpers import VOCAB, randomized, rel_err

from refine_tasks.models import FastWeightCache, State, build_model
from refine_tasks.models.branched import forward_branched_naive
from refine_tasks.models.state import Capture

VARIANTS = {
    "momentum": {},
    "muon": {"use_muon": True},
    "plain": {"use_momentum": False, "w0_w2_low_rank": 0},
}


@pytest.fixture(params=list(VARIANTS), scope="module")
def lact64(request):
    torch.manual_seed(0)
    model = build_model("tiny", VOCAB, mixer="lact", **VARIANTS[request.param]).double()
    model = randomized(model, seed=1)
    with torch.no_grad():  # larger rates than at init, so every fast-weight update matters
        for layer in model.model.layers:
            layer.attn.lr_proj.bias.fill_(6.5)
            layer.attn.qk_offset.normal_(0, 0.3, generator=torch.Generator().manual_seed(5))
    return model


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 45), generator=torch.Generator().manual_seed(2))


def assert_states_close(a: State, b: State, tol: float) -> None:
    """Same layers, names and shapes; every tensor within tol of b's largest entry (zeros exactly)."""
    assert [list(layer) for layer in a.layers] == [list(layer) for layer in b.layers]
    for la, lb in zip(a.layers, b.layers, strict=True):
        for name, x in la.items():
            y = lb[name]
            assert x.shape == y.shape and (x - y).abs().max() <= tol * y.abs().max(), name


def test_fast_weights_change_at_chunk_edges(lact64, ids):
    """A guard for the tests below: states before and after an edge differ in their weights."""
    out = lact64.prefill(ids, capture=torch.tensor([[7, 8], [8, 9]]))
    w = out.captured.layers[0]["w1"]
    assert rel_err(w[0], w[1]) > 1e-3  # 7 -> 8 crosses the first edge
    assert rel_err(w[2], w[3]) < 1e-14  # 8 -> 9 does not
    assert out.captured.layers[0]["pending_k"][3, :, 0].norm() > 0
    assert out.captured.layers[0]["pending_k"][3, :, 1:].norm() == 0


def test_prefill_captured_state_equals_prefix_alone(lact64, ids):
    capture = torch.tensor([[7, 8, 9, 45], [16, 15, 17, 1]])
    out = lact64.prefill(ids, capture=capture)
    assert out.captured.batch_size == 8 and out.final.batch_size == 2
    for row, length in enumerate(capture.flatten().tolist()):
        alone = lact64.prefill(ids[row // 4 : row // 4 + 1, :length]).final
        assert_states_close(out.captured.select(torch.tensor([row])), alone, 1e-12)
    assert_states_close(out.final.select(torch.tensor([1])), lact64.prefill(ids[1:]).final, 1e-12)


def test_decode_across_chunk_edges_matches_prefill(lact64, ids):
    """Rows at different offsets (6 and 15 tokens) decode 4 tokens each, crossing an edge."""
    starts = torch.tensor([6, 15])
    state = lact64.prefill(ids, capture=starts[:, None]).captured
    before = state.clone()
    stream = lact64.decode_stream(state)
    prev = state
    for i in range(4):
        tokens = ids[torch.arange(2), starts + i]
        out = stream.step(tokens)
        one = lact64.decode(prev, tokens)
        for b in range(2):
            full = lact64.prefill(ids[b : b + 1, : int(starts[b]) + i + 1])
            assert rel_err(out.logits[b], full.logits[0, -1]) < 1e-12
            assert rel_err(out.hidden[b], full.hidden[0, -1]) < 1e-12
            assert_states_close(out.state.select(torch.tensor([b])), full.final, 1e-12)
        assert rel_err(one.logits, out.logits) < 1e-12
        prev = one.state
    assert_states_close(state, before, 1e-300)


def branch_loss(out) -> torch.Tensor:
    w = torch.linspace(-1, 1, out.logits.shape[-1], dtype=out.logits.dtype)
    return (
        (out.logits.tanh() * w).sum() + (out.branch_logits.sin() * w).sum() + out.branch_hidden.pow(2).sum()
    )


def test_forward_branched_equals_separate_sequences(lact64, ids):
    # branches of 5 tokens from 7 and 13 cross an edge; from 8 and 16 start at one; 45 ends past 48
    positions = torch.tensor([[7, 8, 3], [16, 45, 13]])
    branch_tokens = torch.randint(0, VOCAB, (2, 3, 5), generator=torch.Generator().manual_seed(3))
    fast = lact64.forward_branched(ids, positions, branch_tokens)
    naive = forward_branched_naive(lact64, ids, positions, branch_tokens)
    for name in ("logits", "hidden", "branch_logits", "branch_hidden"):
        assert rel_err(getattr(fast, name), getattr(naive, name)) < 1e-9, name
    params = [p for _, p in lact64.named_parameters()]
    grads_fast = torch.autograd.grad(branch_loss(fast), params)
    grads_naive = torch.autograd.grad(branch_loss(naive), params)
    for (name, _), a, b in zip(lact64.named_parameters(), grads_fast, grads_naive, strict=True):
        assert b.norm() > 0, name
        assert rel_err(a, b) < 1e-9, name


def test_mixer_continues_from_states_at_different_offsets(lact64):
    """A 20-token input from states 5 and 12 tokens in: crosses two edges per row, other offsets."""
    mixer = lact64.model.layers[0].attn
    x = torch.randn(2, 40, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    starts = torch.tensor([[5], [12]])
    first = mixer(x, backend="torch", capture=Capture(starts), output_final_state=True)
    rows = torch.arange(2)[:, None]
    cont = x[rows, starts + torch.arange(20)]
    later = torch.tensor([[9, 20], [3, 4]])
    second = mixer(
        cont, backend="torch", state=first.captured, capture=Capture(later), output_final_state=True
    )
    assert rel_err(second.hidden, first.hidden[rows, starts + torch.arange(20)]) < 1e-12
    for b in range(2):
        ref = mixer(x[b : b + 1], backend="torch", capture=Capture(starts[b : b + 1] + later[b : b + 1]))
        got = State([second.captured]).select(torch.tensor([2 * b, 2 * b + 1]))
        assert_states_close(got, State([ref.captured]), 1e-12)
    final_ref = mixer(x, backend="torch", capture=Capture(starts + 20))
    assert_states_close(State([second.final]), State([final_ref.captured]), 1e-12)


def test_hf_forward_with_cache_and_generate(lact64, ids):
    prompt = ids[:, :14]
    first = lact64(prompt, use_cache=True)
    rest = lact64(ids[:, 14:30], past_key_values=first.past_key_values, use_cache=True)
    assert rel_err(rest.logits, lact64.prefill(ids[:, :30]).logits[:, 14:]) < 1e-12
    assert isinstance(rest.past_key_values, FastWeightCache) and rest.past_key_values.seen_tokens == 30
    generated = lact64.generate(prompt, max_new_tokens=4, do_sample=False)
    seq = prompt
    for _ in range(4):
        seq = torch.cat([seq, lact64.prefill(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(generated, seq)


def test_save_and_load_roundtrip(lact64, ids, tmp_path):
    lact64.save_pretrained(tmp_path)
    loaded = type(lact64).from_pretrained(tmp_path, dtype=torch.float64)
    assert loaded.config.mixer == "lact" and loaded.config.lact_chunk_size == 8
    assert rel_err(loaded.prefill(ids).logits, lact64.prefill(ids).logits) < 1e-12


def test_paper_760m_preset_shape():
    with torch.device("meta"):
        model = build_model("paper-760m", 32000, mixer="lact")
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_heads) == (1536, 24, 4)
    lact_fields = (cfg.window_size, cfg.lact_chunk_size, cfg.w0_w2_low_rank, cfg.num_attn_heads)
    assert lact_fields == (2048, 2048, 32, 24)
    opts = model.model.layers[0].attn.opts
    assert opts.use_momentum and not opts.use_muon and opts.rope_theta == 1e6
    n = sum(p.numel() for p in model.parameters())
    assert 0.74e9 < n < 0.82e9, n


def test_bad_lact_options_are_named():
    with pytest.raises(ValueError, match="window_size"):
        build_model("tiny", VOCAB, mixer="lact", window_size=1)
    with pytest.raises(ValueError, match="num_attn_heads"):
        build_model("tiny", VOCAB, mixer="lact", num_attn_heads=3)
    with pytest.raises(ValueError, match="lact_attention='fast'"):
        build_model("tiny", VOCAB, mixer="lact", lact_attention="fast")
    with pytest.raises(ValueError, match="lact_compile='1'"):
        build_model("tiny", VOCAB, mixer="lact", lact_compile="1")


def test_run_options_are_read_from_the_config_and_saved_with_it():
    model = build_model("tiny", VOCAB, mixer="lact", lact_attention="band", lact_compile=False)
    opts = model.model.layers[0].attn.opts
    assert (opts.lact_attention, opts.lact_compile) == ("band", False)
    saved = model.config.to_dict()
    assert (saved["lact_attention"], saved["lact_compile"]) == ("band", False)
    defaults = build_model("tiny", VOCAB, mixer="lact").model.layers[0].attn.opts
    assert (defaults.lact_attention, defaults.lact_compile) == ("auto", "auto")


@pytest.mark.slow
def test_compiled_features_equal_eager(lact64, ids):
    """lact_compile=True (torch.compile of the per-token features, the CUDA default) gives the
    eager loss and gradients."""
    from refine_tasks.models.lact import layer as lact

    mixers = [layer.attn for layer in lact64.model.layers]
    before = [m.opts for m in mixers]
    results = []
    for flag in (False, True):
        for m in mixers:
            m.opts = replace(m.opts, lact_compile=flag)
        lact64.zero_grad(set_to_none=True)
        out = lact64(input_ids=ids, labels=ids)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in lact64.named_parameters() if p.grad is not None}
        results.append((out.loss.detach(), grads))
    for m, opts in zip(mixers, before, strict=True):
        m.opts = opts
    assert lact._compiled_features.cache_info().currsize == 1  # the compiled path ran
    (loss0, grads0), (loss1, grads1) = results
    assert torch.isfinite(loss0) and abs(loss1 - loss0) <= 1e-12 * abs(loss0)
    assert grads0.keys() == grads1.keys() and any("qk_scale" in n for n in grads0)
    for name, g in grads0.items():
        assert rel_err(grads1[name], g) < 1e-10, name
