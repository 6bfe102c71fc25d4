"""benchmarks/record.py: figures reach results.jsonl and RESULTS.md, imports check every line first."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_record", Path(__file__).resolve().parents[2] / "benchmarks" / "record.py"
)
record_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record_mod)


def test_record_appends_json_line_and_table_row(tmp_path: Path) -> None:
    jsonl, md = tmp_path / "results.jsonl", tmp_path / "RESULTS.md"
    record_mod.record(
        "ingest_rate", 1234.5, "tok/s", "cpu-2core", "python x.py | y", "n1", jsonl=jsonl, md=md
    )
    record_mod.record("ratio", 0.9, "x", "cpu-2core", "python x.py", jsonl=jsonl, md=md)
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert [x["metric"] for x in lines] == ["ingest_rate", "ratio"]
    assert set(lines[0]) == set(record_mod.FIELDS)
    assert lines[0]["value"] == 1234.5 and lines[0]["note"] == "n1"
    assert len(lines[0]["date"]) == 10 and lines[0]["date"][4] == "-"
    text = md.read_text()
    assert text.startswith("# Benchmark results")
    rows = [r for r in text.splitlines() if r.startswith("| ingest_rate") or r.startswith("| ratio")]
    assert len(rows) == 2
    assert "python x.py \\| y" in rows[0]  # a pipe in a cell is escaped, the row keeps 7 cells


def test_record_refuses_empty_fields(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="card"):
        record_mod.record("m", 1.0, "s", "", "cmd", jsonl=tmp_path / "r.jsonl", md=tmp_path / "R.md")
    assert not (tmp_path / "r.jsonl").exists()


def test_import_keeps_device_date_and_checks_all_lines_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jsonl, md = tmp_path / "results.jsonl", tmp_path / "RESULTS.md"
    good = {
        "metric": "step_ms",
        "value": 347,
        "unit": "ms",
        "card": "NVIDIA H100 80GB HBM3",
        "command": "python benchmarks/b.py",
        "date": "2026-11-20",
    }
    src = tmp_path / "out.jsonl"
    src.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "metric": "other"}) + "\n")
    monkeypatch.setattr(record_mod, "RESULTS_JSONL", jsonl)
    monkeypatch.setattr(record_mod, "RESULTS_MD", md)
    assert record_mod.main(["--import", str(src)]) == 0
    assert [json.loads(x)["metric"] for x in jsonl.read_text().splitlines()] == ["step_ms", "other"]
    assert json.loads(jsonl.read_text().splitlines()[0])["date"] == "2026-11-20"

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(good) + "\n" + json.dumps({"metric": "x"}) + "\n")
    before = jsonl.read_text()
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field\(s\) value, unit, card, command"):
        record_mod.import_results(bad, jsonl=jsonl, md=md)
    assert record_mod.main(["--import", str(bad)]) == 1
    assert jsonl.read_text() == before
