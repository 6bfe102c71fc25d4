"""What the CLI says about its own options: a --params file that is not there, a wrong --set, the
command that continues an interrupted training run, a resume of a run that had already finished."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from corpus_helpers import write_corpus
from typer.testing import CliRunner

from refine_tasks.pipeline import cli

runner = CliRunner()


def test_a_missing_params_file_is_refused_and_no_params_file_is_the_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli.app, ["config", "--params", "typo.yaml"])
    assert result.exit_code == 2, result.output
    assert "--params typo.yaml: no such file" in result.output
    result = runner.invoke(cli.app, ["config"])  # no ./params.yaml: the embedded defaults
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["train"]["max_steps"] == 20


def test_a_wrong_override_is_named_not_the_params_file(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"seq_len": 128}}))
    result = runner.invoke(cli.app, ["config", "-p", str(params), "--set", "train.lr=-1"])
    assert result.exit_code == 2, result.output
    assert "--set train.lr=-1: invalid configuration" in result.output
    assert f"{params}: invalid" not in result.output and "train.lr = -1" in result.output
    params.write_text(yaml.safe_dump({"train": {"seq_len": 1}}))
    result = runner.invoke(cli.app, ["config", "-p", str(params), "--set", "train.lr=-1"])
    assert f"{params}; --set train.lr=-1: invalid configuration" in " ".join(result.output.split())


def test_an_interrupted_training_run_names_the_command_that_continues_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def interrupted(cfg, resume):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train_step", interrupted)
    run = tmp_path / "run"
    args = ["train", "-p", "/dev/null", "--set", f"train.out_dir={run}"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 130
    expected = f"`refine train -p /dev/null --set train.out_dir={run}` continues"  # no checkpoint yet
    assert expected in " ".join(result.output.split()), result.output
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step-0000010\n")
    result = runner.invoke(cli.app, args)
    expected = f"`refine train -p /dev/null --set train.out_dir={run} --resume` continues"
    assert expected in " ".join(result.output.split()), result.output


def test_resuming_a_finished_run_says_it_was_finished(tmp_path: Path, tokenizer_dir: Path) -> None:
    write_corpus(tmp_path / "corpus", [[120, 400, 97], [300, 50, 250]])
    values = [
        f"paths.corpus_dir={tmp_path / 'corpus'}",
        f"paths.tokenizer_dir={tokenizer_dir}",
        f"paths.catalog={tmp_path / 'refine.duckdb'}",
        f"train.out_dir={tmp_path / 'run'}",
        "train.seq_len=96",
        "train.max_steps=2",
        "refine.coef=0",
    ]
    args = ["train", "-p", "/dev/null", *(arg for v in values for arg in ("--set", v))]
    assert runner.invoke(cli.app, args).exit_code == 0
    result = runner.invoke(cli.app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert "already finished" in result.output and "at step 2;" in result.output, result.output
    assert not [line for line in result.output.splitlines() if line.split()[:1] == ["tokens/s"]]
