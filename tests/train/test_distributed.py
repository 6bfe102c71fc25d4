"""Data parallelism under torchrun, run for real on CPU (gloo): DDP and FSDP2 equal one process on
the same global batch (float64), a killed rank resumes on the uninterrupted curve, and checkpoints
move between world sizes (refine_tasks.train.distributed, refine_tasks.pipeline.launch)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from refine_tasks.pipeline.launch import (
    NNODES_ENV,
    NPROC_ENV,
    RDZV_ENDPOINT_ENV,
    RDZV_ID_ENV,
    TRAIN,
    LaunchError,
    launch_training,
    nproc_per_node,
    torchrun_command,
)
from refine_tasks.pipeline.lifecycle import run_stage
from refine_tasks.train.trainer import MidTrainer

# tiny model, float64, 3 steps of 64-token sequences; the constant schedule lets a run stop and
# continue with another max_steps on the same learning rates
SETTINGS = [
    "corpus.limit=8",
    "train.seq_len=64",
    "train.dtype=float64",
    "train.schedule=constant",
    "train.warmup_steps=1",
    "train.max_steps=3",
    "train.checkpoint_every=1",
    "train.lr=0.003",
]
REFINE = ["refine.coef=0.5", "positions.n_chunks=2", "positions.margin=4", "refine.rollout_len=3"]
NTP = ["refine.coef=0"]


def curve(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    ckpt = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    return load_file(str(ckpt / "model.safetensors"))


def assert_same_run(got: Path, want: Path, steps: int = 3) -> None:
    a, b = curve(got), curve(want)
    assert [x["step"] for x in a] == [x["step"] for x in b] == list(range(1, steps + 1))
    for key in ("loss", "ntp", "policy", "grad_norm", "tokens"):
        assert [x[key] for x in a] == pytest.approx([x[key] for x in b], rel=1e-9, abs=1e-12), key
    wa, wb = final_weights(got), final_weights(want)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.fixture
def corpus(make_config):
    """A config factory over one ingested corpus of long documents."""
    run_stage("corpus", make_config(*SETTINGS))
    return lambda *more: make_config(*SETTINGS, *more)


def test_torchrun_command_and_process_count(make_config, monkeypatch: pytest.MonkeyPatch) -> None:
    cmd = torchrun_command("midtrain_refine", Path("/tmp/p.yaml"), 4, env={})
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert cmd[5:] == ["-m", "refine_tasks.pipeline.torchrun_main", "midtrain_refine", "/tmp/p.yaml"]
    assert torchrun_command(TRAIN, Path("p.yaml"), 2, resume=True, env={})[-3:] == [
        TRAIN,
        "p.yaml",
        "--resume",
    ]
    cfg = make_config("lifecycle.nproc_per_node=2")
    monkeypatch.delenv(NPROC_ENV, raising=False)
    assert nproc_per_node(make_config()) == 1 and nproc_per_node(cfg) == 2
    monkeypatch.setenv(NPROC_ENV, "8")  # set by the GPU work pool's job template
    assert nproc_per_node(cfg) == 8


def test_multi_node_rendezvous_is_c10d_at_the_first_node() -> None:
    env = {NNODES_ENV: "2", RDZV_ENDPOINT_ENV: "node-0:29400", RDZV_ID_ENV: "flow-run-7"}
    cmd = torchrun_command(TRAIN, Path("p.yaml"), 8, env=env)
    assert cmd[3:8] == [
        "--nnodes=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=node-0:29400",
        "--rdzv-id=flow-run-7",
        "--nproc_per_node=8",
    ]
    assert "--standalone" not in cmd
    with pytest.raises(LaunchError, match="REFINE_NNODES=2 needs REFINE_RDZV_ID"):
        torchrun_command(TRAIN, Path("p.yaml"), 8, env={NNODES_ENV: "2", RDZV_ENDPOINT_ENV: "node-0:29400"})


@pytest.mark.parametrize(
    "parallel, objective",
    [
        ("ddp", "ntp"),
        pytest.param("fsdp", "ntp", marks=pytest.mark.slow),
        pytest.param("ddp", "refine", marks=pytest.mark.slow),
        pytest.param("fsdp", "refine", marks=pytest.mark.slow),
    ],
)
def test_two_ranks_train_as_one_process_on_the_same_global_batch(
    corpus, tmp_path: Path, parallel: str, objective: str
) -> None:
    """2 ranks x batch 2 against 1 process x batch 4 (NTP) or 1 process x 2 micro-batches of 2
    (ReFINE: the random draws follow the micro-batch, see MidTrainer): the same losses, gradient
    norms and parameters after 3 steps, in float64. Without gradient averaging (each rank stepping
    on its own gradients) this fails at step 2. (10-20 s each on 2 CPU cores: one torchrun launch.)"""
    extra = NTP if objective == "ntp" else REFINE
    one_shape = ["train.batch_size=4"] if objective == "ntp" else ["train.batch_size=2", "train.grad_accum=2"]
    one = corpus(*extra, *one_shape, f"train.out_dir={tmp_path / 'one'}")
    MidTrainer(one).run()
    two = corpus(
        *extra, "train.batch_size=2", f"train.parallel={parallel}", f"train.out_dir={tmp_path / 'two'}"
    )
    launch_training(TRAIN, two, 2)
    assert_same_run(tmp_path / "two", tmp_path / "one")


def latest_step(out: Path) -> int:
    latest = out / "checkpoints" / "latest"
    return int(latest.read_text().strip().split("-")[1]) if latest.exists() else 0


def kill_a_rank_after(launcher: subprocess.Popen, out: Path, step: int) -> int:
    """kill -9 one rank of the torchrun `launcher` once checkpoint `step` is in place; returns the
    latest checkpoint's step after torchrun has torn the other rank down."""
    while latest_step(out) < step:
        assert launcher.poll() is None, "the run ended before a rank could be killed"
        time.sleep(0.02)
    ranks = [
        p
        for p in psutil.Process(launcher.pid).children(recursive=True)
        if "torchrun_main" in " ".join(p.cmdline())
    ]
    assert len(ranks) == 2
    max(ranks, key=lambda p: p.pid).kill()  # SIGKILL
    assert launcher.wait(timeout=120) != 0
    return latest_step(out)


