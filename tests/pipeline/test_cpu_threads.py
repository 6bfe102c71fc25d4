"""refine_tasks.pipeline.cpu_threads: every entry point runs the tiny model on one CPU thread unless
the user set OMP_NUM_THREADS (Prefect and `refine train` ran it ~12x slower than `make run`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from corpus_helpers import write_corpus
from typer.testing import CliRunner

from refine_tasks.pipeline import cli
from refine_tasks.pipeline.cpu_threads import choose_cpu_threads

runner = CliRunner()


@pytest.fixture
def many_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """No OMP_NUM_THREADS, torch on 2 threads (torch's default on this 2-core machine); restored after."""
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


def test_refine_train_on_the_tiny_model_ends_on_one_thread(
    many_threads: int, tmp_path: Path, tokenizer_dir: Path
) -> None:
    write_corpus(tmp_path / "corpus", [[120, 400, 97], [300, 50, 250]])
    values = [
        f"paths.corpus_dir={tmp_path / 'corpus'}",
        f"paths.tokenizer_dir={tokenizer_dir}",
        f"paths.catalog={tmp_path / 'refine.duckdb'}",
        f"train.out_dir={tmp_path / 'run'}",
        "train.device=cpu",
        "train.seq_len=96",
        "train.max_steps=1",
        "refine.coef=0",
    ]
    result = runner.invoke(cli.app, ["train", "-p", "/dev/null", *(a for v in values for a in ("--set", v))])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 1


def test_larger_models_and_a_users_choice_keep_their_threads(
    many_threads: int, monkeypatch: pytest.MonkeyPatch, make_config
) -> None:
    assert choose_cpu_threads(make_config("model.preset=small", "train.device=cpu")) == many_threads
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_cpu_threads(make_config("train.device=cpu")) == many_threads
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert choose_cpu_threads(make_config("evaluate.device=cpu"), "evaluate.device") == 1
