"""Training: the mid-training loop (`trainer`), one ReFINE micro-step (`step`), rollout positions
from the cache or the model (`position_pass`), training checkpoints, the starting weights, and
data parallelism under torchrun (`distributed`)."""
