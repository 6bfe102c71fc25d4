"""Evaluation reports from the catalog's `eval_results`: markdown per run, a comparison, figures.

`write_report(catalog, runs, out_dir)` writes
- `<run>.md`: the run's task scores by family and its NIAH scores by length;
- `comparison.md`: every task's score per run side by side (base vs SFT vs ReFINE), with family
  averages (unweighted means of task scores, as LongBench reports);
- `<run>_niah.png`: NIAH heat-map (length x depth), for runs with NIAH results;
- `longbench.png`: LongBench per-task bars, one bar per run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from refine_tasks.evaluate.metrics import FAMILY_RULE, metric_label
from refine_tasks.evaluate.plots import longbench_bars, niah_heatmap
from refine_tasks.evaluate.records import EvalError
from refine_tasks.evaluate.results import EVAL_RESULTS_COLUMNS
from refine_tasks.store.catalog import open_reader

FAMILY_TITLES = {"niah": "RULER NIAH", "ruler_qa": "RULER QA", "longbench": "LongBench"}


def load_results(catalog: Path, runs: list[str] | None = None) -> pd.DataFrame:
    """`eval_results` rows (all runs, or `runs` in that order) with a `label` column per run."""
    con = open_reader(catalog)
    try:
        df = con.execute(
            "SELECT * FROM eval_results ORDER BY run, checkpoint, family, task, length, depth"
        ).df()
    finally:
        con.close()
    return label_results(df, runs, str(catalog))


def results_from_scores(files: list[Path], runs: list[str] | None = None) -> pd.DataFrame:
    """The same rows as `load_results`, read from `scores.json` files (their `cells`) instead of
    the catalog: a report of exactly the evaluation outputs a pipeline stage depends on."""
    cells = [cell for f in files for cell in json.loads(Path(f).read_text(encoding="utf-8"))["cells"]]
    df = pd.DataFrame(cells, columns=list(EVAL_RESULTS_COLUMNS))
    return label_results(df, runs, ", ".join(map(str, files)) or "no scores.json files")


def label_results(df: pd.DataFrame, runs: list[str] | None, source: str) -> pd.DataFrame:
    """Keep `runs` (all if None; in that order) and add the `label` column (run, or run@checkpoint)."""
    if runs:
        missing = [r for r in runs if r not in set(df.run)]
        if missing:
            raise EvalError(
                f"{source}: no evaluation results for run(s) {', '.join(missing)}; "
                f"runs present: {', '.join(sorted(set(df.run))) or 'none'}"
            )
        df = df[df.run.isin(runs)]
    if df.empty:
        raise EvalError(f"{source}: no evaluation results; run `refine evaluate` first")
    per_run = df.groupby("run").checkpoint.nunique()
    df = df.assign(
        label=[
            r if per_run[r] == 1 else f"{r}@{Path(c).name}"
            for r, c in zip(df.run, df.checkpoint, strict=True)
        ]
    )
    order = runs or sorted(set(df.run))
    labels = sorted(set(df.label), key=lambda lab: (order.index(lab.split("@")[0]), lab))
    df["label"] = pd.Categorical(df.label, categories=labels, ordered=True)
    return df


def task_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Per (label, family, task): samples and score (sample-weighted over the task's cells)."""
    family = pd.Categorical(
        df.family, categories=[*FAMILY_TITLES, *sorted(set(df.family) - set(FAMILY_TITLES))]
    )
    g = df.assign(mass=df.score * df.n_samples, family=family).groupby(
        ["label", "family", "task"], observed=True
    )
    out = g[["mass", "n_samples"]].sum()
    out["score"] = out.mass / out.n_samples
    return out.drop(columns="mass").reset_index()


