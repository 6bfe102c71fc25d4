"""load_eval_model's inputs: evaluate.dtype auto (bf16 on CUDA), device errors as messages, and
evaluate.checkpoint given as a training run, its checkpoints folder or its `latest` pointer."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from refine_tasks.corpus.tokenizer import save_tokenizer
from refine_tasks.evaluate import EvalError
from refine_tasks.evaluate.runner import (
    eval_device,
    eval_dtype,
    load_eval_model,
    resolve_checkpoint,
    warm_generation,
    warmup_prompt_lengths,
)
from refine_tasks.models import FastWeightForCausalLM
from refine_tasks.models.checkpoint import LATEST


def test_auto_dtype_is_bfloat16_on_cuda_and_float32_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = eval_device("cuda:0")
    assert cuda == torch.device("cuda:0")
    assert eval_dtype("auto", cuda) == torch.bfloat16
    assert eval_dtype("auto", torch.device("cpu")) == torch.float32
    assert eval_dtype("float16", cuda) == torch.float16


def test_load_eval_model_places_the_model_in_bf16_on_a_mocked_cuda(
    make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a CUDA device mocked (the move itself recorded, not done): the default dtype is bf16."""
    moves: list[dict] = []

    def record(module, *args, **kwargs):
        moves.append(kwargs)
        return module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", record)
    load_eval_model(make_config("evaluate.device=cuda"))
    assert moves == [{"device": torch.device("cuda"), "dtype": torch.bfloat16}]


def test_float32_for_the_triton_kernels_is_a_message(make_config, monkeypatch: pytest.MonkeyPatch) -> None:
    """fla's chunked kernel would raise a ValueError mid-generation; the config error comes first."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", lambda module, *args, **kwargs: module)
    monkeypatch.setattr(FastWeightForCausalLM, "backend", property(lambda self: "triton"))
    with pytest.raises(
        EvalError, match="evaluate.dtype = 'float32' on cuda: fla's chunked delta-rule kernels"
    ):
        load_eval_model(make_config("evaluate.device=cuda", "evaluate.dtype=float32"))


def test_default_config_evaluates_in_float32_on_cpu(make_config) -> None:
    cfg = make_config()
    assert cfg.evaluate.dtype == "auto"
    model, _, _ = load_eval_model(cfg)
    assert model.lm_head.weight.dtype == torch.float32


def test_device_errors_are_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        EvalError, match=r"evaluate.device = 'cuda': no CUDA device here; use evaluate.device=cpu"
    ):
        eval_device("cuda")
    with pytest.raises(EvalError, match="evaluate.device = 'gpu': not a device"):
        eval_device("gpu")


def _training_run(tmp_path: Path, model, tokenizer) -> Path:
    """A run directory as the trainer leaves it: checkpoints/step-*/ and the `latest` pointer."""
    run = tmp_path / "runs" / "refine"
    for step in (10, 20):
        ckpt = run / "checkpoints" / f"step-{step:07d}"
        save_tokenizer(tokenizer, ckpt)
        model.save_pretrained(ckpt)
    (run / "checkpoints" / LATEST).write_text("step-0000020\n")
    return run


def test_a_run_its_checkpoints_or_its_latest_pointer_name_the_latest_checkpoint(
    tmp_path: Path, tiny_model, tokenizer
) -> None:
    run = _training_run(tmp_path, tiny_model, tokenizer)
    latest = run / "checkpoints" / "step-0000020"
    for given in (run, run / "checkpoints", run / "checkpoints" / LATEST, latest):
        assert resolve_checkpoint(str(given)) == latest, given


def test_evaluate_a_latest_pointer(make_config, tmp_path: Path, tiny_model, tokenizer) -> None:
    run = _training_run(tmp_path, tiny_model, tokenizer)
    model, _, label = load_eval_model(make_config(f"evaluate.checkpoint={run / 'checkpoints' / LATEST}"))
    assert label == str(run / "checkpoints" / "step-0000020")
    for a, b in zip(model.parameters(), tiny_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_no_checkpoint_is_an_error_naming_the_path(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "sft"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(EvalError, match=f"{run / 'checkpoints'} holds no completed checkpoint"):
        resolve_checkpoint(str(run))
    with pytest.raises(
        EvalError, match="not a model directory, a training run directory or its checkpoints/latest"
    ):
        resolve_checkpoint(str(tmp_path / "nowhere"))


def test_warm_generation_prefills_every_bucket(make_config, tiny_model, tokenizer) -> None:
    """Evaluation's part of `refine warmup`: the real generation, every prefill length it reports."""
    cfg = make_config("evaluate.max_prompt_tokens=100", "evaluate.batch_size=3", "evaluate.device=cpu")
    report = warm_generation(cfg, copy.deepcopy(tiny_model), tokenizer)
    assert report.prefill_lengths == [1, 2, 4, 8, 16, 32, 64]  # every bucket up to 100 tokens
    assert report.decode_streams == 3 and report.generated_tokens == 1 + 2 + 3
    assert dict(report.summary_rows())["prefill lengths"] == "1, 2, 4, 8, 16, 32, 64"
    assert warmup_prompt_lengths(4096) == [4096, 4095]
    assert warmup_prompt_lengths(3000) == [2048, 2047]
    assert warmup_prompt_lengths(1) == [1]
