"""Issue 17's GPU run through the product's doors: a Prefect deployment, then `dvc repro` and `refine run`.

    python benchmarks/gpu_lifecycle_flow.py --out DIR [--profile params-gpu-small.yaml]
        [--deployment refine-lifecycle/gpu-small] [--set k=v ...]

On the GPU machine (it rewrites this checkout's params.yaml and starts a Prefect server):
1. the profile becomes the repository's parameters (`refine config -p PROFILE > params.yaml`), so
   DVC tracks every stage; the folder is made a git repository first if it is none (DVC needs one);
2. infra/serve.sh starts the Prefect server, pools and deployments, and a worker serves the GPU pool;
3. a flow run of the deployment with experiment=false: the whole lifecycle (tokenizer, corpus, base
   pretraining, positions, SFT and ReFINE, every evaluation, post-training, TTT, the report), its
   wall time from the flow run's own start and end: `gpu_lifecycle_wall_s`; the base run's summary
   gives `gpu_pretrain_tokens_per_s`;
4. a flow run with experiment=true: the lifecycle's stages are found up to date, then the further
   seeds (lifecycle.seeds) and the results page (docs/results.md, results.json);
5. `dvc status` and `dvc repro` (nothing to run), then `refine run` (every stage skipped): once after
   step 3 (DIR/doors-lifecycle.json, before the seeds, which may outlast a lease) and once at the end
   (DIR/doors.json).
Each step's log, both flow runs' states and logs, the lifecycle's report (as soon as its flow run
ends: DIR/lifecycle-report) and the results page go to DIR; figures to
DIR/results.jsonl (`python benchmarks/record.py --import` here). A failed step ends the script with
its log's tail, after copying what there is. While a flow run goes on, every poll copies what its
stages have finished (run summaries and metrics, evaluation scores, dvc.lock; the further seeds' too,
under experiment/) into DIR/progress, and
`gpu_pretrain_tokens_per_s` is recorded as soon as the base run's summary exists: a machine taken
back mid-run still returns them.

A run lost before its results file came back leaves the Prefect worker's log (DIR/gpu-worker.log,
which device_bg returns on every call): the base stage's summary line in it is the same figure,

    python benchmarks/gpu_lifecycle_flow.py --import-worker-log DIR/gpu-worker.log --card "NVIDIA H200" \\
        --date 2026-12-03 [--profile params-gpu-small.yaml]

records it here (benchmarks/results.jsonl, RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from record import FigureLog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
UUID = re.compile(r"UUID: ([0-9a-f-]{36})")
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


class Steps:
    """Shell steps in the repository, each logged to DIR/<name>.log; a failure ends the script."""

    def __init__(self, out: Path, env: dict[str, str]) -> None:
        self.out, self.env = out, env

    def run(self, name: str, cmd: list[str], timeout: float = 600, check: bool = True) -> str:
        began = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as e:
            sys.exit(f"{name}: no answer after {timeout:.0f} s ({' '.join(cmd)}): {e.stdout!r:.2000}")
        text = proc.stdout + proc.stderr
        (self.out / f"{name}.log").write_text(text, encoding="utf-8")
        print(f"[{name}] exit {proc.returncode}, {time.perf_counter() - began:.1f} s", flush=True)
        if check and proc.returncode != 0:
            sys.exit(f"{name} exited {proc.returncode} ({' '.join(cmd)}):\n{text[-3000:]}")
        return proc.stdout


def refine_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from refine_tasks.pipeline.cli import app; app()", *args]


def tool(name: str) -> str:
    """A console script beside this Python, else on PATH (the device machine's wheels: /tmp/site/bin)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name) or name


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def wait_flow_run(
    steps: Steps,
    prefect: str,
    run_id: str,
    name: str,
    timeout: float,
    on_poll: Callable[[], None] = lambda: None,
) -> dict:
    """Poll the flow run until it is final; a progress line every 30 s with the newest log line, and
    on_poll() after each poll."""
    began = time.monotonic()
    last_line = 0.0
    while True:
        on_poll()
        flow_run = json.loads(
            steps.run(
                f"{name}-inspect", [prefect, "flow-run", "inspect", run_id, "--output", "json"], timeout=120
            )
        )
        state = flow_run["state"]["type"]
        if state in FINAL:
            return flow_run
        if time.monotonic() - began > timeout:
            sys.exit(f"{name}: flow run {run_id} still {state} after {timeout:.0f} s")
        if time.monotonic() - last_line > 30:
            logs = subprocess.run(
                [prefect, "flow-run", "logs", run_id, "--tail", "--num-logs", "1"],
                cwd=ROOT,
                env=steps.env,
                capture_output=True,
                text=True,
            ).stdout.strip()
            print(f"[{name}] {state} after {time.monotonic() - began:.0f} s: {logs[-300:]}", flush=True)
            last_line = time.monotonic()
        time.sleep(5)


def deployment_run(
    steps: Steps,
    prefect: str,
    deployment: str,
    name: str,
    params: dict,
    timeout: float,
    on_poll: Callable[[], None] = lambda: None,
) -> dict:
    args = [w for key, value in params.items() for w in ("--param", f"{key}={json.dumps(value)}")]
    out = steps.run(f"{name}-start", [prefect, "deployment", "run", deployment, *args], timeout=120)
    run_id = UUID.search(out).group(1)
    print(f"[{name}] flow run {run_id} of {deployment} {params}", flush=True)
    flow_run = wait_flow_run(steps, prefect, run_id, name, timeout, on_poll)
    (steps.out / f"{name}-flow-run.json").write_text(json.dumps(flow_run, indent=1), encoding="utf-8")
    steps.run(f"{name}-flow-logs", [prefect, "flow-run", "logs", run_id], timeout=120, check=False)
    state = flow_run["state"]
    print(f"[{name}] flow run {run_id}: {state['type']} {state.get('message') or ''}", flush=True)
    if state["type"] != "COMPLETED":
        sys.exit(f"{name}: flow run {run_id} ended {state['type']}: {state.get('message')}")
    return flow_run


def stages_run(summary: str) -> list[str]:
    """The stages `refine run` printed without an "up to date" row under their name (the closing
    comparison table, written on every run, is no stage)."""
    lines = [line.strip() for line in summary.splitlines()]
    names = [i for i, line in enumerate(lines) if re.fullmatch(r"[a-z_]+(@[\w-]+)?", line)]
    ran = [lines[i] for i in names if i + 1 < len(lines) and not lines[i + 1].startswith("up to date")]
    return [name for name in ran if name != "comparison"]


# The base stage's closing line in the Prefect worker's log (refine_tasks.flows' task summary).
BASE_LINE = re.compile(
    r"Task run 'base' - base: run (?P<run>\S+), steps (?P<steps>[\d,]+),.*?tokens/s (?P<tps>[\d,.]+)"
)


def base_from_worker_log(text: str) -> dict:
    """The base stage's run id, steps and tokens/s from a Prefect worker's log; the last such line wins
    (a later flow run finds the stage up to date and writes no such line)."""
    found = list(BASE_LINE.finditer(text))
    if not found:
        raise ValueError(
            "no line of a finished base stage (\"Task run 'base' - base: run ..., tokens/s ...\")"
        )
    m = found[-1]
    return {
        "run": m["run"],
        "steps": int(m["steps"].replace(",", "")),
        "tokens_per_s": float(m["tps"].replace(",", "")),
    }


def pretrain_note(cfg, steps: object) -> str:
    return f"base pretraining, {cfg.model.preset} {cfg.model.mixer}, {steps} steps"


class Progress:
    """Called on every poll of the lifecycle's flow run: copies what its stages have finished into
    DIR/progress (small files only: run summaries and metrics, evaluation outputs, dvc.lock) and
    records gpu_pretrain_tokens_per_s once the base run's summary exists."""

    def __init__(self, cfg, out: Path, log: FigureLog) -> None:
        from refine_tasks.pipeline.lifecycle import SUMMARY_FILE, run_dir

        self.cfg, self.dest, self.log = cfg, out / "progress", log
        self.base_summary = ROOT / run_dir(cfg, "base") / SUMMARY_FILE
        self.pretrain_recorded = False

    def __call__(self) -> None:
        runs, evals = ROOT / self.cfg.lifecycle.runs_dir, ROOT / self.cfg.lifecycle.eval_dir
        seeds = ROOT / self.cfg.lifecycle.experiment_dir  # the further seeds' and ablations' outputs
        for src, dest, patterns in (
            (runs, self.dest / "runs", ("*/summary.json", "*/metrics.jsonl")),
            (evals, self.dest / "eval", ("**/*",)),
            (
                seeds,
                self.dest / "experiment",
                ("*/runs/*/summary.json", "*/runs/*/metrics.jsonl", "*/eval/**/*"),
            ),
            (ROOT, self.dest, ("dvc.lock",)),
        ):
            for f in (f for pattern in patterns for f in src.glob(pattern) if f.is_file()):
                self._copy_changed(f, dest / f.relative_to(src))
        if not self.pretrain_recorded and self.base_summary.is_file():
            base = json.loads(self.base_summary.read_text())
            if "tokens_per_s" in base:
                note = pretrain_note(self.cfg, base.get("steps"))
                self.log.emit("gpu_pretrain_tokens_per_s", base["tokens_per_s"], "tokens/s", note)
                self.pretrain_recorded = True

    @staticmethod
    def _copy_changed(src: Path, dest: Path) -> None:
        """A poll comes every few seconds: copy only what changed since the last (copy2 keeps mtime)."""
        stat = src.stat()
        if dest.is_file() and (dest.stat().st_size, dest.stat().st_mtime_ns) == (
            stat.st_size,
            stat.st_mtime_ns,
        ):
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)


