"""Test-time training: `reset` answers do not depend on batch order or repetition, `accumulate`
carries the adaptation across batches, and the checkpoint on disk is never changed."""

from __future__ import annotations

import hashlib

import pytest
import torch

from refine_tasks.corpus.tokenizer import save_tokenizer
from refine_tasks.evaluate.records import EvalRecord
from refine_tasks.evaluate.runner import evaluate_records, load_eval_model, run_evaluation
from refine_tasks.models import build_model
from refine_tasks.train.ttt import TestTimeTrainer

TTT = ("positions.n_chunks=2", "positions.margin=4", "refine.rollout_len=3", "ttt.lr=0.05", "ttt.steps=1")


@pytest.fixture
def model(tokenizer):
    torch.manual_seed(0)
    return build_model("tiny", vocab_size=len(tokenizer)).eval()


@pytest.fixture(scope="module")
def records(sotu_texts) -> list[EvalRecord]:
    words = sotu_texts[0].split()
    return [
        EvalRecord(
            "ruler_qa", "ruler_squadqa", f"q{i}", " ".join(words[60 * i : 60 * i + 50]) + "\nAnswer:",
            ("the",), 4, True, "ruler_qa",
        )
        for i in range(6)
    ]  # fmt: skip


def _answers(model, tokenizer, records, adapt=None) -> dict[str, str]:
    results = evaluate_records(model, tokenizer, records, batch_size=2, adapt=adapt)
    return {r.record.sample_id: r.prediction for r in results}


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("objective", ["refine", "sft"])
def test_reset_answers_do_not_depend_on_batch_order(make_config, model, tokenizer, records, objective):
    cfg = make_config(f"ttt.objective={objective}", "evaluate.batch_size=2", *TTT)
    start = _weights(model)
    plain = _answers(model, tokenizer, records)
    ttt = TestTimeTrainer(model, cfg)
    first = _answers(model, tokenizer, records, ttt)
    assert not torch.equal(_weights(model), start)  # the weights were adapted
    assert first != plain  # and the adaptation changed answers
    assert _answers(model, tokenizer, records, ttt) == first  # the same batches again
    batches = [records[0:2], records[2:4], records[4:6]]
    permuted = [r for b in (batches[2], batches[0], batches[1]) for r in b]
    ttt.restore()
    assert torch.equal(_weights(model), start)
    assert _answers(model, tokenizer, permuted, TestTimeTrainer(model, cfg)) == first


def test_accumulate_carries_the_adaptation_across_batches(make_config, model, tokenizer, records):
    cfg = make_config("ttt.objective=refine", "ttt.mode=accumulate", *TTT)
    ids = [tokenizer.encode(r.prompt) for r in records]
    ttt = TestTimeTrainer(model, cfg)
    ttt(ids[0:2])
    ttt(ids[2:4])
    in_order = _weights(model)
    ttt.restore()
    ttt.batches = 0
    ttt(ids[2:4])
    ttt(ids[0:2])
    assert not torch.allclose(_weights(model), in_order)
    reset = TestTimeTrainer(model, make_config("ttt.objective=refine", *TTT))
    reset(ids[0:2])
    reset(ids[2:4])
    only_second = _weights(model)
    reset(ids[2:4])
    assert torch.equal(_weights(model), only_second)  # reset: the last batch alone decides


