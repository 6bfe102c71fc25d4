"""Training under torchrun: N processes per node, on one node or several, when asked for.

Training (a lifecycle training stage, or `refine train`) runs in its own process when one process
is asked for. With N > 1 (lifecycle.nproc_per_node, or REFINE_NPROC_PER_NODE set by the GPU work
pool's job template) it starts
`torchrun ... -m refine_tasks.pipeline.torchrun_main STAGE PARAMS [--resume]`; each of those
processes trains as one rank (refine_tasks.train.distributed).

One node: `--standalone` (a local rendezvous). Several nodes: the job template of every node sets
REFINE_NNODES (node count), REFINE_RDZV_ENDPOINT (host:port of the first node, reachable from the
others) and REFINE_RDZV_ID (one id per job), and torchrun meets there through its c10d rendezvous
(`--rdzv-backend c10d`); ranks are numbered across nodes, global rank 0 writes the run. The
environment of the ranks keeps NCCL_NVLS_ENABLE=0 (NVLink multicast off, as the GPU machines
require) unless it is set already.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from refine_tasks.config import PipelineConfig

NPROC_ENV = "REFINE_NPROC_PER_NODE"
NNODES_ENV = "REFINE_NNODES"
RDZV_ENDPOINT_ENV = "REFINE_RDZV_ENDPOINT"
RDZV_ID_ENV = "REFINE_RDZV_ID"
TRAIN = "train"  # the stage name of `refine train` (train.* as configured, no lifecycle run folder)
RANK_ENV = {"NCCL_NVLS_ENABLE": "0"}  # defaults of the ranks' environment


class LaunchError(RuntimeError):
    """torchrun failed; the message names the stage and the exit status."""


def nproc_per_node(cfg: PipelineConfig) -> int:
    """Training processes per node: REFINE_NPROC_PER_NODE (a work pool's job setting) wins."""
    return int(os.environ.get(NPROC_ENV) or cfg.lifecycle.nproc_per_node)


def rendezvous_args(env: dict[str, str]) -> list[str]:
    """torchrun's rendezvous options: standalone on one node, c10d at the first node on several."""
    nnodes = int(env.get(NNODES_ENV) or 1)
    if nnodes == 1:
        return ["--standalone"]
    missing = [name for name in (RDZV_ENDPOINT_ENV, RDZV_ID_ENV) if not env.get(name)]
    if missing:
        raise LaunchError(
            f"{NNODES_ENV}={nnodes} needs {' and '.join(missing)} (the first node's host:port, one id per "
            "job) in every node's environment: see infra/README.md"
        )
    return [
        f"--nnodes={nnodes}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={env[RDZV_ENDPOINT_ENV]}",
        f"--rdzv-id={env[RDZV_ID_ENV]}",
    ]


def torchrun_command(
    stage: str, params: Path, nproc: int, resume: bool = False, env: dict[str, str] | None = None
) -> list[str]:
    """The command line of training stage `stage` under torchrun (rendezvous from `env`)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *rendezvous_args(dict(os.environ) if env is None else env),
        f"--nproc_per_node={nproc}",
        "-m",
        "refine_tasks.pipeline.torchrun_main",
        stage,
        str(params),
        *(["--resume"] if resume else []),
    ]


def launch_training(stage: str, cfg: PipelineConfig, nproc: int, resume: bool = False) -> None:
    """Run training stage `stage` (a lifecycle stage, or TRAIN) under torchrun with `nproc` processes."""
    env = {**RANK_ENV, **os.environ, NPROC_ENV: str(nproc)}
    with tempfile.TemporaryDirectory(prefix="refine-launch-") as tmp:
        params = Path(tmp) / "params.yaml"  # the exact configuration, overrides included
        params.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        status = subprocess.run(torchrun_command(stage, params, nproc, resume, env), env=env).returncode
    if status != 0:
        raise LaunchError(f"{stage}: torchrun with {nproc} processes exited with status {status}")
