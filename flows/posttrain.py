"""refine-posttrain: QA data, post-training of the ReFINE model, RULER QA of each variant (and
with test-time training), then the report."""

from __future__ import annotations

from prefect import flow

from flows.evaluate import publish_report
from flows.stages import run_stage
from refine_tasks.pipeline.lifecycle import POSTTRAIN_VARIANTS, TTT_MODEL, TTT_OBJECTIVES

TTT_VARIANT = TTT_MODEL.removeprefix("post-")


@flow(name="refine-posttrain", log_prints=True)
def posttrain_flow(
    variants: list[str] | None = None,
    ttt: list[str] | None = None,
    params: str = "params.yaml",
    overrides: list[str] | None = None,
) -> None:
    """Build the QA data, post-train each variant (default: sft, nested-sft, nested-refine) from
    the ReFINE mid-trained model (its stage must be done: refine-midtrain) and evaluate it on
    RULER QA; then RULER QA of the nested-refine model with test-time training for each objective
    in `ttt` (default: sft, refine; [] for none); the report last."""
    variants = list(variants or POSTTRAIN_VARIANTS)
    objectives = list(TTT_OBJECTIVES if ttt is None else ttt)
    run_stage("qa_data", params, overrides)
    for variant in variants:
        run_stage(f"posttrain@{variant}", params, overrides)
        run_stage(f"eval_qa_post@{variant}", params, overrides)
    if objectives and TTT_VARIANT not in variants:
        run_stage(f"posttrain@{TTT_VARIANT}", params, overrides)  # the model test-time training adapts
    for objective in objectives:
        run_stage(f"eval_qa_ttt@{objective}", params, overrides)
    run_stage("report", params, overrides)
    publish_report(params, overrides)
