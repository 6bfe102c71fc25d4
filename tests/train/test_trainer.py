"""The mid-training loop: metrics, checkpoints, exact resume after kill -9, bad input, the runs table."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest
import torch
from corpus_helpers import write_corpus
from transformers import AutoModelForCausalLM

import refine_tasks.train.checkpoint as checkpoint_module
import refine_tasks.train.trainer as train_module
from refine_tasks.errors import (
    OutputError,
    RunDirError,
    SequenceTooShort,
    TrainCheckpointError,
    TrainingDiverged,
)
from refine_tasks.train.positions import precompute_positions
from refine_tasks.train.step import StepStats
from refine_tasks.train.trainer import MidTrainer, lr_lambda, train

# A run small enough for seconds on a CPU: 96-token sequences, 2 rollouts of 3 tokens each.
SMALL = [
    "train.seq_len=96",
    "train.max_steps=4",
    "train.checkpoint_every=2",
    "train.warmup_steps=2",
    "positions.n_chunks=2",
    "positions.margin=8",
    "refine.rollout_len=3",
]


@pytest.fixture
def config(make_config, tmp_path):
    write_corpus(tmp_path / "data" / "corpus", [[120, 400, 97], [300, 50, 250]])

    def make(*overrides: str):
        return make_config(*SMALL, f"train.out_dir={tmp_path / 'run'}", *overrides)

    return make


def metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def catalog_rows(cfg, sql: str) -> list[tuple]:
    con = duckdb.connect(str(cfg.paths.catalog), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_a_run_writes_metrics_checkpoints_and_its_runs_row(config):
    cfg = config()
    result = train(cfg)
    lines = metrics(cfg.train.out_dir)
    assert [line["step"] for line in lines] == [1, 2, 3, 4] and result.steps == 4
    for key in ("loss", "ntp", "policy", "clip_frac", "entropy", "tokens_per_s", "grad_norm", "lr"):
        assert all(isinstance(line[key], float) for line in lines), key
    for name in ("cosine", "exact", "hybrid"):
        assert all(f"reward/{name}_mean" in line and f"reward/{name}_std" in line for line in lines)
    assert all(line["tokens"] == 96 + 2 * 3 for line in lines)
    assert lines[0]["lr"] < lines[1]["lr"]  # warm-up, then cosine down
    assert lines[1]["lr"] > lines[3]["lr"]
    assert all(line["loss"] == pytest.approx(line["ntp"] + 0.2 * line["policy"]) for line in lines)

    ckpts = cfg.train.out_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-0000002", "step-0000004"]
    assert (ckpts / "latest").read_text().strip() == "step-0000004"
    assert any((cfg.train.out_dir / "tensorboard").iterdir())
    # The checkpoint is a plain Hugging Face directory holding the trained weights (and the tokenizer).
    loaded = AutoModelForCausalLM.from_pretrained(ckpts / "step-0000004")
    trainer = MidTrainer(cfg, resume=True)
    for (name, a), b in zip(trainer.model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert (ckpts / "step-0000004" / "tokenizer.json").exists()

    [(status, step, last_loss, kind)] = catalog_rows(cfg, "SELECT status, step, last_loss, kind FROM runs")
    assert (status, step, kind) == ("finished", 4, "midtrain") and last_loss == pytest.approx(
        lines[-1]["loss"]
    )


KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from refine_tasks.config import load_config
    from refine_tasks.train.trainer import train

    def die(line):
        if line["step"] == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)

    train(load_config(None, sys.argv[2:]), on_step=die)
    """
)


