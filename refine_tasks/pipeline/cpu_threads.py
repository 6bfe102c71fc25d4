"""CPU threads for a command that runs a model: one for the tiny models on a CPU, torch's default
(one per core) otherwise; an OMP_NUM_THREADS the user set always wins.

Why: the tiny preset (hidden size 64, 2 layers) trained at 1,829-6,125 tokens/s under `make run`,
which sets OMP_NUM_THREADS=1, and at 147-704 tokens/s under Prefect or `refine train` run directly
with torch's default. Its matmuls ([512, 64] x [64, 64]) are smaller than the cost of waking and
joining a thread team per op, and on a busy machine the spinning threads of every op made steps
slower still. From the `small` preset up (hidden size 384) the ops are large enough to share out,
so they keep torch's default. The rule lives here, in the orchestration layer, because it reads
the environment; every entry point that runs a model calls it (the CLI's commands through
`prepare_device`, flows through `lifecycle.run_stage`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from refine_tasks.config import PipelineConfig
from refine_tasks.models.checkpoint import load_config as load_model_config
from refine_tasks.models.presets import PRESETS

ONE_THREAD_MAX_WIDTH = 128  # hidden sizes up to this run on one CPU thread (tiny: 64; small: 384)


def model_width(cfg: PipelineConfig) -> int:
    """The hidden size of the model the run starts from: model.init_from's, else model.preset's."""
    if cfg.model.init_from is not None and (Path(cfg.model.init_from) / "config.json").is_file():
        return load_model_config(cfg.model.init_from).hidden_size
    return PRESETS[cfg.model.preset]["hidden_size"]


def choose_cpu_threads(cfg: PipelineConfig, device_field: str = "train.device") -> int:
    """Set torch's intra-op threads for a model on `device_field` (train.device or evaluate.device)
    by the rule above; returns the number of threads in effect."""
    device = cfg.evaluate.device if device_field == "evaluate.device" else cfg.train.device
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if "OMP_NUM_THREADS" not in os.environ and on_cpu and model_width(cfg) <= ONE_THREAD_MAX_WIDTH:
        torch.set_num_threads(1)
    return torch.get_num_threads()
