"""refine-lifecycle: the whole default lifecycle, as `refine run` and `dvc repro` run it."""

from __future__ import annotations

from prefect import flow

from flows.evaluate import evaluate_flow
from flows.midtrain import midtrain_flow
from flows.posttrain import posttrain_flow


@flow(name="refine-lifecycle", log_prints=True)
def lifecycle_flow(
    params: str = "params.yaml", overrides: list[str] | None = None, refresh_corpus: bool = False
) -> None:
    """Tokenizer, corpus, base model, SFT and ReFINE mid-training, every evaluation, post-training
    and test-time training with their QA evaluations, the report."""
    midtrain_flow("sft", params, overrides, refresh_corpus)
    midtrain_flow("refine", params, overrides)
    evaluate_flow(params=params, overrides=overrides)
    posttrain_flow(params=params, overrides=overrides)