def test_kill_9_then_resume_continues_the_same_loss_curve(config, tmp_path):
    overrides = ["train.max_steps=8", "train.grad_accum=2", "refine.n_rollouts=2"]
    reference = train(config(*overrides, f"train.out_dir={tmp_path / 'whole'}"))
    cfg = config(*overrides)
    args = [f"{k}={v}" for k, v in _flat(cfg.model_dump(mode="json"))]
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, "7", *args], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [line["step"] for line in metrics(cfg.train.out_dir)] == list(range(1, 8))
    assert (cfg.train.out_dir / "checkpoints" / "latest").read_text().strip() == "step-0000006"

    resume = subprocess.run(
        [
            sys.executable,
            "-c",
            "from refine_tasks.pipeline.cli import app; app()",
            "train",
            "--resume",
            "--params",
            os.devnull,
        ]
        + [a for kv in args for a in ("--set", kv)],
        capture_output=True,
        text=True,
    )
    assert resume.returncode == 0, resume.stdout + resume.stderr
    resumed = metrics(cfg.train.out_dir)
    assert [line["step"] for line in resumed] == list(range(1, 9))  # steps 7.. redone once, not twice
    for a, b in zip(reference.history, resumed, strict=True):
        for key in ("loss", "ntp", "policy", "reward/cosine_mean", "grad_norm", "lr"):
            assert abs(a[key] - b[key]) <= 1e-6 * max(1.0, abs(a[key])), (a["step"], key, a[key], b[key])
    [(status, step)] = catalog_rows(cfg, "SELECT status, step FROM runs WHERE run_id LIKE 'run-%'")
    assert (status, step) == ("finished", 8)


def _flat(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", json.dumps(v)))
    return out


def test_grad_accumulation_equals_the_larger_batch(config, tmp_path):
    """NTP steps (coef 0, float64): two micro-batches of one == one batch of two."""
    base = ["refine.coef=0.0", "train.dtype=float64", "train.max_steps=2"]
    a = MidTrainer(config(*base, "train.batch_size=2", f"train.out_dir={tmp_path / 'a'}"))
    b = MidTrainer(config(*base, "train.grad_accum=2", f"train.out_dir={tmp_path / 'b'}"))
    ra, rb = a.run(), b.run()
    assert [h["loss"] for h in ra.history] == pytest.approx([h["loss"] for h in rb.history], rel=1e-12)
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-12, msg=name)


def poisoned(bad_steps: set[int]):
    """refine_backward that reports a NaN loss (after backpropagating garbage) on the given calls."""
    real = train_module.refine_backward
    calls = {"n": 0}

    def wrapped(model, *args, **kwargs) -> StepStats:
        calls["n"] += 1
        stats = real(model, *args, **kwargs)
        if calls["n"] in bad_steps:
            for p in model.parameters():
                p.grad = torch.full_like(p, float("nan"))
            stats.loss = float("nan")
        return stats

    return wrapped


def test_nan_steps_are_skipped_and_counted(config, monkeypatch):
    monkeypatch.setattr(train_module, "refine_backward", poisoned({2, 3}))
    cfg = config("train.max_bad_steps=3")
    trainer = MidTrainer(cfg)
    before: dict[int, torch.Tensor] = {}
    result = trainer.run(
        on_step=lambda line: before.setdefault(line["step"], trainer.model.lm_head.weight.clone())
    )
    lines = metrics(cfg.train.out_dir)
    assert [line["skipped"] for line in lines] == [False, True, True, False]
    assert result.skipped == 2 and lines[-1]["skipped_total"] == 2
    assert torch.equal(before[1], before[3])  # skipped steps leave the weights alone
    assert not torch.equal(before[3], before[4])


def test_too_many_nan_steps_in_a_row_stop_the_run(config, monkeypatch):
    monkeypatch.setattr(train_module, "refine_backward", poisoned({2, 3}))
    cfg = config("train.max_bad_steps=2")
    with pytest.raises(TrainingDiverged, match=r"2 steps in a row \(up to step 3\).*train.max_bad_steps=2"):
        train(cfg)
    [(status, message)] = catalog_rows(cfg, "SELECT status, message FROM runs")
    assert status == "failed" and "non-finite" in message


def test_short_sequences_are_refused(config):
    with pytest.raises(SequenceTooShort, match=r"sequence length 75 .* = 4 \* \(3 \+ 2 \* 8\) = 76"):
        MidTrainer(config("positions.n_chunks=4", "train.seq_len=75"))


