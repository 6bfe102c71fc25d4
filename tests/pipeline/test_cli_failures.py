"""What the CLI says when the machine, not the code, fails: a full disk, a read-only output folder,
a truncated checkpoint, a device that is not there. Each is a line or two naming the path or field
and what to do, a non-zero exit, and no half-written output (disk full and read-only folders are
simulated by making the write raise: tests run as root, where chmod does not stop writes)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from corpus_helpers import write_corpus
from safetensors import SafetensorError
from typer.testing import CliRunner

import refine_tasks.train.checkpoint as train_checkpoint
from refine_tasks.models import build_model
from refine_tasks.pipeline import cli

runner = CliRunner()
DISK_FULL = (
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
)


def sets(*values: str) -> list[str]:
    return [arg for v in values for arg in ("--set", v)]


def paths(tmp_path: Path, tokenizer_dir: Path) -> list[str]:
    return sets(
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.corpus_dir={tmp_path / 'data' / 'corpus'}",
        f"paths.tokenizer_dir={tokenizer_dir}",
        f"paths.catalog={tmp_path / 'data' / 'cache' / 'refine.duckdb'}",
    )


def train_args(tmp_path: Path, tokenizer_dir: Path, *extra: str) -> list[str]:
    small = sets(
        "train.seq_len=96",
        "train.max_steps=4",
        "train.checkpoint_every=2",
        "refine.coef=0",
        f"train.out_dir={tmp_path / 'run'}",
        *extra,
    )
    return ["train", "-p", "/dev/null", *paths(tmp_path, tokenizer_dir), *small]


def assert_short_message(output: str, *parts: str) -> None:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if any(p in line for p in parts[:1])]
    assert lines, output
    text = " ".join(output.split())
    for part in parts:
        assert part in text, output
    error = output[output.index(lines[0]) :]
    assert len(error.strip().splitlines()) <= 3, output


def refuse_writes_under(monkeypatch: pytest.MonkeyPatch, folder: Path, code: int) -> None:
    """Path.mkdir and Path.open for writing under `folder` raise OSError(code), as on a full or
    read-only file system."""
    mkdir, open_ = Path.mkdir, Path.open

    def inside(path: Path) -> bool:
        return path.resolve().is_relative_to(folder.resolve())

    def refusing_mkdir(self: Path, *args, **kwargs):
        if inside(self):
            raise OSError(code, os.strerror(code), str(self))
        return mkdir(self, *args, **kwargs)

    def refusing_open(self: Path, mode: str = "r", *args, **kwargs):
        if inside(self) and any(m in mode for m in "wax+"):
            raise OSError(code, os.strerror(code), str(self))
        return open_(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refusing_mkdir)
    monkeypatch.setattr(Path, "open", refusing_open)


def test_disk_full_during_training_keeps_the_last_checkpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tokenizer_dir: Path
) -> None:
    write_corpus(tmp_path / "data" / "corpus", [[120, 400, 97], [300, 50, 250]])
    save_file, calls = train_checkpoint.save_file, []

    def full_on_second(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:
            raise SafetensorError(DISK_FULL)
        return save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(train_checkpoint, "save_file", full_on_second)
    result = runner.invoke(cli.app, train_args(tmp_path, tokenizer_dir))
    assert result.exit_code == 2, result.output
    checkpoints = tmp_path / "run" / "checkpoints"
    assert_short_message(
        result.output,
        f"train: {checkpoints}",
        "no space left on the device, errno 28",
        "set train.out_dir",
        "`refine train --resume` continues from step-0000002",
    )
    assert (checkpoints / "latest").read_text().strip() == "step-0000002"


def test_read_only_training_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tokenizer_dir: Path
) -> None:
    write_corpus(tmp_path / "data" / "corpus", [[120, 400, 97], [300, 50, 250]])
    refuse_writes_under(monkeypatch, tmp_path / "run", errno.EROFS)
    result = runner.invoke(cli.app, train_args(tmp_path, tokenizer_dir))
    assert result.exit_code == 2, result.output
    assert_short_message(
        result.output, f"train: {tmp_path / 'run'}", "read-only file system, errno 30", "make it writable"
    )


def ingest_args(tmp_path: Path, tokenizer_dir: Path) -> list[str]:
    return ["ingest", "-p", "/dev/null", *paths(tmp_path, tokenizer_dir), *sets("corpus.limit=3")]


def test_disk_full_during_ingest_leaves_no_partial_shard(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tokenizer_dir: Path
) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("refine_tasks.corpus.shards.os.fsync", full)
    result = runner.invoke(cli.app, ingest_args(tmp_path, tokenizer_dir))
    assert result.exit_code == 2, result.output
    corpus = tmp_path / "data" / "corpus"
    assert_short_message(
        result.output, f"ingest: {corpus}", "no space left on the device", "paths.corpus_dir"
    )
    assert not [p.name for p in corpus.iterdir() if not p.name.endswith(".lock")]


def test_read_only_corpus_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tokenizer_dir: Path
) -> None:
    refuse_writes_under(monkeypatch, tmp_path / "data" / "corpus", errno.EROFS)
    result = runner.invoke(cli.app, ingest_args(tmp_path, tokenizer_dir))
    assert result.exit_code == 2, result.output
    assert_short_message(
        result.output, "ingest: ", str(tmp_path / "data" / "corpus"), "read-only file system"
    )


def evaluate_args(tmp_path: Path, tokenizer_dir: Path, fixture_data: Path, *extra: str) -> list[str]:
    qa = fixture_data / "ruler_qa" / "ruler_hotpotqa_delta_net_4096_200_test.parquet"
    values = sets(
        f"paths.tokenizer_dir={tokenizer_dir}",
        f"paths.catalog={tmp_path / 'cat.duckdb'}",
        f"evaluate.output_dir={tmp_path / 'eval'}",
        "evaluate.families=[ruler_qa]",
        f"evaluate.ruler_qa_files=[{qa}]",
        "evaluate.qa_samples=1",
        "evaluate.qa_max_new_tokens=2",
        *extra,
    )
    return ["evaluate", "-p", "/dev/null", *values]


def test_read_only_evaluation_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tokenizer_dir: Path, fixture_data: Path
) -> None:
    refuse_writes_under(monkeypatch, tmp_path / "eval", errno.EROFS)
    result = runner.invoke(cli.app, evaluate_args(tmp_path, tokenizer_dir, fixture_data))
    assert result.exit_code == 2, result.output
    assert_short_message(
        result.output, f"evaluate: {tmp_path / 'eval' / 'base'}", "read-only", "evaluate.output_dir"
    )


def test_evaluating_a_truncated_checkpoint(tmp_path: Path, tokenizer_dir: Path, fixture_data: Path) -> None:
    model_dir = tmp_path / "model"
    torch.manual_seed(0)
    build_model("tiny", vocab_size=512).save_pretrained(model_dir, safe_serialization=True)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = runner.invoke(
        cli.app, [*evaluate_args(tmp_path, tokenizer_dir, fixture_data), "-c", str(model_dir)]
    )
    assert result.exit_code == 2, result.output
    assert_short_message(
        result.output, f"evaluate: evaluate.checkpoint = '{model_dir}'", str(weights), "truncated"
    )
    assert not (tmp_path / "eval").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it(tmp_path: Path, tokenizer_dir: Path) -> None:
    result = runner.invoke(cli.app, train_args(tmp_path, tokenizer_dir, "train.device=cuda"))
    assert result.exit_code == 2, result.output
    assert_short_message(
        result.output, "train: train.device = 'cuda': no CUDA device here", "train.device=cpu"
    )
    assert result.output.count("train.device") == 2, result.output  # said once, not twice over
    assert not (tmp_path / "run").exists()
