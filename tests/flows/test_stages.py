"""flows.stages without a server: artifact keys, and which failures are retried."""

from __future__ import annotations

from dvc.lock import LockError
from prefect.states import Completed, Failed

from flows.stages import artifact_key, transient
from refine_tasks.errors import TrainingDiverged
from refine_tasks.pipeline.lifecycle import LifecycleError
from refine_tasks.store.catalog import CatalogLocked


def test_artifact_keys_are_what_prefect_accepts() -> None:
    assert artifact_key("eval_qa@sft", "summary") == "eval-qa-sft-summary"
    assert artifact_key("midtrain_refine", "progress") == "midtrain-refine-progress"


def test_only_transient_failures_are_retried() -> None:
    for exc in (CatalogLocked("catalog x is locked by PID 7"), LockError("dvc repo locked"), TimeoutError()):
        assert transient(None, None, Failed(data=exc)), exc
    for exc in (TrainingDiverged("non-finite"), LifecycleError("no checkpoint"), ValueError("bad")):
        assert not transient(None, None, Failed(data=exc)), exc
    assert not transient(None, None, Completed(data=1))