def test_resume_and_fresh_run_guard_the_output_directory(config):
    cfg = config("train.max_steps=2")
    with pytest.raises(RunDirError, match="no checkpoint to resume from"):
        train(cfg, resume=True)
    train(cfg)
    with pytest.raises(RunDirError, match="already holds checkpoints .* pass --resume"):
        train(cfg)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "model.safetensors").write_bytes(b"\0" * 64), "model.safetensors does not match"),
        (
            lambda d: (d / "trainer" / "optimizer.safetensors").unlink(),
            "trainer/optimizer.safetensors missing",
        ),
        (lambda d: (d / "trainer" / "state.json").write_text("{"), "trainer/state.json unreadable"),
    ],
)
def test_corrupt_checkpoint_is_a_clear_error(config, damage, message):
    cfg = config("train.max_steps=2")
    train(cfg)
    damage(cfg.train.out_dir / "checkpoints" / "step-0000002")
    with pytest.raises(
        TrainCheckpointError, match=f"step-0000002 is corrupt: {message}.*train without --resume"
    ):
        train(cfg, resume=True)


def test_precomputed_positions_skip_the_entropy_pass(config, monkeypatch):
    cfg = config("positions.policy=precomputed", "train.max_steps=3")
    report = precompute_positions(cfg)
    assert report.computed == 5 and report.cache_hits == 0  # 120, 400, 97, 300, 250 tokens >= 96
    assert precompute_positions(cfg).cache_hits == 5
    passes = []
    monkeypatch.setattr(MidTrainer, "entropy", lambda self, ids: passes.append(ids) or self.model)
    result = train(cfg)
    assert passes == [] and all(line["cache_hits"] == 1 for line in result.history)
    [(n,)] = catalog_rows(cfg, f"SELECT count(*) FROM positions WHERE checkpoint = '{report.checkpoint}'")
    assert n == 5


def test_positions_in_batches_are_the_positions_one_sequence_at_a_time(config, tmp_path):
    """positions.batch_size sequences share a prefill and a catalog write; what is cached is the
    same as one sequence a pass (entropy in float64 on the CPU, so the batch changes no rounding)."""
    base = ("positions.policy=precomputed", "train.dtype=float64")
    rows = {}
    for batch in (1, 3, 8):
        cfg = config(*base, f"positions.batch_size={batch}", f"paths.catalog={tmp_path / f'b{batch}.duckdb'}")
        progress = []
        report = precompute_positions(cfg, on_progress=progress.append)
        assert report.computed == 5 and sum(progress) == 5
        assert max(progress) == min(batch, 5)  # one progress call per batch
        rows[batch] = catalog_rows(
            cfg,
            "SELECT doc_id, checkpoint, positions, entropy_at, entropy_mean FROM positions ORDER BY doc_id",
        )
    assert len(rows[1]) == 5
    for batch in (3, 8):
        assert [r[:3] for r in rows[batch]] == [r[:3] for r in rows[1]]
        for got, want in zip(rows[batch], rows[1], strict=True):
            assert got[3] == pytest.approx(want[3], rel=1e-9) and got[4] == pytest.approx(want[4], rel=1e-9)


def test_positions_are_written_in_few_catalog_writes_and_kept_when_a_later_batch_fails(
    config, monkeypatch: pytest.MonkeyPatch
):
    """The positions stage writes its rows every FLUSH_ROWS (one transaction; a write per batch cost
    the H200 most of 97 s), and what it computed before a failing batch is in the catalog."""
    import refine_tasks.store.position_cache as cache_module
    import refine_tasks.train.positions as positions_module

    cfg = config("positions.policy=precomputed", "positions.batch_size=1")
    writes = []
    real_put = cache_module.PositionCache.put
    monkeypatch.setattr(
        cache_module.PositionCache, "put", lambda self, rows: writes.append(len(rows)) or real_put(self, rows)
    )
    monkeypatch.setattr(positions_module, "FLUSH_ROWS", 2)
    real_entropy, calls = positions_module.sequence_entropy, []

    def failing_third(model, ids, chunk):
        calls.append(len(ids))
        if len(calls) == 3:
            raise RuntimeError("CUDA error: out of memory")
        return real_entropy(model, ids, chunk)

    monkeypatch.setattr(positions_module, "sequence_entropy", failing_third)
    with pytest.raises(RuntimeError, match="out of memory"):
        precompute_positions(cfg)
    assert writes == [2]  # the two computed rows, in one write (the failing batch's flush is empty)
    [(n,)] = catalog_rows(cfg, "SELECT count(*) FROM positions")
    assert n == 2
    monkeypatch.setattr(positions_module, "sequence_entropy", real_entropy)
    writes.clear()
    report = precompute_positions(cfg)
    assert (report.cache_hits, report.computed) == (2, 3) and writes == [2, 1]


