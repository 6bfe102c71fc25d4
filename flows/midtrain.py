"""refine-midtrain: mid-train the base model with ReFINE, or the SFT baseline (refine.coef = 0)."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from flows.evaluate import evaluate_flow
from flows.preprocess import preprocess_flow
from flows.stages import run_stage


@flow(name="refine-midtrain", log_prints=True)
def midtrain_flow(
    objective: Literal["refine", "sft"] = "refine",
    params: str = "params.yaml",
    overrides: list[str] | None = None,
    refresh_corpus: bool = False,
    evaluate: bool = False,
) -> None:
    """Bring the corpus, the kernel cache and the base model up to date, then mid-train (`midtrain_<objective>`).
    refresh_corpus re-reads the corpus source first (the nightly retraining); evaluate runs the
    evaluations of the new model and the report afterwards."""
    preprocess_flow(params, overrides, refresh_corpus)
    run_stage("kernels", params, overrides)  # the kernel cache `dvc repro` and `refine run` keep too
    run_stage("base", params, overrides)
    if objective == "refine":
        run_stage("positions", params, overrides)
    run_stage(f"midtrain_{objective}", params, overrides)
    if evaluate:
        evaluate_flow(models=["base", objective], params=params, overrides=overrides)
