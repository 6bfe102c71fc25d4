"""The lifecycle from a fresh clone, as a user meets it (issue 7's acceptance), timed:

    git clone <this repo> && make run          (bootstrap + the whole default lifecycle)
    make serve                                  (server, pools, limits, deployments, worker)
    prefect deployment run refine-midtrain/tiny-cpu --watch
    dvc repro                                   (a no-op when the flow left DVC's state clean)
    make stop

The clone gets a `shared` folder beside it (a link to ../shared, as CI lays it) unless --no-shared,
so the QA and LongBench stages run; without it they are skipped with a notice.

    python benchmarks/bench_lifecycle.py [--no-shared] [--keep]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import record

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, str]:
    began = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {proc.returncode}; see {log}")
    return seconds, proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-shared", action="store_true", help="no ../shared beside the clone")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = parser.parse_args()
    top = Path(tempfile.mkdtemp(prefix="refine-lifecycle-"))
    shared = ROOT.parent / "shared"
    if not args.no_shared and shared.is_dir():
        (top / "shared").symlink_to(shared)
    clone = top / "main"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    port = free_port()
    env = {**os.environ, "PREFECT_PORT": str(port), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    env.pop("VIRTUAL_ENV", None)
    logs = top / "logs"
    logs.mkdir()
    load = os.getloadavg()[0]
    try:
        run_s, run_out = timed(["make", "run"], clone, env, logs / "run.log")
        serve_s, _ = timed(["make", "serve"], clone, env, logs / "serve.log")
        prefect = str(clone / ".venv" / "bin" / "prefect")
        deploy = [prefect, "deployment", "run", "refine-midtrain/tiny-cpu", "--watch"]
        deploy_s, deploy_out = timed(deploy, clone, env, logs / "deploy.log")
        repro_s, repro_out = timed(
            [str(clone / ".venv" / "bin" / "dvc"), "repro"], clone, env, logs / "repro.log"
        )
    finally:
        subprocess.run(["make", "stop"], cwd=clone, env=env, capture_output=True)
    reran = len(re.findall(r"Running stage '", repro_out))
    qa = "QA and LongBench run on ../shared/data" if (top / "shared").exists() else "QA and LongBench skipped"
    note = f"fresh clone, tiny preset, CPU, sotu; {qa}; load average {load:.1f} at start"
    command = "python benchmarks/bench_lifecycle.py" + (" --no-shared" if args.no_shared else "")
    record(
        "lifecycle_make_run_fresh_clone_s", round(run_s, 1), "s", "cpu-2core", command, f"{note}; goal < 900"
    )
    record("lifecycle_make_serve_s", round(serve_s, 1), "s", "cpu-2core", command, note)
    record("lifecycle_deployment_tiny_cpu_s", round(deploy_s, 1), "s", "cpu-2core", command,
           f"{note}; after make run (stages up to date)")  # fmt: skip
    record("lifecycle_dvc_repro_after_s", round(repro_s, 1), "s", "cpu-2core", command,
           f"{note}; stages re-run: {reran}")  # fmt: skip
    print(run_out[run_out.rfind("base vs SFT vs ReFINE") :])
    print(f"deployment: {deploy_out.strip().splitlines()[-1]}; dvc repro re-ran {reran} stages")
    if args.keep:
        print(f"clone kept at {clone}")
    else:
        shutil.rmtree(top)


if __name__ == "__main__":
    main()
