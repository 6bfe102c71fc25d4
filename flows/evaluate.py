"""refine-evaluate: NIAH, QA and LongBench on each model, then the report, as Prefect artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.stages import run_stage
from refine_tasks.config import load_config
from refine_tasks.pipeline.lifecycle import EVAL_STAGES, MODELS, comparison


def publish_report(params: str, overrides: list[str] | None) -> None:
    """The comparison as a markdown and a table artifact, and the report's plot files."""
    cfg = load_config(params, list(overrides or []))
    report_dir = Path(cfg.evaluate.report_dir)
    comparison_md = (report_dir / "comparison.md").read_text(encoding="utf-8")
    create_markdown_artifact(comparison_md, key="refine-comparison", description="base vs SFT vs ReFINE")
    header, rows = comparison(cfg)
    table = [dict(zip(header, (cell.replace("**", "") for cell in row), strict=True)) for row in rows]
    create_table_artifact(table, key="refine-scores", description="scores x 100 per task and model")
    plots = sorted(report_dir.glob("*.png"))
    listing = "\n".join(f"- `{p.resolve()}`" for p in plots) or "- (no plots: no NIAH or LongBench results)"
    create_markdown_artifact(f"# Report files\n\n{listing}\n", key="refine-plots", description="plot files")


@flow(name="refine-evaluate", log_prints=True)
def evaluate_flow(
    models: list[str] | None = None,
    families: list[str] | None = None,
    params: str = "params.yaml",
    overrides: list[str] | None = None,
    ttt: list[str] | None = None,
) -> None:
    """Evaluate each model (default: base, sft, refine) on each family stage (default: eval_niah,
    eval_qa, eval_longbench; a family whose data path does not exist is skipped with a notice);
    with `ttt` (objectives sft and/or refine), also RULER QA of the nested-refine post-trained
    model with test-time training (eval_qa_ttt@<objective>). Then write the report of every model
    evaluated so far and publish it."""
    for family in families or EVAL_STAGES:
        for model in models or MODELS:
            run_stage(f"{family}@{model}", params, overrides)
    for objective in ttt or []:
        run_stage(f"eval_qa_ttt@{objective}", params, overrides)
    run_stage("report", params, overrides)
    publish_report(params, overrides)
