"""Per-sample Parquet, per-task JSON, and the `eval_results` rows (aggregation and replacement)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from refine_tasks.evaluate.records import EvalRecord
from refine_tasks.evaluate.results import (
    SampleResult,
    cell_rows,
    store_eval_results,
    task_summary,
    write_outputs,
)
from refine_tasks.store.catalog import open_reader, open_writer


def _result(task: str, score: float, depth: float | None = None, family: str = "niah") -> SampleResult:
    record = EvalRecord(
        family=family,
        task=task,
        sample_id=f"{task}:{depth}:{score}",
        prompt="p",
        references=("r1", "r2"),
        max_new_tokens=4,
        stop_on_newline=False,
        metric="string_match_all" if family == "niah" else "longbench",
        length=1024,
        depth=depth,
        meta={"k": [1, 2]},
    )
    return SampleResult(
        record, f"pred {score}", score, prompt_tokens=10, new_tokens=3, truncated=family != "niah"
    )


@pytest.fixture
def results() -> list[SampleResult]:
    return [
        _result("niah_single_1", 1.0, 0.0),
        _result("niah_single_1", 0.5, 0.0),
        _result("niah_single_1", 0.0, 100.0),
        _result("trec", 1.0, family="longbench"),
        _result("trec", 0.0, family="longbench"),
        _result("trec", 0.0, family="longbench"),
    ]


def test_cells_and_task_summary(results):
    cells = {(c["task"], c["depth"]): (c["n_samples"], c["score"]) for c in cell_rows(results, "base", "ck")}
    assert cells == {
        ("niah_single_1", 0.0): (2, 75.0),
        ("niah_single_1", 100.0): (1, 0.0),
        ("trec", None): (3, 33.33),
    }
    summary = task_summary(results)
    assert summary["niah_single_1"] == {
        "family": "niah",
        "metric": "string_match_all",
        "n_samples": 3,
        "score": 50.0,
    }
    assert summary["trec"]["metric"] == "classification" and summary["trec"]["score"] == 33.33


def test_write_outputs_one_row_per_sample(results, tmp_path: Path):
    paths = write_outputs(results, tmp_path / "base", "base", "ck")
    table = pq.read_table(paths["samples"]).to_pylist()
    assert len(table) == len(results)
    assert [row["score"] for row in table] == [r.score for r in results]
    assert table[0]["references"] == ["r1", "r2"] and json.loads(table[0]["meta"]) == {"k": [1, 2]}
    assert table[3]["depth"] is None and table[3]["truncated"] is True
    scores = json.loads(paths["scores"].read_text())
    assert scores["run"] == "base" and scores["tasks"]["trec"]["n_samples"] == 3
    assert len(scores["cells"]) == 3


def test_store_replaces_a_runs_rows_and_keeps_others(results, tmp_path: Path):
    catalog = tmp_path / "cat.duckdb"
    with open_writer(catalog) as con:
        store_eval_results(con, cell_rows(results, "base", "ck"))
        store_eval_results(con, cell_rows(results[:2], "sft", "ck2"))
        store_eval_results(con, cell_rows(results[3:4], "base", "ck"))  # re-run of base's longbench
    con = open_reader(catalog)
    rows = con.execute(
        "SELECT run, task, depth, n_samples, score FROM eval_results ORDER BY run, task, depth"
    ).fetchall()
    con.close()
    # base's niah cells stay (a family evaluated on its own replaces only that family's rows)
    assert rows == [
        ("base", "niah_single_1", 0.0, 2, 75.0),
        ("base", "niah_single_1", 100.0, 1, 0.0),
        ("base", "trec", None, 1, 100.0),
        ("sft", "niah_single_1", 0.0, 2, 75.0),
    ]
