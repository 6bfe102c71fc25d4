"""refine_tasks.pipeline.launch and refine_tasks.train.distributed: training stages under torchrun, run for real on CPU (gloo)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from refine_tasks.pipeline.launch import NPROC_ENV, nproc_per_node, torchrun_command
from refine_tasks.pipeline.lifecycle import final_checkpoint, run_stage
from refine_tasks.store.position_cache import weights_fingerprint


def test_torchrun_command_and_process_count(make_config, monkeypatch: pytest.MonkeyPatch) -> None:
    cmd = torchrun_command("midtrain_refine", Path("/tmp/p.yaml"), 4)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert cmd[5:] == ["-m", "refine_tasks.pipeline.torchrun_main", "midtrain_refine", "/tmp/p.yaml"]
    cfg = make_config("lifecycle.nproc_per_node=2")
    monkeypatch.delenv(NPROC_ENV, raising=False)
    assert nproc_per_node(make_config()) == 1 and nproc_per_node(cfg) == 2
    monkeypatch.setenv(NPROC_ENV, "8")  # set by the GPU work pool's job template
    assert nproc_per_node(cfg) == 8


def weights_of(cfg) -> str:
    from transformers import AutoModelForCausalLM

    return weights_fingerprint(AutoModelForCausalLM.from_pretrained(final_checkpoint(cfg, "base")))


@pytest.mark.slow
def test_two_processes_average_gradients(make_config, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """torchrun with 2 CPU processes: both ranks end on the same weights, which differ from one
    process's (rank 1 reads other batches, so the averaged gradients are not rank 0's alone)."""
    small = ["corpus.limit=8", "lifecycle.base_steps=3", "train.seq_len=128", "train.checkpoint_every=3"]
    single = make_config(*small, f"lifecycle.runs_dir={tmp_path / 'one'}")
    run_stage("corpus", single)
    run_stage("base", single)
    two = make_config(*small, f"lifecycle.runs_dir={tmp_path / 'two'}", "lifecycle.nproc_per_node=2")
    capfd.readouterr()
    result = run_stage("base", two)
    err = capfd.readouterr().err
    ranks = dict(re.findall(r"rank (\d): final weights ([0-9a-f]+)", err))
    assert set(ranks) == {"0", "1"} and ranks["0"] == ranks["1"], err
    assert ranks["0"] == weights_of(two) != weights_of(single)
    assert ("processes", "2") in result.rows and ("steps", "3") in result.rows
    assert (tmp_path / "two" / "base" / "summary.json").is_file()
