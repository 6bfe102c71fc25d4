"""A real Prefect server on a free loopback port, started and stopped by infra/serve.sh and
infra/stop.sh around a tiny copy of the project: the deployments of prefect.yaml, a flow run of
`refine-midtrain/tiny-cpu` that fails on bad input (Failed, with the error, no half-written output),
its retry after the input is fixed (Completed, artifacts, DVC state as after `dvc repro`)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tiny_project import BIN, make_project, read_params, run, tool_env, write_params

pytestmark = pytest.mark.slow

UUID = re.compile(r"UUID: ([0-9a-f-]{36})")
FLOW_STAGES = ("tokenizer", "corpus", "kernels", "base", "positions", "midtrain_refine")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, project: Path, home: Path, port: int) -> None:
        self.project, self.home, self.port = project, home, port
        self.env = {
            **tool_env(),
            "REFINE_ROOT": str(project),
            "PREFECT_HOME": str(home),
            "PREFECT_PORT": str(port),
            "PREFECT_BIN": str(BIN / "prefect"),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        }

    def sh(self, *cmd: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            cmd, cwd=self.project, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def prefect(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.sh(str(BIN / "prefect"), *args, check=check, timeout=timeout)

    def flow_run(self, run_id: str) -> dict:
        return json.loads(self.prefect("flow-run", "inspect", run_id, "--output", "json").stdout)

    def artifact(self, key: str) -> dict:
        """The latest version of artifact `key`."""
        versions = json.loads(self.prefect("artifact", "inspect", key, "--output", "json").stdout)
        return max(versions, key=lambda a: a["updated"])

    def wait(self, run_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            flow_run = self.flow_run(run_id)
            if flow_run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return flow_run
            time.sleep(2)
        raise AssertionError(f"flow run {run_id} still {flow_run['state']['type']} after {timeout} s")

    def pids(self) -> list[int]:
        return [int(p.read_text()) for p in (self.home / "run").glob("*.pid")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("prefect")
    srv = Server(make_project(root / "project"), root / "home", free_port())
    try:
        out = srv.sh("bash", "infra/serve.sh", timeout=240).stdout
        assert f"http://127.0.0.1:{srv.port}" in out  # the UI address
        yield srv
    finally:
        pids = srv.pids()
        srv.sh("bash", "infra/stop.sh", check=False)
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def test_deployments_pools_and_limits(server: Server) -> None:
    listing = server.prefect("deployment", "ls").stdout
    for name in ("refine-midtrain/tiny-cpu", "refine-midtrain/nightly", "refine-evaluate/tiny-cpu",
                 "refine-lifecycle/tiny-cpu", "refine-preprocess/tiny-cpu", "refine-positions/tiny-cpu",
                 "refine-posttrain/tiny-cpu"):  # fmt: skip
        assert name in listing
    for name in ("refine-lifecycle/gpu-small", "refine-lifecycle/gpu-small-lact"):  # long names: inspect
        shown = server.prefect("deployment", "inspect", name).stdout
        assert "params-gpu-small.yaml" in shown and "'experiment': True" in shown
    nightly = server.prefect("deployment", "inspect", "refine-midtrain/nightly").stdout
    assert "0 2 * * *" in nightly and "'refresh_corpus': True" in nightly
    limits = server.prefect("gcl", "ls").stdout
    assert "gpu" in limits and "dvc" in limits
    for name in ("gpu", "dvc"):
        assert "limit=1," in server.prefect("gcl", "inspect", name).stdout
    gpu_pool = server.prefect("work-pool", "inspect", "refine-gpu").stdout
    assert "cuda_visible_devices" in gpu_pool and "REFINE_NPROC_PER_NODE" in gpu_pool


def test_midtrain_fails_on_bad_input_then_a_retry_completes(server: Server) -> None:
    project = server.project
    params = read_params(project)
    params["positions"]["n_chunks"] = 64  # 64 rollout chunks cannot fit 256 tokens
    write_params(project, params)
    started = time.monotonic()
    out = server.prefect("deployment", "run", "refine-midtrain/tiny-cpu").stdout
    run_id = UUID.search(out).group(1)
    failed = server.wait(run_id)
    assert failed["state"]["type"] == "FAILED"
    assert "shorter than n_chunks" in failed["state"]["message"]
    assert not (project / "data" / "runs" / "refine").exists()

    params["positions"]["n_chunks"] = 4
    write_params(project, params)
    server.prefect("flow-run", "retry", run_id)
    done = server.wait(run_id)
    assert done["state"]["type"] == "COMPLETED", done["state"]
    print(f"refine-midtrain/tiny-cpu: failed run + retry {time.monotonic() - started:.1f} s")

    progress = server.artifact("midtrain-refine-progress")
    assert progress["data"] == 100 and "step 4/4" in progress["description"]
    summary = server.artifact("midtrain-refine-summary")["data"]
    assert "| checkpoint |" in summary and "| dvc | outputs committed (dvc.lock) |" in summary
    assert (project / "data" / "runs" / "refine" / "checkpoints" / "latest").is_file()
    status = run(["dvc", "status", *FLOW_STAGES], project).stdout
    assert "up to date" in status, status
    again = run(["dvc", "repro", *FLOW_STAGES], project).stdout
    assert "Running stage" not in again, again


def test_a_second_run_reuses_everything_and_a_failure_puts_outputs_back(server: Server) -> None:
    project = server.project
    lock = (project / "dvc.lock").read_text()
    started = time.monotonic()
    out = server.prefect("deployment", "run", "refine-midtrain/tiny-cpu").stdout
    assert server.wait(UUID.search(out).group(1))["state"]["type"] == "COMPLETED"
    print(f"refine-midtrain/tiny-cpu, all stages up to date: {time.monotonic() - started:.1f} s")
    assert (project / "dvc.lock").read_text() == lock  # nothing recomputed, nothing recommitted

    params = read_params(project)
    params["refine"]["reward"] = "no-such-reward"  # fails in the first step, after the run began writing
    write_params(project, params)
    out = server.prefect("deployment", "run", "refine-midtrain/tiny-cpu").stdout
    failed = server.wait(UUID.search(out).group(1))
    assert failed["state"]["type"] == "FAILED" and "no-such-reward" in failed["state"]["message"]
    # the failed stage's last committed outputs are back: only the parameter differs from dvc.lock
    status = run(["dvc", "status", "midtrain_refine"], project).stdout
    assert "modified:           refine" in status and "changed outs" not in status, status
    assert (project / "data" / "runs" / "refine" / "checkpoints" / "latest").is_file()
    params["refine"]["reward"] = "cosine"
    write_params(project, params)
    assert "up to date" in run(["dvc", "status", *FLOW_STAGES], project).stdout


def test_evaluate_publishes_the_comparison_and_the_plots(server: Server) -> None:
    project = server.project
    params = json.dumps({"models": ["base", "refine"]})  # the SFT model was never trained here
    out = server.prefect("deployment", "run", "refine-evaluate/tiny-cpu", "--params", params).stdout
    done = server.wait(UUID.search(out).group(1))
    assert done["state"]["type"] == "COMPLETED", done["state"]
    comparison = server.artifact("refine-comparison")["data"]
    assert (
        "| family | task | base | refine |" in comparison and "| RULER NIAH | niah_single_1 |" in comparison
    )
    scores = server.artifact("refine-scores")["data"]
    assert "niah_single_1" in scores and '"refine"' in scores
    plots = server.artifact("refine-plots")["data"]
    assert str(project / "data" / "reports" / "base_niah.png") in plots
    stages = [f"{s}@{m}" for s in ("eval_niah", "eval_qa", "eval_longbench") for m in ("base", "refine")]
    assert "up to date" in run(["dvc", "status", *stages, "report"], project).stdout


def holding_intervals(server: Server, run_id: str) -> list[tuple[datetime, datetime, str]]:
    """(from, to, stage) of every stage of the run, read from its 'holding' / 'releasing' logs."""
    logs = json.loads(server.prefect("flow-run", "logs", run_id, "--output", "json").stdout)
    began: dict[str, datetime] = {}
    intervals = []
    for log in sorted(logs, key=lambda entry: entry["timestamp"]):
        found = re.match(r"(\S+): (holding|releasing) dvc", log["message"])
        if found:
            stage, what = found.groups()
            at = datetime.fromisoformat(log["timestamp"])
            if what == "holding":
                began[stage] = at
            else:
                intervals.append((began.pop(stage), at, f"{run_id[:8]}:{stage}"))
    return intervals


def test_two_runs_at_once_take_turns_on_the_dvc_limit(server: Server) -> None:
    """Two preprocess runs started together (each re-reading the corpus): the worker runs both at
    once, and the global limit `dvc` lets one stage at a time touch the DVC-tracked outputs."""
    params = json.dumps({"refresh_corpus": True})
    # Both scheduled for the same moment, far enough ahead that both exist when the worker's poll
    # first sees that moment: run "now", the second could miss the poll that takes the first
    # (CLI calls take seconds under load) and start only after the first has ended.
    at = (datetime.now(UTC) + timedelta(seconds=25)).strftime("%Y-%m-%d %H:%M:%S UTC")
    ids = [
        UUID.search(
            server.prefect(
                "deployment", "run", "refine-preprocess/tiny-cpu", "--params", params, "--start-at", at
            ).stdout
        )
        for _ in range(2)
    ]
    runs = [server.wait(found.group(1)) for found in ids]
    assert [r["state"]["type"] for r in runs] == ["COMPLETED", "COMPLETED"]
    spans = [(datetime.fromisoformat(r["start_time"]), datetime.fromisoformat(r["end_time"])) for r in runs]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], f"the runs did not overlap: {spans}"
    intervals = sorted(i for found in ids for i in holding_intervals(server, found.group(1)))
    # both runs re-read the corpus (the tokenizer, up to date, may come from the cache unrun)
    assert sorted(label.split(":")[1] for *_, label in intervals).count("corpus") == 2, intervals
    for (_, end, first), (start, _, second) in zip(intervals, intervals[1:], strict=False):
        assert start >= end, f"{second} began holding dvc before {first} released it"
    assert "up to date" in run(["dvc", "status", "tokenizer", "corpus"], server.project).stdout
