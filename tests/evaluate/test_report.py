"""Reports from `eval_results`: per-run markdown, comparison across runs, heat-map and bar PNGs."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from refine_tasks.evaluate.report import load_results, task_scores, write_report
from refine_tasks.evaluate.results import store_eval_results
from refine_tasks.store.catalog import open_writer


def _row(run, family, task, score, n=1, length=None, depth=None, checkpoint="ck"):
    return {"run": run, "checkpoint": checkpoint, "family": family, "task": task, "length": length,
            "depth": depth, "n_samples": n, "score": score}  # fmt: skip


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    rows = []
    for run, shift in (("base", 0.0), ("sft", 10.0), ("refine", 20.0)):
        for length in (1024, 2048, 4096):
            for depth in (0.0, 50.0, 100.0):
                rows.append(
                    _row(run, "niah", "niah_single_1", min(100.0, shift + depth / 2), 2, length, depth)
                )
                rows.append(_row(run, "niah", "niah_multikey_2", shift, 1, length, depth))
        rows.append(_row(run, "ruler_qa", "ruler_squadqa", 30.0 + shift, 8, 4096))
        rows.append(_row(run, "longbench", "trec", 40.0 + shift, 4, 16384))
        rows.append(_row(run, "longbench", "lcc", 10.0 + shift / 2, 4, 16384))
    path = tmp_path / "cat.duckdb"
    with open_writer(path) as con:
        store_eval_results(con, rows)
    return path


def test_task_scores_weight_cells_by_samples(catalog):
    scores = task_scores(load_results(catalog, ["base"])).set_index("task")
    # niah_single_1 over 9 cells of 2 samples each: depths 0/50/100 give 0/25/50 -> mean 25.
    assert scores.loc["niah_single_1", "score"] == pytest.approx(25.0)
    assert scores.loc["niah_single_1", "n_samples"] == 18
    assert scores.loc["trec", "score"] == 40.0


def test_write_report_tables(catalog, tmp_path: Path):
    out = tmp_path / "report"
    files = write_report(catalog, ["base", "sft", "refine"], out)
    names = sorted(p.name for p in files)
    assert names == sorted(
        ["base.md", "sft.md", "refine.md", "base_niah.png", "sft_niah.png", "refine_niah.png"]
        + ["comparison.md", "longbench.png"]
    )
    base = (out / "base.md").read_text()
    assert "| RULER NIAH | niah_single_1 | string_match_all | 18 | 25.00 |" in base
    assert "| LongBench | trec | classification | 4 | 40.00 |" in base
    assert "| **LongBench** | **average** |  |  | **25.00** |" in base
    assert "| niah_single_1 | 25.00 | 25.00 | 25.00 |" in base  # NIAH by length
    comparison = (out / "comparison.md").read_text()
    assert "| family | task | base | sft | refine |" in comparison
    assert "| LongBench | trec | 40.00 | 50.00 | **60.00** |" in comparison
    assert "| RULER QA | average | 30.00 | 40.00 | **50.00** |" in comparison
    # Families in the order NIAH, QA, LongBench.
    assert comparison.index("RULER NIAH") < comparison.index("RULER QA") < comparison.index("LongBench")


def test_write_report_figures_are_real_pngs(catalog, tmp_path: Path):
    out = tmp_path / "report"
    write_report(catalog, ["base", "refine"], out)
    for name in ("base_niah.png", "longbench.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
            # Not a blank canvas: the heat-map and the bars put many colours on it.
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 20


def test_report_errors_and_labels(catalog, tmp_path: Path):
    with pytest.raises(ValueError, match="no evaluation results for run"):
        load_results(catalog, ["nope"])
    with open_writer(catalog) as con:
        store_eval_results(con, [_row("base", "longbench", "trec", 70.0, 4, 16384, checkpoint="/x/step-200")])
    labels = list(load_results(catalog, ["base"]).label.cat.categories)
    assert labels == ["base@ck", "base@step-200"]


def test_comparison_has_each_task_at_each_length(tmp_path: Path):
    from refine_tasks.evaluate.report import comparison_rows

    rows = []
    for run, shift in (("base", 0.0), ("refine", 5.0)):
        for length, score, n in ((4096, 40.0, 3), (8192, 10.0, 1)):
            rows.append(_row(run, "ruler_qa", "ruler_squadqa", score + shift, n, length))
            for depth, d in ((0.0, 0.0), (100.0, 20.0)):
                rows.append(_row(run, "niah", "niah_single_1", score + shift + d, 1, length, depth))
        rows.append(_row(run, "longbench", "trec", 30.0 + shift, 4, 16384))
    path = tmp_path / "two.duckdb"
    with open_writer(path) as con:
        store_eval_results(con, rows)
    header, body = comparison_rows(load_results(path, ["base", "refine"]))
    table = {r[1]: r[2:] for r in body if r[1] != "average"}
    assert header == ["family", "task", "base", "refine"]
    assert table["ruler_squadqa @ 4,096"] == ["40.00", "**45.00**"]
    assert table["ruler_squadqa @ 8,192"] == ["10.00", "**15.00**"]
    assert table["ruler_squadqa"] == ["32.50", "**37.50**"]  # (3 * 40 + 10) / 4
    assert table["niah_single_1 @ 4,096"] == ["50.00", "**55.00**"]  # mean over the two depths
    assert table["niah_single_1 @ 8,192"] == ["20.00", "**25.00**"]
    assert not any(t.startswith("trec @") for t in table)  # one length: no per-length row

    from refine_tasks.evaluate.report import comparison_markdown, runs_as_rows

    by_run_header, by_run = runs_as_rows(header, body)
    assert [r[0] for r in by_run] == ["base", "refine"]  # a row per run
    by_column = dict(zip(by_run_header[1:], zip(*(r[1:] for r in by_run), strict=True), strict=True))
    assert by_column["RULER QA: ruler_squadqa @ 8,192"] == ("10.00", "**15.00**")
    assert by_column["RULER NIAH: niah_single_1 @ 4,096"] == ("50.00", "**55.00**")
    assert "| refine | " in comparison_markdown(load_results(path, ["base", "refine"]))