def length_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Per (label, family, task, length), for records with a context length (NIAH, RULER QA):
    samples and score, sample-weighted over the cell's depths / variants."""
    with_length = df[df.length.notna()]
    g = with_length.assign(mass=with_length.score * with_length.n_samples).groupby(
        ["label", "family", "task", "length"], observed=True
    )
    out = g[["mass", "n_samples"]].sum()
    out["score"] = out.mass / out.n_samples
    return out.drop(columns="mass").reset_index()


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run_markdown(df: pd.DataFrame, label: str) -> str:
    """One run's report: scores per family and task, then NIAH by variant and length."""
    mine = df[df.label == label]
    scores = task_scores(mine)
    parts = [f"# Evaluation: {label}\n", f"checkpoint: `{mine.checkpoint.iloc[0]}`\n"]
    rows = []
    for family, block in scores.groupby("family", observed=True):
        title = FAMILY_TITLES.get(family, family)
        for t in block.itertuples():
            metric = metric_label(FAMILY_RULE.get(family, "longbench"), t.task)
            rows.append([title, t.task, metric, str(int(t.n_samples)), f"{t.score:.2f}"])
        rows.append([f"**{title}**", "**average**", "", "", f"**{block.score.mean():.2f}**"])
    parts.append(_md_table(["family", "task", "metric", "samples", "score"], rows))
    niah = mine[mine.family == "niah"]
    if not niah.empty:
        by = (
            niah.assign(mass=niah.score * niah.n_samples)
            .groupby(["task", "length"])[["mass", "n_samples"]]
            .sum()
        )
        grid = (by.mass / by.n_samples).unstack("length")
        header = ["variant", *[f"{n:,}" for n in grid.columns]]
        body = [
            [task, *[f"{v:.2f}" for v in row]] for task, row in zip(grid.index, grid.to_numpy(), strict=True)
        ]
        body.append(["**mean**", *[f"**{v:.2f}**" for v in grid.mean().to_numpy()]])
        parts += ["\n## NIAH by context length\n", _md_table(header, body)]
    return "\n".join(parts)


def comparison_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the comparison: every task's score per run, then, for a task evaluated at
    several context lengths, its score at each length ("task @ length"); family averages (over
    tasks); best in bold."""
    scores = task_scores(df).pivot_table(
        index=["family", "task"], columns="label", values="score", observed=True
    )
    by_length = (
        length_scores(df)
        .pivot_table(index=["family", "task", "length"], columns="label", values="score", observed=True)
        .reindex(columns=scores.columns)
    )
    labels = list(scores.columns)
    rows = []

    def cells(values: pd.Series) -> list[str]:
        # Bold the best run of a row, when there is a difference to show.
        present = values.dropna()
        best = present.max() if present.nunique() > 1 else None
        return ["—" if pd.isna(v) else (f"**{v:.2f}**" if v == best else f"{v:.2f}") for v in values]

    for family in dict.fromkeys(scores.index.get_level_values("family")):
        block = scores.loc[family]
        for task, values in block.iterrows():
            rows.append([FAMILY_TITLES.get(family, family), str(task), *cells(values)])
            key = (family, task)
            lengths = by_length.loc[key] if key in by_length.index.droplevel("length") else None
            if lengths is not None and len(lengths) > 1:
                for length, at in lengths.iterrows():
                    rows.append([FAMILY_TITLES.get(family, family), f"{task} @ {int(length):,}", *cells(at)])
        rows.append([FAMILY_TITLES.get(family, family), "average", *cells(block.mean())])
    return ["family", "task", *map(str, labels)], rows


def runs_as_rows(header: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """The comparison turned: a row per run (the paper's cumulative rows: base, mid SFT, mid ReFINE,
    + post-training, + TTT), a column per task and per task at each length ("family: task @ length")."""
    columns = [f"{row[0]}: {row[1]}" for row in rows]
    return ["run", *columns], [[run, *(row[2 + j] for row in rows)] for j, run in enumerate(header[2:])]


def comparison_markdown(df: pd.DataFrame) -> str:
    """Task scores side by side, one column per run; family averages; best per row in bold. Then the
    same numbers with a row per run and a column per task and length."""
    header, rows = comparison_rows(df)
    return (
        "# Evaluation comparison\n\n"
        + _md_table(header, rows)
        + "\n\n## By run (a row per run, a column per task and length)\n\n"
        + _md_table(*runs_as_rows(header, rows))
    )


def write_report(catalog: Path, runs: list[str] | None, out_dir: Path) -> list[Path]:
    """Write the markdown tables and figures for `runs` (all runs if None); returns the files."""
    return write_report_frame(load_results(catalog, runs), out_dir)


def write_report_frame(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write the report of labelled results (`load_results` / `results_from_scores`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for label in df.label.cat.categories:
        path = out_dir / f"{label}.md"
        path.write_text(run_markdown(df, label), encoding="utf-8")
        written.append(path)
        niah = df[(df.label == label) & (df.family == "niah")]
        if not niah.empty:
            written.append(niah_heatmap(niah, f"NIAH: {label}", out_dir / f"{label}_niah.png"))
    comparison = out_dir / "comparison.md"
    comparison.write_text(comparison_markdown(df), encoding="utf-8")
    written.append(comparison)
    lb = task_scores(df[df.family == "longbench"])
    if not lb.empty:
        table = lb.pivot_table(index="task", columns="label", values="score", observed=True)
        written.append(longbench_bars(table, "LongBench", out_dir / "longbench.png"))
    return written
