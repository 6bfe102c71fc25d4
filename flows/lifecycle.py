"""refine-lifecycle: the whole default lifecycle, as `refine run` and `dvc repro` run it; with
`experiment`, also the further seeds of lifecycle.seeds, the ablations when ReFINE beats SFT on no
metric (lifecycle.ablate) and the results page (`refine experiment`)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.concurrency.sync import concurrency

from flows.evaluate import evaluate_flow
from flows.midtrain import midtrain_flow
from flows.posttrain import posttrain_flow
from refine_tasks.config import load_config
from refine_tasks.pipeline.experiment import run_ablations, run_seeds, should_ablate, write_experiment_results


@task(task_run_name="experiment-seeds-and-results")
def experiment_task(params: str, overrides: list[str]) -> str:
    """SFT and ReFINE at every further seed from the lifecycle's base, the ablations if called for,
    then results.md / results.json."""
    logger = get_run_logger()
    cfg = load_config(params, overrides)
    with concurrency(["dvc", "gpu"], occupy=1):
        done = run_seeds(
            cfg, on_stage=lambda seed, r: logger.info("seed %s: %s: %s", seed, r.name, r.shown_rows())
        )
    logger.info("further seeds: %d stages run", len(done))
    ablate, why = should_ablate(cfg)
    logger.info("ablations %s: %s", "run" if ablate else "not run", why)
    if ablate:
        with concurrency(["dvc", "gpu"], occupy=1):
            done = run_ablations(
                cfg, on_stage=lambda name, r: logger.info("ablation %s: %s: %s", name, r.name, r.shown_rows())
            )
        logger.info("ablations: %d stages run", len(done))
    md, js = write_experiment_results(cfg, command=f"prefect: refine-lifecycle params={params} {overrides}")
    create_markdown_artifact(md.read_text(encoding="utf-8"), key="refine-results", description=str(md))
    return str(js)


@flow(name="refine-lifecycle", log_prints=True)
def lifecycle_flow(
    params: str = "params.yaml",
    overrides: list[str] | None = None,
    refresh_corpus: bool = False,
    experiment: bool = False,
) -> None:
    """Tokenizer, corpus, base model, SFT and ReFINE mid-training, every evaluation, post-training
    and test-time training with their QA evaluations, the report; with `experiment`, then every
    further seed (lifecycle.seeds) and the results page."""
    midtrain_flow("sft", params, overrides, refresh_corpus)
    midtrain_flow("refine", params, overrides)
    evaluate_flow(params=params, overrides=overrides)
    posttrain_flow(params=params, overrides=overrides)
    if experiment:
        experiment_task(params, list(overrides or []))
