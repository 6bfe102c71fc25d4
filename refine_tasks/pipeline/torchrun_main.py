"""One torchrun process: python -m refine_tasks.pipeline.torchrun_main STAGE PARAMS [--resume].

STAGE is a lifecycle training stage (base, midtrain_sft, midtrain_refine) or `train` (what
`refine train` runs: train.* as configured)."""

import sys

from refine_tasks.config import load_config
from refine_tasks.pipeline.launch import TRAIN
from refine_tasks.pipeline.lifecycle import train_stage
from refine_tasks.train.distributed import train_here

if __name__ == "__main__":
    stage, cfg, resume = sys.argv[1], load_config(sys.argv[2]), "--resume" in sys.argv[3:]
    if stage == TRAIN:
        train_here(cfg, None, resume)
    else:
        train_stage(stage, cfg)
