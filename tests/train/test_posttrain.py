"""Post-training: the answer-only loss, the nested step (inner on prompts, outer on answers) against
steps run by hand (float64), and a tiny end-to-end run that writes a loadable checkpoint."""

from __future__ import annotations

import pytest
import torch

from refine_tasks.config import PositionsConfig, RefineConfig
from refine_tasks.models import build_model, load_model
from refine_tasks.rl.grpo import ntp_loss
from refine_tasks.train.posttrain import PromptSteps, answer_loss, inner_steps, nested_step

VOCAB = 61


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("tiny", vocab_size=VOCAB).double()


def qa_batch(seed: int, n: int = 3) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randint(0, VOCAB, (int(torch.randint(30, 48, (), generator=g)),), generator=g).tolist(),
            torch.randint(0, VOCAB, (int(torch.randint(2, 6, (), generator=g)),), generator=g).tolist(),
        )
        for _ in range(n)
    ]


def optimizer(model, lr: float = 1e-2):
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)


def test_answer_loss_is_the_mean_over_answer_tokens_only():
    g = torch.Generator().manual_seed(1)
    b, t = 3, 12
    logits = torch.randn(b, t, VOCAB, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    prompt_lengths = torch.tensor([4, 7, 11])
    loss = answer_loss(logits, ids, prompt_lengths)
    terms = [
        -torch.log_softmax(logits[i, k - 1], -1)[ids[i, k]]
        for i in range(b)
        for k in range(int(prompt_lengths[i]), t)
    ]
    assert torch.allclose(loss, torch.stack(terms).mean(), rtol=0, atol=1e-13)
    loss.backward()
    # Gradients reach exactly the logits that predict an answer token: rows p-1 .. T-2.
    touched = logits.grad.abs().sum(-1) > 0
    expected = torch.zeros(b, t, dtype=torch.bool)
    for i, p in enumerate(prompt_lengths.tolist()):
        expected[i, p - 1 : t - 1] = True
    assert torch.equal(touched, expected)


def _by_hand(model, opt, batch, grad_clip, inner_mini_batch):
    """NTP steps on the prompts (one per mini-batch), then one answer step, written out."""
    for s in range(0, len(batch), inner_mini_batch):
        part = batch[s : s + inner_mini_batch]
        for prompt, _ in part:
            ids = torch.tensor([prompt])
            (ntp_loss(model(ids).logits, ids) / len(part)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    total = sum(len(a) for _, a in batch)
    for prompt, answer in batch:
        ids = torch.tensor([prompt + answer])
        logp = torch.log_softmax(model(ids).logits[0], -1)
        nll = -sum(logp[len(prompt) + j - 1, a] for j, a in enumerate(answer))
        (nll / total).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


def test_nested_sft_equals_an_ntp_step_then_an_answer_step_by_hand():
    batch = qa_batch(2)
    model, hand = tiny(), tiny()
    opt, hand_opt = optimizer(model), optimizer(hand)
    inner = PromptSteps(RefineConfig(coef=0.0), PositionsConfig(), grad_clip=1.0, seed=0, mini_batch=2)
    line = nested_step(model, opt, batch, inner, grad_clip=1.0, salt=1)
    _by_hand(hand, hand_opt, batch, 1.0, 2)
    for (name, p), q in zip(model.named_parameters(), hand.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=0, atol=1e-12), name
    assert set(line) == {"inner_loss", "inner_ntp", "answer_loss"}
    # sft: the outer step alone, so the inner step did change the weights.
    sft = tiny()
    nested_step(sft, optimizer(sft), batch, None, grad_clip=1.0, salt=1)
    assert not torch.allclose(sft.lm_head.weight, model.lm_head.weight)


def _variant(make_config, variant: str, coef: float = 0.2):
    return make_config(
        f"posttrain.variant={variant}",
        f"posttrain.inner_coef={coef}",
        "posttrain.inner_mini_batch=3",
        "positions.n_chunks=2",
        "positions.margin=4",
        "refine.rollout_len=3",
    )


def test_nested_refine_with_zero_coefficient_equals_nested_sft(make_config):
    batch = qa_batch(3)
    weights = []
    for variant, coef in (("nested-refine", 0.0), ("nested-sft", 0.2)):
        cfg = _variant(make_config, variant, coef)
        model = tiny()
        nested_step(model, optimizer(model), batch, inner_steps(cfg, torch.device("cpu")), 1.0, salt=5)
        weights.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_nested_refine_inner_step_is_seeded_and_differs_from_nested_sft(make_config):
    batch = qa_batch(4)
    runs = {}
    for name, variant in (("a", "nested-refine"), ("b", "nested-refine"), ("sft", "nested-sft")):
        cfg = _variant(make_config, variant)
        model = tiny()
        with torch.no_grad():  # sharper distributions: rewards that differ between rollouts
            model.lm_head.weight.mul_(30.0)
        line = nested_step(model, optimizer(model), batch, inner_steps(cfg, torch.device("cpu")), 1.0, salt=7)
        runs[name] = (torch.cat([p.flatten() for p in model.parameters()]), line)
    assert torch.equal(runs["a"][0], runs["b"][0])
    assert not torch.allclose(runs["a"][0], runs["sft"][0])
    assert runs["a"][1]["inner_loss"] != runs["a"][1]["inner_ntp"]  # the GRPO term is in the loss


def test_posttrain_end_to_end_writes_a_loadable_checkpoint(make_config, tokenizer_dir, tmp_path):
    """Tiny QA data (3 examples of ~200 tokens), a tiny DeltaNet: two nested-refine batches, ~5 s."""
    from refine_tasks.corpus.qa_data import QaExample, write_qa_data
    from refine_tasks.corpus.tokenizer import load_tokenizer
    from refine_tasks.train.posttrain import posttrain

    tok = load_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    start = tmp_path / "mid"
    build_model("tiny", vocab_size=len(tok)).save_pretrained(start)
    g = torch.Generator().manual_seed(0)
    examples = [
        QaExample("ruler_squadqa", 200 + i, 256, f"q{i}", [f"a{i}"],
                  torch.randint(0, len(tok), (200,), generator=g).tolist(), tok.encode(f" a{i}"))
        for i in range(3)
    ]  # fmt: skip
    cfg = make_config(
        f"qa_data.out_dir={tmp_path / 'qa'}",
        f"posttrain.init_from={start}",
        f"posttrain.out_dir={tmp_path / 'post'}",
        "posttrain.batch_size=2",
        "posttrain.max_prompt_tokens=160",
        "posttrain.lr=1e-3",
        "positions.n_chunks=2",
        "refine.rollout_len=3",
    )
    write_qa_data(cfg.qa_data.out_dir, cfg.paths.catalog, examples, tokenizer_id="t", shard_rows=2, meta={})
    result = posttrain(cfg)
    assert result.steps == 2 and len(result.history) == 2
    assert all(h["inner_loss"] > 0 and h["answer_loss"] > 0 for h in result.history)
    loaded = load_model(result.checkpoint)
    before = load_model(start)
    assert not torch.equal(loaded.lm_head.weight, before.lm_head.weight)
    assert (result.checkpoint / "tokenizer.json").is_file()
    with pytest.raises(Exception, match="already holds"):
        posttrain(cfg)


def test_a_prompt_too_short_for_the_rollouts_is_a_clear_error():
    from refine_tasks.errors import SequenceTooShort

    model = tiny()
    inner = PromptSteps(RefineConfig(coef=0.2), PositionsConfig(n_chunks=8, margin=20), 1.0, 0, 1)
    with pytest.raises(SequenceTooShort, match=r"a prompt of 40 tokens .* ttt.objective=sft"):
        inner.run(model, optimizer(model), [list(range(40))], salt=0)