def import_worker_log(args: argparse.Namespace) -> None:
    """--import-worker-log: record gpu_pretrain_tokens_per_s from a lost run's Prefect worker log."""
    from record import record

    from refine_tasks.config import load_config

    path = Path(args.import_worker_log)
    try:
        base = base_from_worker_log(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError) as e:
        sys.exit(f"{path}: {e}")
    cfg = load_config(ROOT / args.profile)
    command = (
        f"python benchmarks/gpu_lifecycle_flow.py --profile {args.profile} --deployment {args.deployment}"
    )
    note = f"{pretrain_note(cfg, base['steps'])}; run {base['run']}, from the Prefect worker's log of a run lost mid-way"
    entry = record(
        "gpu_pretrain_tokens_per_s",
        base["tokens_per_s"],
        "tokens/s",
        args.card,
        command,
        note,
        date=args.date,
    )
    print(json.dumps(entry), flush=True)


def keep(path: Path, dest: Path) -> None:
    """Copy a folder of the run (relative to the checkout) into DIR, if it exists: what the later steps
    would lose when they fail or the machine is taken back comes back with the earlier ones."""
    path = path if path.is_absolute() else ROOT / path
    if path.is_dir():
        shutil.copytree(path, dest, dirs_exist_ok=True)


def doors(steps: Steps, dest: Path) -> dict:
    """`dvc status`, `dvc repro` and `refine run` on the checkout: which stages each re-ran, into DEST."""
    status = steps.run("dvc-status", [tool("dvc"), "status"])
    repro = steps.run("dvc-repro", [tool("dvc"), "repro"], timeout=1800)
    again = steps.run("refine-run", refine_cmd("run"), timeout=1800)
    verdict = {
        "dvc_status": status.strip(),
        "dvc_repro_ran": re.findall(r"Running stage '([^']+)'", repro),
        "refine_run_ran": stages_run(again),
    }
    dest.write_text(json.dumps(verdict, indent=1), encoding="utf-8")
    print(json.dumps(verdict, indent=1), flush=True)
    return verdict


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--profile", type=Path, default=Path("params-gpu-small.yaml"))
    parser.add_argument("--deployment", default="refine-lifecycle/gpu-small")
    parser.add_argument("--pool", default="refine-gpu", help="the work pool the deployment runs on")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="overrides, every door")
    parser.add_argument("--timeout-s", type=float, default=3600, help="per flow run")
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument(
        "--import-worker-log", metavar="LOG", help="record the base figure from LOG, then stop"
    )
    parser.add_argument("--card", help="with --import-worker-log: the GPU the log's run had")
    parser.add_argument("--date", help="with --import-worker-log: the run's UTC date (YYYY-MM-DD)")
    args = parser.parse_args(argv)
    if args.import_worker_log:
        if not args.card or not args.date:
            parser.error("--import-worker-log needs --card and --date (the run's GPU and day)")
        import_worker_log(args)
        return
    if args.out is None:
        parser.error("--out is required")
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    from refine_tasks.config import load_config

    home = ROOT / "data" / "prefect"
    env = {
        **os.environ,
        "REFINE_ROOT": str(ROOT),
        "PREFECT_HOME": str(home),
        "PREFECT_PORT": str(args.port),
        "PREFECT_BIN": tool("prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{args.port}/api",
        "PATH": f"{Path(tool('dvc')).parent}:{os.environ.get('PATH', '')}",
    }
    steps = Steps(args.out, env)
    prefect = tool("prefect")
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    overrides = [w for item in args.extra for w in ("--set", item)]
    command = (
        f"python benchmarks/gpu_lifecycle_flow.py --profile {args.profile} --deployment {args.deployment}"
    )
    log = FigureLog(
        card,
        f"{command} {' '.join(overrides)}".strip(),
        args.out / "results.jsonl",
        args.out / "RESULTS.md",
        [],
    )

    if subprocess.run(["git", "rev-parse", "--git-dir"], cwd=ROOT, capture_output=True).returncode != 0:
        steps.run(
            "git-init",
            [
                "bash",
                "-c",
                "git init -q && git add -A && git -c user.name=refine "
                "-c user.email=refine@localhost commit -qm 'the checkout as it came'",
            ],
        )
    resolved = steps.run("params", refine_cmd("config", "-p", str(args.profile), *overrides))
    (ROOT / "params.yaml").write_text(resolved, encoding="utf-8")
    cfg = load_config(ROOT / "params.yaml")
    progress = Progress(cfg, args.out, log)

    worker = None
    try:
        steps.run("serve", ["bash", "infra/serve.sh"], timeout=300)
        worker_log = (args.out / "gpu-worker.log").open("w")
        worker = subprocess.Popen(
            [prefect, "worker", "start", "--pool", args.pool],
            cwd=ROOT,
            env=env,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        lifecycle = deployment_run(
            steps,
            prefect,
            args.deployment,
            "lifecycle",
            {"params": "params.yaml", "experiment": False},
            args.timeout_s,
            progress,
        )
        wall = seconds_between(lifecycle["start_time"], lifecycle["end_time"])
        log.emit(
            "gpu_lifecycle_wall_s",
            wall,
            "s",
            f"flow run {lifecycle['id']} of {args.deployment} (experiment=false): the whole lifecycle",
        )
        progress()  # the last copy, and the base figure if no poll saw its summary
        # The one-seed comparison comes back even if the seeds do not finish.
        keep(cfg.evaluate.report_dir, args.out / "lifecycle-report")
        # The other two doors before the seeds, which may outlast a lease: they find the lifecycle done.
        doors(steps, args.out / "doors-lifecycle.json")
        deployment_run(
            steps,
            prefect,
            args.deployment,
            "experiment",
            {"params": "params.yaml", "experiment": True},
            args.timeout_s,
            progress,
        )
    finally:
        if worker is not None:
            worker.terminate()
        steps.run("stop", ["bash", "infra/stop.sh"], check=False)
        progress()  # what the seeds finished after the last poll
        keep(cfg.evaluate.report_dir, args.out / "lifecycle-report")
        keep(cfg.lifecycle.results_dir, args.out / "results")

    doors(steps, args.out / "doors.json")


if __name__ == "__main__":
    main()
