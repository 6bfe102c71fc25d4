"""One torchrun process of a training stage: python -m refine_tasks.pipeline.torchrun_main STAGE PARAMS."""

import sys

from refine_tasks.config import load_config
from refine_tasks.pipeline.lifecycle import train_stage

if __name__ == "__main__":
    train_stage(sys.argv[1], load_config(sys.argv[2]))
