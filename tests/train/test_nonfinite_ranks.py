"""A non-finite loss on one rank of two (gloo, DDP): every rank still runs its backward, so the
gradient all-reduce inside it completes, and the NaN reaches both ranks' gradients, so both skip the
step (MidTrainer.apply_gradients). Before, the rank with the NaN skipped its backward and the other
waited in the all-reduce until the process group timed out (this test then fails on the timeout)."""

from __future__ import annotations

import datetime
import math
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from refine_tasks.config import RefineConfig
from refine_tasks.models.presets import build_model
from refine_tasks.train.step import StepOptions, ntp_backward

VOCAB = 97


def _rank(rank: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=20))
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(build_model("tiny", vocab_size=VOCAB).double())
        if rank == 1:  # after DDP's broadcast of the weights: only this rank's loss is NaN
            with torch.no_grad():
                model.module.lm_head.weight[0, 0] = float("nan")
        ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(rank))
        stats = ntp_backward(model, ids, StepOptions(RefineConfig(), backward_nonfinite=True))
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        results[rank] = (stats.finite, len(grads), math.isfinite(norm))
    except Exception as e:  # the other rank's timeout names the all-reduce that never completed
        results[rank] = repr(e)
    finally:
        dist.destroy_process_group()


def test_a_nan_on_one_rank_reaches_both_ranks_gradients_and_nobody_waits() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(port, results), nprocs=2, join=True)
        got = dict(results)
    params = sum(1 for _ in build_model("tiny", vocab_size=VOCAB).parameters())
    assert got[0] == (True, params, False), got  # finite loss here, but the averaged gradient is NaN
    assert got[1] == (False, params, False), got  # the NaN rank ran its backward too
