"""LongBench readers (shared parquet, JSONL, a `datasets` copy) and middle truncation."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from refine_tasks.evaluate import EvalError
from refine_tasks.evaluate.longbench import available_tasks, read_longbench, truncate_middle


def test_reads_the_fixture_files_with_budgets_and_stop_rules(fixture_data: Path):
    folder = fixture_data / "longbench"
    assert available_tasks(str(folder)) == ["lcc", "narrativeqa", "samsum", "trec", "triviaqa"]
    table = pq.read_table(folder / "samsum_16384.parquet").to_pylist()
    records = read_longbench(str(folder), "samsum")
    assert [r.prompt for r in records] == [row["prompt"] for row in table] and len(records) == 2
    assert [list(r.references) for r in records] == [row["answers"] for row in table]
    assert all(r.max_new_tokens == 128 and r.stop_on_newline and r.length == 16384 for r in records)
    [lcc] = read_longbench(str(folder), "lcc", limit=1)
    assert lcc.max_new_tokens == 64 and not lcc.stop_on_newline and lcc.metric == "longbench"
    jsonl = read_longbench(str(folder), "narrativeqa")  # JSONL without budgets: LongBench's own
    assert [r.references for r in jsonl] == [("Dunmore",), ("records of its river", "records")]
    assert all(r.max_new_tokens == 128 and r.length is None for r in jsonl)


def test_reads_the_shared_files_with_budgets_and_stop_rules(shared_data: Path):
    folder = shared_data / "longbench"
    assert available_tasks(str(folder)) == sorted(
        ["2wikimqa", "hotpotqa", "lcc", "multi_news", "multifieldqa_en", "narrativeqa", "qmsum",
         "repobench-p", "samsum", "trec", "triviaqa"]
    )  # fmt: skip
    table = pq.read_table(folder / "samsum_16384.parquet").slice(0, 3).to_pylist()
    records = read_longbench(str(folder), "samsum", limit=3)
    assert [r.prompt for r in records] == [row["prompt"] for row in table]
    assert [list(r.references) for r in records] == [row["answers"] for row in table]
    assert all(r.max_new_tokens == 128 and r.stop_on_newline and r.length == 16384 for r in records)
    lcc = read_longbench(str(folder), "lcc", limit=2)
    assert all(r.max_new_tokens == 64 and not r.stop_on_newline and r.metric == "longbench" for r in lcc)
    assert len(read_longbench(str(folder), "narrativeqa")) == 61


def test_jsonl_folder_with_default_budget_and_all_classes(tmp_path: Path):
    rows = [{"prompt": "Q?", "answers": ["City"], "all_classes": ["City", "Town"]}]
    (tmp_path / "trec.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    [record] = read_longbench(str(tmp_path), "trec")
    assert record.max_new_tokens == 64  # LongBench's budget for trec
    assert record.meta["all_classes"] == ["City", "Town"] and record.length is None


def test_datasets_copy_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # A `datasets` repository with one configuration per task, here a local folder.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    repo = tmp_path / "hub"
    repo.mkdir()
    pq.write_table(
        pa.Table.from_pylist([{"prompt": "p", "answers": ["a"], "max_gen_tokens": 5}]), repo / "trec.parquet"
    )
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: trec\n  data_files:\n  - split: test\n    path: trec.parquet\n---\n"
    )
    [record] = read_longbench(f"hf:{repo}", "trec")
    assert (record.prompt, record.references, record.max_new_tokens) == ("p", ("a",), 5)


def test_reader_errors_name_the_problem(tmp_path: Path, fixture_data: Path):
    folder = str(fixture_data / "longbench")
    with pytest.raises(ValueError, match="unknown task"):
        read_longbench(folder, "dureader")
    with pytest.raises(EvalError, match="no file for task 'qasper'"):
        read_longbench(folder, "qasper")
    with pytest.raises(EvalError, match="longbench_source"):
        read_longbench(str(tmp_path / "nowhere"), "trec")
    (tmp_path / "trec.jsonl").write_text(json.dumps({"input": "x", "answers": ["y"]}) + "\n")
    with pytest.raises(ValueError, match="needs 'prompt' and 'answers'"):
        read_longbench(str(tmp_path), "trec")


def test_truncate_middle_keeps_both_ends():
    ids = list(range(10))
    assert truncate_middle(ids, 10) == (ids, False)
    assert truncate_middle(ids, 6) == ([0, 1, 2, 7, 8, 9], True)
    assert truncate_middle(ids, 5) == ([0, 1, 8, 9], True)  # odd budget: two halves of 2
    with pytest.raises(ValueError):
        truncate_middle(ids, 1)
