"""Test-time training: `reset` answers do not depend on batch order or repetition, `accumulate`
carries the adaptation across batches, and the checkpoint on disk is never changed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from refine_tasks.corpus.tokenizer import load_tokenizer, save_tokenizer
from refine_tasks.evaluate.records import EvalRecord
from refine_tasks.evaluate.runner import evaluate_records, load_eval_model, run_evaluation
from refine_tasks.models import build_model
from refine_tasks.train.ttt import TestTimeTrainer

TTT = ("positions.n_chunks=2", "positions.margin=4", "refine.rollout_len=3", "ttt.lr=0.05", "ttt.steps=1")


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path):
    return load_tokenizer(tokenizer_dir)


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
