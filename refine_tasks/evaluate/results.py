"""Evaluation outputs: per-sample Parquet, per-task JSON and the catalog's `eval_results` rows.

`eval_results` holds one row per (run, checkpoint, task, length, depth) cell: NIAH cells per
needle depth, QA and LongBench tasks with depth NULL. Runs compare with one SQL query, e.g.

    SELECT task, run, sum(score * n_samples) / sum(n_samples) AS score
    FROM eval_results GROUP BY task, run ORDER BY task, run;
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from refine_tasks.evaluate.metrics import metric_label, task_score
from refine_tasks.evaluate.records import EvalRecord

EVAL_RESULTS_COLUMNS = ("run", "checkpoint", "family", "task", "length", "depth", "n_samples", "score")


@dataclass(frozen=True)
class SampleResult:
    """One scored generation."""

    record: EvalRecord
    prediction: str
    score: float
    prompt_tokens: int
    new_tokens: int
    truncated: bool


def samples_table(results: list[SampleResult], run: str, checkpoint: str) -> pa.Table:
    """One row per sample: ids, prediction, references and score (meta as a JSON string)."""
    rows = [
        {
            "run": run,
            "checkpoint": checkpoint,
            "family": r.record.family,
            "task": r.record.task,
            "sample_id": r.record.sample_id,
            "length": r.record.length,
            "depth": r.record.depth,
            "prompt_tokens": r.prompt_tokens,
            "truncated": r.truncated,
            "new_tokens": r.new_tokens,
            "prediction": r.prediction,
            "references": list(r.record.references),
            "score": r.score,
            "meta": json.dumps(r.record.meta, ensure_ascii=False),
        }
        for r in results
    ]
    schema = pa.schema(
        [
            ("run", pa.string()),
            ("checkpoint", pa.string()),
            ("family", pa.string()),
            ("task", pa.string()),
            ("sample_id", pa.string()),
            ("length", pa.int64()),
            ("depth", pa.float64()),
            ("prompt_tokens", pa.int64()),
            ("truncated", pa.bool_()),
            ("new_tokens", pa.int64()),
            ("prediction", pa.string()),
            ("references", pa.list_(pa.string())),
            ("score", pa.float64()),
            ("meta", pa.string()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def cell_rows(results: list[SampleResult], run: str, checkpoint: str) -> list[dict[str, Any]]:
    """The `eval_results` rows: mean score x 100 per (family, task, length, depth) cell."""
    cells: dict[tuple, list[float]] = defaultdict(list)
    for r in results:
        cells[(r.record.family, r.record.task, r.record.length, r.record.depth)].append(r.score)
    return [
        dict(zip(EVAL_RESULTS_COLUMNS, (run, checkpoint, *key, len(s), task_score(s)), strict=True))
        for key, s in sorted(cells.items(), key=lambda kv: tuple(str(k) for k in kv[0]))
    ]


def task_summary(results: list[SampleResult]) -> dict[str, dict[str, Any]]:
    """Per task: family, metric, sample count and score (mean x 100)."""
    by_task: dict[str, list[SampleResult]] = defaultdict(list)
    for r in results:
        by_task[r.record.task].append(r)
    return {
        task: {
            "family": rs[0].record.family,
            "metric": metric_label(rs[0].record.metric, task),
            "n_samples": len(rs),
            "score": task_score([r.score for r in rs]),
        }
        for task, rs in sorted(by_task.items())
    }


def write_outputs(results: list[SampleResult], out_dir: Path, run: str, checkpoint: str) -> dict[str, Path]:
    """Write `samples.parquet` and `scores.json` under out_dir; returns their paths. Both are written
    under temporary names first and renamed together, so a write that fails (a full disk) leaves the
    previous pair, never a new samples file beside old scores."""
    out_dir.mkdir(parents=True, exist_ok=True)
    samples, scores = out_dir / "samples.parquet", out_dir / "scores.json"
    tmp = {path: path.with_name(f"{path.name}.tmp-{os.getpid()}") for path in (samples, scores)}
    summary = {
        "run": run,
        "checkpoint": checkpoint,
        "tasks": task_summary(results),
        "cells": cell_rows(results, run, checkpoint),
    }
    try:
        pq.write_table(samples_table(results, run, checkpoint), tmp[samples])
        tmp[scores].write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        for path, written in tmp.items():
            os.replace(written, path)
    finally:
        for written in tmp.values():
            written.unlink(missing_ok=True)
    return {"samples": samples, "scores": scores}


def store_eval_results(con: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]]) -> int:
    """Replace the rows of each (run, checkpoint, family) in `rows` with `rows`, in one transaction
    (a run evaluated one family at a time, as the pipeline's eval stages do, keeps every family)."""
    keys = sorted({(r["run"], r["checkpoint"], r["family"]) for r in rows})
    con.execute("BEGIN TRANSACTION")
    try:
        for run, checkpoint, family in keys:
            con.execute(
                "DELETE FROM eval_results WHERE run = ? AND checkpoint = ? AND family = ?",
                [run, checkpoint, family],
            )
        con.executemany(
            f"INSERT INTO eval_results ({', '.join(EVAL_RESULTS_COLUMNS)}) VALUES "
            f"({', '.join('?' * len(EVAL_RESULTS_COLUMNS))})",
            [[r[c] for c in EVAL_RESULTS_COLUMNS] for r in rows],
        )
        con.execute("COMMIT")
    except duckdb.Error:
        con.execute("ROLLBACK")
        raise
    return len(rows)
