"""The one Prefect task every flow runs: a lifecycle stage (refine_tasks.pipeline.lifecycle), DVC-tracked.

- Caching: the task's key is its inputs (stage, parameters, and the DVC fingerprint of the stage's
  recorded deps, params and outs, which cover the library source files it depends on) plus the
  task's own source. A stage DVC does not consider up to date always runs.
- Retries: only for failures that can pass by themselves (the catalog or the DVC repository
  locked by another process, a dropped connection); bad input fails at once, with its message.
- Concurrency: every stage holds the global limit `dvc` (one DVC-tracked run at a time); stages
  that run a model also hold `gpu` (one training or evaluation on the accelerator at a time).
- Progress: a training stage keeps a progress artifact up to date, step by step.
"""

from __future__ import annotations

import time

from prefect import Task, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.client.schemas.objects import State, TaskRun
from prefect.concurrency.sync import concurrency

from refine_tasks.config import load_config
from refine_tasks.pipeline.dvc_state import DvcStages, write_overrides
from refine_tasks.pipeline.lifecycle import TRAIN_STAGES, StageResult, run_tracked, split_stage, stage_config

MODEL_STAGES = {*TRAIN_STAGES, "kernels", "positions", "eval_niah", "eval_qa", "eval_longbench"}
MODEL_STAGES |= {"posttrain", "eval_qa_post", "eval_qa_ttt"}
PROGRESS_EVERY_S = 2.0  # artifact updates are API calls: at most one per this many seconds


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys take lowercase letters, digits and dashes only."""
    return "-".join(parts).lower().replace("_", "-").replace("@", "-")


def transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry only errors that another attempt may not meet: locks held by others, connections."""
    from dvc.lock import LockError

    from refine_tasks.store.catalog import CatalogLocked

    try:
        state.result()
    except (CatalogLocked, LockError, ConnectionError, TimeoutError):
        return True
    except BaseException:
        return False
    return False


class TrainingProgress:
    """on_step callback of a training stage: a progress artifact, updated every few seconds."""

    def __init__(self, name: str, total: int | None) -> None:
        self.name, self.total, self.last = name, total, 0.0
        self.artifact = create_progress_artifact(
            0.0, key=artifact_key(name, "progress"), description=f"{name}: optimizer steps done (%)"
        )

    def __call__(self, line: dict) -> None:
        now = time.monotonic()
        done = self.total is not None and line.get("step") == self.total
        if self.total and "step" in line and (done or now - self.last >= PROGRESS_EVERY_S):
            self.last = now
            update_progress_artifact(
                self.artifact,
                100.0 * line["step"] / self.total,
                description=f"{self.name}: step {line['step']}/{self.total}, loss {line['loss']:.4f}",
            )

    def up_to_date(self) -> None:
        """The stage did not run because its outputs are current: done, not 0%."""
        update_progress_artifact(self.artifact, 100.0, description=f"{self.name}: up to date (dvc status)")


def _rows_markdown(result: StageResult) -> str:
    lines = [f"# {result.name}\n", "| figure | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in result.shown_rows()]
    return "\n".join(lines) + ("\n\n" + result.notice if result.notice else "") + "\n"


@task(
    task_run_name="{name}",
    cache_policy=INPUTS + TASK_SOURCE,
    retries=3,
    retry_delay_seconds=[5, 20, 60],
    retry_condition_fn=transient,
)
def stage_task(
    name: str, params: str, overrides: list[str], fingerprint: str, force: bool = False
) -> list[tuple[str, str]]:
    """Run lifecycle stage `name` (see refine_tasks.pipeline.lifecycle.run_tracked) and publish its figures."""
    logger = get_run_logger()
    cfg = load_config(params, overrides)
    stage, _ = split_stage(name)
    limits = ["dvc", "gpu"] if stage in MODEL_STAGES else ["dvc"]
    on_step = None
    if stage in TRAIN_STAGES:
        on_step = TrainingProgress(name, stage_config(name, cfg).train.max_steps)
    held = " and ".join(limits)
    with concurrency(limits, occupy=1):
        logger.info("%s: holding %s", name, held)
        try:
            result = run_tracked(name, cfg, on_step=on_step, force=force)
        finally:
            logger.info("%s: releasing %s", name, held)
    if result.up_to_date and on_step is not None:
        on_step.up_to_date()
    if result.notice:
        logger.warning(result.notice)
    create_markdown_artifact(_rows_markdown(result), key=artifact_key(name, "summary"), description=name)
    logger.info("%s: %s", name, ", ".join(f"{k} {v}" for k, v in result.shown_rows()))
    return result.rows


def run_stage(
    name: str, params: str = "params.yaml", overrides: list[str] | None = None, force: bool = False
) -> list[tuple[str, str]]:
    """Call `stage_task` with the stage's DVC fingerprint: a stage that is up to date may come
    from the cache; one that is not (or any untracked run with overrides) is always computed
    afresh. In the DVC repository, overrides are written into its params.yaml first (as `dvc exp
    run -S` does): only the stages whose parameters they change run, and dvc.lock records them."""
    overrides = write_overrides(params, list(overrides or []))
    dvc = DvcStages.for_config(load_config(params, overrides))
    fingerprint = dvc.fingerprint(name) if dvc is not None and not force else None
    if fingerprint is None:
        return stage_task.with_options(refresh_cache=True)(name, params, overrides, "", force)
    return stage_task(name, params, overrides, fingerprint, force)
