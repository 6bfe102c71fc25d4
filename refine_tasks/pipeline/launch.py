"""Training stages under torchrun: N processes per node when asked for.

A training stage (refine_tasks.pipeline.lifecycle) trains in its own process when N = 1. With N > 1
(lifecycle.nproc_per_node, or REFINE_NPROC_PER_NODE set by the GPU work pool's job template) it
starts `torchrun --standalone --nproc_per_node N -m refine_tasks.pipeline.torchrun_main STAGE PARAMS`;
each of those processes trains as one rank (refine_tasks.train.distributed).
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


class LaunchError(RuntimeError):
    """torchrun failed; the message names the stage and the exit status."""


def nproc_per_node(cfg: PipelineConfig) -> int:
    """Training processes per node: REFINE_NPROC_PER_NODE (a work pool's job setting) wins."""
    return int(os.environ.get(NPROC_ENV) or cfg.lifecycle.nproc_per_node)


def torchrun_command(stage: str, params: Path, nproc: int) -> list[str]:
    """The command line of a training stage under torchrun on one node."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "refine_tasks.pipeline.torchrun_main",
        stage,
        str(params),
    ]


def launch_training(stage: str, cfg: PipelineConfig, nproc: int) -> None:
    """Run lifecycle stage `stage` (a training stage) under torchrun with `nproc` processes."""
    with tempfile.TemporaryDirectory(prefix="refine-launch-") as tmp:
        params = Path(tmp) / "params.yaml"  # the exact configuration, overrides included
        params.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        env = {**os.environ, NPROC_ENV: str(nproc)}
        status = subprocess.run(torchrun_command(stage, params, nproc), env=env).returncode
    if status != 0:
        raise LaunchError(f"{stage}: torchrun with {nproc} processes exited with status {status}")
