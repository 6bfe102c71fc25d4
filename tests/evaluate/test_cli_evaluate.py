"""`refine evaluate` and `refine report`: a small run end to end, a comparison, bad input as exit 2."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from refine_tasks.pipeline import cli

runner = CliRunner()


def _sets(tmp_path: Path, tokenizer_dir: Path, data: Path, *extra: str) -> list[str]:
    values = [
        f"paths.tokenizer_dir={tokenizer_dir}",
        f"paths.catalog={tmp_path / 'cat.duckdb'}",
        f"evaluate.output_dir={tmp_path / 'eval'}",
        "evaluate.niah_variants=[niah_single_2]",
        "evaluate.niah_lengths=[384, 512]",
        "evaluate.niah_depths=[0, 50, 100]",
        "evaluate.niah_max_new_tokens=4",
        f"evaluate.ruler_qa_files=[{data}/ruler_qa/ruler_hotpotqa_delta_net_4096_200_test.parquet]",
        "evaluate.qa_samples=1",
        "evaluate.qa_max_new_tokens=4",
        f"evaluate.longbench_source={data}/longbench",
        "evaluate.longbench_tasks=[triviaqa]",
        "evaluate.longbench_samples=1",
        "evaluate.max_prompt_tokens=512",
        *extra,
    ]
    return [arg for v in values for arg in ("--set", v)]


def test_evaluate_two_runs_then_report(tmp_path: Path, tokenizer_dir: Path, eval_data: Path):
    for run, seed in (("base", "0"), ("refine", "1")):
        sets = _sets(tmp_path, tokenizer_dir, eval_data, f"seed={seed}")
        result = runner.invoke(cli.app, ["evaluate", "-p", "/dev/null", "--run", run, *sets])
        assert result.exit_code == 0, result.output
        for label in ("niah_single_2", "ruler_hotpotqa", "triviaqa", "samples/s", "generated tokens/s"):
            assert label in result.output
        assert (tmp_path / "eval" / run / "samples.parquet").is_file()
    out = tmp_path / "report"
    result = runner.invoke(
        cli.app,
        ["report", "-p", "/dev/null", "-s", f"paths.catalog={tmp_path / 'cat.duckdb'}", "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    files = {p.name for p in out.iterdir()}
    assert files == {
        "base.md",
        "refine.md",
        "base_niah.png",
        "refine_niah.png",
        "comparison.md",
        "longbench.png",
    }
    assert "| family | task | base | refine |" in (out / "comparison.md").read_text()


def test_bad_input_is_a_red_line_and_exit_2(tmp_path: Path, tokenizer_dir: Path, fixture_data: Path):
    args = [
        "evaluate",
        "-p",
        "/dev/null",
        *_sets(tmp_path, tokenizer_dir, fixture_data, "evaluate.niah_variants=[niah_nope]"),
    ]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2 and "unknown NIAH variant 'niah_nope'" in result.output
    result = runner.invoke(
        cli.app, ["report", "-p", "/dev/null", "-s", f"paths.catalog={tmp_path / 'none.duckdb'}"]
    )
    assert result.exit_code == 2 and "no catalog" in result.output