@pytest.mark.slow
def test_killed_rank_resumes_on_the_uninterrupted_curve_across_world_sizes(corpus, tmp_path: Path) -> None:
    """ReFINE under FSDP2: 2 steps in 1 process, resumed by 2 ranks (1 -> 2) and one of them killed
    with SIGKILL mid-run, resumed by 2 ranks (the same world size), then by 1 process (2 -> 1): the
    metrics and final weights of one uninterrupted process. (About 40 s on 2 CPU cores: two
    launches of two ranks.)"""
    shape = ["train.batch_size=2", "train.grad_accum=2"]  # one process; the ranks take grad_accum=1
    out = tmp_path / "run"

    def cfg(steps: int, *more: str):
        return corpus(
            *REFINE, *more, "train.parallel=fsdp", f"train.max_steps={steps}", f"train.out_dir={out}"
        )

    MidTrainer(cfg(2, *shape)).run()
    ranks = cfg(40, "train.batch_size=2", "lifecycle.nproc_per_node=2")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(ranks.model_dump(mode="json")))
    launcher = subprocess.Popen(torchrun_command(TRAIN, params, 2, resume=True, env={}))
    killed_at = kill_a_rank_after(launcher, out, 3)
    assert 3 <= killed_at < 40
    launch_training(TRAIN, cfg(killed_at + 2, "train.batch_size=2"), 2, resume=True)
    assert latest_step(out) == killed_at + 2
    MidTrainer(cfg(killed_at + 4, *shape), resume=True).run()
    reference = tmp_path / "reference"
    MidTrainer(
        corpus(*REFINE, *shape, f"train.max_steps={killed_at + 4}", f"train.out_dir={reference}")
    ).run()
    assert_same_run(out, reference, killed_at + 4)


def test_ranks_start_with_nvlink_multicast_off(make_config, monkeypatch: pytest.MonkeyPatch) -> None:
    """launch_training gives torchrun NCCL_NVLS_ENABLE=0 unless the environment chose already, and
    names the stage and status when torchrun fails."""
    seen = []

    def fake_run(cmd, env):
        seen.append((cmd, env))
        return subprocess.CompletedProcess(cmd, 3)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.delenv("NCCL_NVLS_ENABLE", raising=False)
    with pytest.raises(LaunchError, match="midtrain_refine: torchrun with 2 processes exited with status 3"):
        launch_training("midtrain_refine", make_config(), 2)
    assert seen[0][1]["NCCL_NVLS_ENABLE"] == "0" and seen[0][1][NPROC_ENV] == "2"
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "1")
    with pytest.raises(LaunchError):
        launch_training(TRAIN, make_config(), 2, resume=True)
    assert seen[1][1]["NCCL_NVLS_ENABLE"] == "1" and seen[1][0][-1] == "--resume"
