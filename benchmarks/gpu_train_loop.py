"""`refine train` as a user meets it on a GPU: the first step cold and warm, and the loop's step ratio.

Runs the product's own command (`refine train`, a subprocess each time, the params file given)
on a prepared data folder (tokenizer, corpus, catalog; see --data) and measures:

  gpu_cold_first_step_s      command start -> the first finished training step, with an empty
                             kernel cache (a fresh machine: nothing compiled, nothing tuned)
  gpu_warm_first_step_s      the same in a new process once the cache is restored the way a user
                             restores it (`dvc pull` / a copy: the folder at another path), after
                             the lifecycle's positions stage (`refine positions`, timed apart)
  gpu_train_refine_over_ntp  median step time of the ReFINE loop over the NTP loop (refine.coef=0),
                             the same settings otherwise, steps after the first few

    python benchmarks/gpu_train_loop.py --out DIR --data DIR --params params-gpu-small.yaml

A step is finished when its line reaches the run's metrics.jsonl. Each run's output is kept
under --out (logs, metrics). --runs picks which of cold, warm, ntp run (in that order).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.record import FigureLog  # noqa: E402

SKIP_STEPS = 5  # steps left out of the medians: compiling, autotuning, allocator warm-up


def refine_command(
    verb: str, params: Path, data: Path, cache: Path, out_dir: Path, steps: int, extra: list[str]
) -> list[str]:
    settings = [
        f"paths.data_dir={data}",
        f"paths.corpus_dir={data / 'corpus'}",
        f"paths.tokenizer_dir={data / 'tokenizer'}",
        f"paths.catalog={data / 'cache' / 'refine.duckdb'}",
        f"paths.kernel_cache={cache}",
        f"train.out_dir={out_dir}",
        f"train.max_steps={steps}",
        f"train.checkpoint_every={steps}",
        *extra,
    ]
    cli = "from refine_tasks.pipeline.cli import app; app()"  # `refine`, without an installed script
    command = [sys.executable, "-c", cli, verb, "--params", str(params)]
    for item in settings:
        command += ["--set", item]
    return command


def run_train(name: str, command: list[str], out_dir: Path, log_dir: Path, limit_s: float) -> dict:
    """Run one `refine train`; returns the seconds to its first metrics line and every step_s."""
    metrics = out_dir / "metrics.jsonl"
    log = (log_dir / f"{name}.log").open("w")
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    first = None
    while process.poll() is None and time.perf_counter() - began < limit_s:
        if first is None and metrics.is_file() and metrics.read_text().strip():
            first = time.perf_counter() - began
            print(f"[{name}] first step finished after {first:.1f} s", flush=True)
        time.sleep(0.2)
    if process.poll() is None:
        process.kill()
    process.wait()
    if first is None and metrics.is_file() and metrics.read_text().strip():
        first = time.perf_counter() - began  # finished between two polls, right at the end
    lines = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.is_file() else []
    print(
        f"[{name}] exit {process.returncode}, {len(lines)} steps, {time.perf_counter() - began:.1f} s",
        flush=True,
    )
    return {"first_s": first, "step_s": [x["step_s"] for x in lines], "status": process.returncode}


def restore(archive: Path | None, cold: Path, into: Path) -> None:
    """The warm runs' cache at another path: `archive` unpacked (its top folder dropped), else a copy
    of the cold run's folder."""
    into.parent.mkdir(parents=True, exist_ok=True)
    if archive is not None:
        into.mkdir()
        subprocess.run(["tar", "-xJf", str(archive), "-C", str(into), "--strip-components=1"], check=True)
    elif cold.exists():
        shutil.copytree(cold, into)
    else:
        into.mkdir()


def files_in(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="tokenizer/, corpus/, cache/refine.duckdb")
    parser.add_argument("--params", type=Path, default=Path("params-gpu-small.yaml"))
    parser.add_argument("--runs", default="cold,warm,ntp")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--limit-s", type=float, default=300.0, help="per run but the cold one")
    parser.add_argument(
        "--cold-limit-s", type=float, default=1200.0, help="the cold run (no step in 456 s here)"
    )
    parser.add_argument(
        "--restore",
        type=Path,
        help="a kernel cache archive (tar of data/cache/kernels, as `dvc push` stored it) that the warm "
        "runs restore; default: a copy of the cold run's cache, valid once that run finished a step",
    )
    parser.add_argument("--cache", type=Path, default=Path("data/cache/kernels"), help="the cold run's cache")
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/gpu_train_loop"), help="run folders and the restored cache"
    )
    parser.add_argument("--set", dest="extra", action="append", default=[], help="more overrides, all runs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import torch  # after argparse: --help stays quick

    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    command_line = "python benchmarks/gpu_train_loop.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows: list[tuple[str, str, str]] = []
    log = FigureLog(card, command_line, args.out / "results.jsonl", args.out / "RESULTS.md", rows)
    runs = args.runs.split(",")
    moved = args.work / "restored_kernels"  # the warm runs read a copy at another path, as after `dvc pull`
    results: dict[str, dict] = {}
    for name in runs:
        cache = args.cache if name == "cold" else moved
        if name != "cold" and not moved.exists():
            restore(args.restore, args.cache, moved)
        extra = list(args.extra) + (["refine.coef=0"] if name == "ntp" else [])
        out_dir = args.work / f"run_{name}"
        shutil.rmtree(out_dir, ignore_errors=True)
        before = files_in(cache)
        if name == "warm":  # the lifecycle's positions stage first: the loop reads cached positions
            positions = refine_command("positions", args.params, args.data, cache, out_dir, args.steps, extra)
            began = time.perf_counter()
            with (args.out / "positions.log").open("w") as f:
                status = subprocess.run(positions, stdout=f, stderr=subprocess.STDOUT).returncode
            print(f"[positions] exit {status}, {time.perf_counter() - began:.1f} s", flush=True)
        command = refine_command("train", args.params, args.data, cache, out_dir, args.steps, extra)
        limit = args.cold_limit_s if name == "cold" else args.limit_s
        results[name] = run_train(name, command, out_dir, args.out, limit)
        print(f"[{name}] kernel cache {before} -> {files_in(cache)} files", flush=True)
    note = f"`refine train --params {args.params}` {' '.join(args.extra)}, {args.steps} steps"
    if results.get("cold", {}).get("first_s") is not None:
        log.emit("gpu_cold_first_step_s", results["cold"]["first_s"], "s", f"{note}; empty kernel cache")
    # A copy of a cold cache that never finished a step holds part of the kernels: no warm figure then.
    complete = args.restore is not None or results.get("cold", {}).get("first_s") is not None
    if results.get("warm", {}).get("first_s") is not None and complete:
        log.emit(
            "gpu_warm_first_step_s",
            results["warm"]["first_s"],
            "s",
            f"{note}; kernel cache copied to a new path",
        )
    refine_steps = (results.get("warm") or results.get("cold") or {}).get("step_s", [])[SKIP_STEPS:]
    ntp_steps = results.get("ntp", {}).get("step_s", [])[SKIP_STEPS:]
    if refine_steps and ntp_steps:
        r, n = statistics.median(refine_steps), statistics.median(ntp_steps)
        log.emit("gpu_train_refine_over_ntp", r / n, "ratio", f"{note}; median step {r:.4f} s over {n:.4f} s")
        log.emit("gpu_train_ntp_step_s", n, "s", note)
    print("\n| metric | value |\n| --- | --- |")
    for metric, value, _ in rows:
        print(f"| {metric} | {value} |")


if __name__ == "__main__":
    main()