def test_ttt_evaluation_never_changes_the_checkpoint(
    make_config, model, tokenizer, tokenizer_dir, fixture_data, tmp_path
):
    ckpt = tmp_path / "ckpt"
    save_tokenizer(tokenizer, ckpt)
    model.save_pretrained(ckpt)

    def digest() -> dict[str, str]:
        return {
            f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(ckpt.rglob("*")) if f.is_file()
        }

    before = digest()
    cfg = make_config(
        f"evaluate.checkpoint={ckpt}",
        "evaluate.families=[ruler_qa]",
        f"evaluate.ruler_qa_files=[{fixture_data}/ruler_qa/ruler_squadqa_delta_net_4096_200_test.parquet]",
        "evaluate.qa_samples=2",
        "evaluate.qa_max_new_tokens=4",
        "evaluate.max_prompt_tokens=256",
        f"evaluate.output_dir={tmp_path / 'eval'}",
        "ttt.objective=refine",
        *TTT,
    )
    eval_model, tok, label = load_eval_model(cfg)
    run = run_evaluation(cfg, eval_model, tok, checkpoint=label, adapt=TestTimeTrainer(eval_model, cfg))
    assert len(run.results) == 2
    assert not torch.equal(_weights(eval_model), _weights(model))  # adapted in memory
    assert digest() == before


def test_bf16_weights_keep_float32_masters_that_follow_the_float64_adamw(make_config, model):
    """At lr 1e-6, K AdamW steps on bf16 weights with fixed random gradients: plain bf16 AdamW
    leaves every weight but those near 0 unchanged; the float32 masters follow float64 AdamW on the same gradients
    (within float32 rounding: see the tolerance), and the bf16 weights are their rounding."""
    from refine_tasks.train.trainer import make_optimizer
    from refine_tasks.train.ttt import MasterWeights

    cfg = make_config("ttt.lr=1e-6")
    steps = 4
    bf16 = model.to(torch.bfloat16)
    start = [p.detach().clone() for p in bf16.parameters()]
    gen = torch.Generator().manual_seed(0)
    grads = [[torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in start] for _ in range(steps)]

    def run(optimizer, params) -> None:
        for g in grads:
            for p, gk in zip(params, g, strict=True):
                p.grad = gk.to(p.dtype)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    ref = torch.nn.ParameterList([torch.nn.Parameter(p.double()) for p in start])
    reference = make_optimizer(ref, cfg)
    for group in reference.param_groups:
        group["lr"] = 1e-6
    run(reference, list(ref))

    plain = make_optimizer(bf16, cfg)
    for group in plain.param_groups:
        group["lr"] = 1e-6
    run(plain, list(bf16.parameters()))
    # Lost: every weight of magnitude >= 1e-2 (bf16 spacing there >= 6e-5, far above K * lr) is
    # unchanged; only weights near 0 move at all.
    for p, s in zip(bf16.parameters(), start, strict=True):
        big = s.abs() >= 1e-2
        assert big.any() and torch.equal(p[big], s[big])

    with torch.no_grad():
        for p, s0 in zip(bf16.parameters(), start, strict=True):
            p.copy_(s0)
    master = MasterWeights(bf16, cfg)
    for group in master.param_groups:
        group["lr"] = 1e-6
    run(master, list(bf16.parameters()))
    for m, r, s, p in zip(master.masters, ref, start, bf16.parameters(), strict=True):
        update = (r.detach() - s.double()).abs().max()
        assert update > 1e-7  # the reference moved
        # float32 rounding of each step's sum (half a spacing of the largest weight, K times), with
        # 1e-4 of the update's size for the float32 moment arithmetic.
        tol = steps * 2.0**-24 * s.double().abs().max() + 1e-4 * update
        assert (m.double() - r.detach()).abs().max() <= tol
        assert torch.equal(p, m.detach().to(torch.bfloat16))


def test_bf16_ttt_reset_restores_exactly(make_config, model, tokenizer, records):
    cfg = make_config("ttt.objective=sft", "evaluate.batch_size=2", *TTT)
    bf16 = model.to(torch.bfloat16)
    start = _weights(bf16).clone()
    ttt = TestTimeTrainer(bf16, cfg)
    assert type(ttt.optimizer).__name__ == "MasterWeights"
    ttt([tokenizer.encode(r.prompt)[:40] for r in records[:2]])
    assert not torch.equal(_weights(bf16), start)
    ttt.restore()
    assert torch.equal(_weights(bf16), start)
