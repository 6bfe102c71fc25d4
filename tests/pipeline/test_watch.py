"""`refine watch`: a flow run followed to its end says how it ended; a failed one, its error (issue
18, item 10: Prefect's own `--watch` ends with `Flow run finished in state 'Failed'` alone).
Prefect's stream of logs and events is replaced by a stand-in returning the finished run."""

from __future__ import annotations

from uuid import uuid4

import pytest
from prefect.cli import flow_runs_watching
from prefect.client.schemas.objects import FlowRun
from prefect.states import Completed, Crashed, Failed
from typer.testing import CliRunner

from refine_tasks.pipeline import cli

runner = CliRunner()
ERROR = "Flow run encountered an exception: ValueError: sequence of 256 tokens is shorter than n_chunks 64"


def finished_with(monkeypatch: pytest.MonkeyPatch, state) -> tuple[FlowRun, list]:
    flow_run = FlowRun(id=uuid4(), name="clever-otter", flow_id=uuid4(), state=state)
    watched = []

    async def watch_flow_run(flow_run_id, console, timeout=None) -> FlowRun:
        watched.append((flow_run_id, timeout))
        return flow_run

    monkeypatch.setattr(flow_runs_watching, "watch_flow_run", watch_flow_run)
    return flow_run, watched


@pytest.mark.parametrize("state", [Failed(message=ERROR), Crashed(message=ERROR)])
def test_a_failed_run_prints_its_error(monkeypatch: pytest.MonkeyPatch, state) -> None:
    flow_run, watched = finished_with(monkeypatch, state)
    result = runner.invoke(cli.app, ["watch", str(flow_run.id), "--timeout", "60"])
    assert result.exit_code == 1, result.output
    assert watched == [(flow_run.id, 60)]
    assert f"flow run clever-otter: {state.name}: {ERROR}" in " ".join(result.output.split())


def test_a_completed_run_exits_zero_and_a_bad_id_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    flow_run, _ = finished_with(monkeypatch, Completed())
    result = runner.invoke(cli.app, ["watch", str(flow_run.id)])
    assert result.exit_code == 0 and "flow run clever-otter: Completed" in result.output, result.output
    result = runner.invoke(cli.app, ["watch", "refine-midtrain/tiny-cpu"])
    assert result.exit_code == 2 and "not a flow run id" in result.output, result.output