def test_learning_rate_schedule():
    warm = [lr_lambda(s, warmup=4, total=20, schedule="cosine", min_ratio=0.1) for s in range(20)]
    assert warm[:4] == [0.25, 0.5, 0.75, 1.0] and warm[4] == 1.0
    assert all(a >= b for a, b in zip(warm[4:], warm[5:], strict=False))  # cosine: never up again
    assert lr_lambda(20, 4, 20, "cosine", 0.1) == pytest.approx(0.1)  # ends at lr * min_lr_ratio
    assert lr_lambda(12, 4, 20, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way
    assert [lr_lambda(s, 2, 20, "constant", 0.1) for s in (0, 1, 2, 19)] == [0.5, 1.0, 1.0, 1.0]


def test_a_second_run_into_the_same_folder_is_refused(config):
    cfg = config("train.max_steps=2")
    out = cfg.train.out_dir
    first = MidTrainer(cfg)
    with pytest.raises(
        RunDirError, match=rf"run directory {re.escape(str(out))} is locked by PID {os.getpid()}"
    ):
        MidTrainer(cfg)
    first.run()
    assert [line["step"] for line in metrics(out)] == [1, 2]  # one run's lines, not two interleaved
    with pytest.raises(RunDirError, match="no checkpoint to resume from"):
        MidTrainer(config(f"train.out_dir={out}-other"), resume=True)  # a failed start holds no lock...
    MidTrainer(cfg, resume=True)  # ...and neither does a finished run
    MidTrainer(config(f"train.out_dir={out}-other"))


def dead_pid() -> int:
    """The PID of a process that has exited."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(child.stdout)


def test_temporary_checkpoints_of_dead_processes_are_removed_at_start(config):
    """A killed write leaves `step-N.tmp-PID` (a whole model: on a full disk it keeps the disk full)."""
    cfg = config("train.max_steps=2")
    ckpts = cfg.train.out_dir / "checkpoints"
    pid = dead_pid()
    (ckpts / f"step-0000008.tmp-{pid}").mkdir(parents=True)
    (ckpts / f"step-0000008.tmp-{pid}" / "model.safetensors").write_bytes(bytes(4096))
    (ckpts / f"latest.tmp-{pid}").write_text("step-0000008\n")
    running = ckpts / f"step-0000006.tmp-{os.getppid()}"  # a live process's write: not ours to delete
    running.mkdir()
    train(cfg)  # a fresh run
    assert sorted(p.name for p in ckpts.iterdir()) == sorted(["latest", "step-0000002", running.name])
    (ckpts / f"step-0000004.tmp-{pid}").mkdir()
    train(config("train.max_steps=3"), resume=True)
    assert sorted(p.name for p in ckpts.iterdir()) == sorted(
        ["latest", "step-0000002", "step-0000003", running.name]
    )


def test_a_failed_checkpoint_write_leaves_no_temporary_files(config, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_file", disk_full)  # after the model's weights are written
    cfg = config("train.max_steps=2")
    with pytest.raises(OutputError, match="no space left on the device"):
        train(cfg)
    assert list((cfg.train.out_dir / "checkpoints").iterdir()) == []


@pytest.mark.parametrize("coef", [0.2, 0.0])
def test_phase_timing_logs_each_phase_of_a_step(config, coef):
    cfg = config("train.max_steps=2", "train.phase_timing=true", f"refine.coef={coef}")
    train(cfg)
    lines = metrics(Path(cfg.train.out_dir))
    expected = {"data", "optimizer", "loss_forward", "backward"}
    if coef > 0:
        expected |= {"positions", "prefill", "rollouts", "rewards"}
    for line in lines:
        phases = {k.removeprefix("phase/"): v for k, v in line.items() if k.startswith("phase/")}
        assert set(phases) == expected
        assert all(v >= 0 for v in phases.values())
        assert sum(phases.values()) <= line["step_s"]  # parts of the step, counted once each


def test_without_phase_timing_no_phases_are_logged(config):
    cfg = config("train.max_steps=1")
    train(cfg)
    assert not [k for k in metrics(Path(cfg.train.out_dir))[0] if k.startswith("phase/")]
