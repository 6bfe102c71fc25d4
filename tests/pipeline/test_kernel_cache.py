"""The GPU kernel cache: one folder per GPU model and Triton version, the environment that points
Triton and Inductor at it, the first-compile message, and the commands that activate it. A GPU is
mocked (its name); nothing compiles here."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest
import torch
import triton
from rich.console import Console
from typer.testing import CliRunner

from refine_tasks.corpus import CorpusError
from refine_tasks.evaluate import EvalError, runner
from refine_tasks.evaluate.runner import GenerationWarmup
from refine_tasks.pipeline import cli, kernel_cache, lifecycle
from refine_tasks.pipeline.kernel_cache import activate, machine_folder, slug
from refine_tasks.train import starting_model, warmup
from refine_tasks.train.warmup import TrainingWarmup

ENV = ("TRITON_CACHE_DIR", "TRITON_CACHE_AUTOTUNING", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_MANAGER")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The variables `activate` sets, unset now and restored after the test."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def h200(clean_env: pytest.MonkeyPatch) -> str:
    """A machine whose CUDA device is an 'NVIDIA H200' (torch.cuda's answers mocked)."""
    clean_env.setattr(torch.cuda, "is_available", lambda: True)
    clean_env.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    return f"nvidia-h200-triton{triton.__version__}"


def test_folder_names() -> None:
    assert slug("NVIDIA H200") == "nvidia-h200"
    assert slug("NVIDIA GeForce RTX 4090 ") == "nvidia-geforce-rtx-4090"
    assert machine_folder("NVIDIA H100 80GB HBM3", "3.6.0") == "nvidia-h100-80gb-hbm3-triton3.6.0"


def test_nothing_to_do_without_cuda(make_config, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setattr(torch.cuda, "is_available", lambda: False)
    assert activate(make_config()) is None
    assert not any(name in kernel_cache.os.environ for name in ENV)


def test_activate_points_triton_and_inductor_at_the_gpus_folder(
    make_config, h200: str, tmp_path: Path
) -> None:
    cfg = make_config(f"paths.kernel_cache={tmp_path / 'kernels'}")
    cache = activate(cfg, tracked=True)
    root = tmp_path / "kernels" / h200
    env = kernel_cache.os.environ
    assert cache.root == root and cache.gpu == "NVIDIA H200"
    assert env["TRITON_CACHE_DIR"] == str(root / "triton") and env["TORCHINDUCTOR_CACHE_DIR"] == str(
        root / "inductor"
    )
    assert env["TRITON_CACHE_AUTOTUNING"] == "1" and env["TRITON_CACHE_MANAGER"] == kernel_cache.MANAGER
    assert cache.is_cold() and cache.files() == 0
    assert cache.cold_message() == (
        f"compiling GPU kernels for NVIDIA H200 (first run on this GPU; later runs reuse {root})"
    )
    (root / "triton" / "abc").mkdir(parents=True)
    (root / "triton" / "abc" / "kernel.cubin").write_bytes(b"\0")
    assert not cache.is_cold() and cache.files() == 1
    assert activate(cfg, tracked=True) == cache  # idempotent


def test_only_the_kernels_stage_writes_the_tracked_folder(make_config, h200: str, tmp_path: Path) -> None:
    """Later processes compile into the work folder, which first gets the tracked folder's files
    (hard links); the next `kernels` run takes the work folder's new files in. The tracked folder,
    DVC's output, is unchanged by anything but that stage."""
    cfg = make_config(f"paths.kernel_cache={tmp_path / 'kernels'}")
    env = kernel_cache.os.environ
    stage = activate(cfg, tracked=True)
    warmed = Path(env["TRITON_CACHE_DIR"]) / "k1" / "a.cubin"
    warmed.parent.mkdir(parents=True)
    warmed.write_bytes(b"warm")
    work = activate(cfg)  # a later stage in the same process: the variables move with it
    assert work.root == tmp_path / "kernels-work" / h200 and work.root != stage.root
    assert env["TRITON_CACHE_DIR"] == str(work.triton_dir) == str(work.root / "triton")
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(work.root / "inductor")
    linked = work.triton_dir / "k1" / "a.cubin"
    assert linked.read_bytes() == b"warm" and linked.stat().st_ino == warmed.stat().st_ino
    later = work.triton_dir / "k2" / "b.cubin"
    later.parent.mkdir(parents=True)
    later.write_bytes(b"later")
    (work.triton_dir / "tmp.pid_1_ab").mkdir()  # a write in progress: never copied
    (work.triton_dir / "tmp.pid_1_ab" / "c.cubin").write_bytes(b"half")
    assert stage.files() == 1  # what DVC tracks did not change
    again = activate(cfg, tracked=True)  # the next `kernels` run
    assert again == stage and env["TRITON_CACHE_DIR"] == str(stage.triton_dir)
    assert (stage.triton_dir / "k2" / "b.cubin").read_bytes() == b"later"
    assert stage.files() == 2 and not (stage.triton_dir / "tmp.pid_1_ab").exists()
    assert kernel_cache.link_missing(stage.root, work.root) == 0  # both hold everything now


def test_link_missing_copies_where_links_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a" / "d").mkdir(parents=True)
    (tmp_path / "a" / "d" / "f.json").write_text("{}")

    def no_links(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(kernel_cache.os, "link", no_links)
    assert kernel_cache.link_missing(tmp_path / "a", tmp_path / "b") == 1
    assert (tmp_path / "b" / "d" / "f.json").read_text() == "{}"
    assert [p.name for p in (tmp_path / "b" / "d").iterdir()] == ["f.json"]  # no partial file left
    assert kernel_cache.link_missing(tmp_path / "missing", tmp_path / "b") == 0


def test_a_users_own_settings_stay(make_config, h200: str, tmp_path: Path) -> None:
    h200_env = kernel_cache.os.environ
    own = tmp_path / "mine"
    for name, value in (("TRITON_CACHE_DIR", str(own)), ("TRITON_CACHE_AUTOTUNING", "0")):
        h200_env[name] = value
    cache = activate(make_config(f"paths.kernel_cache={tmp_path / 'kernels'}"))
    assert h200_env["TRITON_CACHE_DIR"] == str(own) and h200_env["TRITON_CACHE_AUTOTUNING"] == "0"
    assert cache.triton_dir == own and cache.kept_in == own


def test_torchs_own_default_is_not_taken_for_the_users(make_config, h200: str, tmp_path: Path) -> None:
    """Importing torch._dynamo writes /tmp/torchinductor_<user> into TORCHINDUCTOR_CACHE_DIR (torch's
    `cache_dir()`), and Inductor's autotuner its triton/<device> folder into TRITON_CACHE_DIR. Taken
    for a user's setting, the work folder stayed empty and every later process compiled again."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    env = kernel_cache.os.environ
    assert cache_dir() == os.path.abspath(default_cache_dir()) == env["TORCHINDUCTOR_CACHE_DIR"]
    env["TRITON_CACHE_DIR"] = os.path.join(default_cache_dir(), "triton", "0")
    cfg = make_config(f"paths.kernel_cache={tmp_path / 'kernels'}")
    stage = activate(cfg, tracked=True)  # the `kernels` stage
    assert stage.inductor_dir == tmp_path / "kernels" / h200 / "inductor"
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(stage.inductor_dir)
    warmed = stage.triton_dir / "k1" / "a.cubin"
    warmed.parent.mkdir(parents=True)
    warmed.write_bytes(b"warm")
    work = activate(cfg)  # a later process: the tracked files are linked into its folder
    assert (work.triton_dir / "k1" / "a.cubin").read_bytes() == b"warm" and not work.is_cold()
    assert env["TRITON_CACHE_DIR"] == str(work.triton_dir) and work.kept_in == work.root
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "mine")  # a user's own choice still stays
    assert activate(cfg).inductor_dir == tmp_path / "mine"


def test_the_installed_triton_keeps_autotuning_results_when_asked(clean_env: pytest.MonkeyPatch) -> None:
    """What TRITON_CACHE_AUTOTUNING does in this Triton: autotuners made while it is set write and
    read their results in TRITON_CACHE_DIR (Autotuner.cache_results, read when the kernel is made)."""
    clean_env.delenv("TRITON_INTERPRET", raising=False)

    def make():
        @triton.autotune(configs=[triton.Config({}, num_warps=w) for w in (2, 4)], key=["n"])
        @triton.jit
        def kernel(x, n):
            pass

        return kernel

    assert not make().cache_results
    clean_env.setenv("TRITON_CACHE_AUTOTUNING", "1")
    assert make().cache_results


def test_a_moved_cache_still_finds_its_compiled_kernels(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Triton's own manager loses a kernel's files once the folder moves (its group file holds
    absolute paths: every kernel would compile again after `dvc pull` elsewhere); ours finds them."""
    from triton.runtime.cache import FileCacheManager

    clean_env.setenv("TRITON_CACHE_DIR", str(tmp_path / "node-a"))
    made = kernel_cache.RelocatableCacheManager("k1")
    paths = {name: made.put(b"data " + name.encode(), name) for name in ("kernel.cubin", "kernel.json")}
    made.put_group("kernel.json", paths)
    assert made.get_group("kernel.json") == paths
    (tmp_path / "node-a").rename(tmp_path / "node-b")
    clean_env.setenv("TRITON_CACHE_DIR", str(tmp_path / "node-b"))
    assert FileCacheManager("k1").get_group("kernel.json") == {}  # the problem
    moved = kernel_cache.RelocatableCacheManager("k1").get_group("kernel.json")
    assert moved == {name: str(tmp_path / "node-b" / "k1" / name) for name in paths}
    assert Path(moved["kernel.cubin"]).read_bytes() == b"data kernel.cubin"


def test_prepare_device_announces_a_first_compile(
    make_config, h200: str, tmp_path: Path, monkeypatch
) -> None:
    out = Console(file=io.StringIO(), width=300)
    monkeypatch.setattr(cli, "console", out)
    cfg = make_config(f"paths.kernel_cache={tmp_path / 'kernels'}", "train.device=cuda")
    cli.prepare_device(cfg, "train.device")
    assert out.file.getvalue() == (
        f"compiling GPU kernels for NVIDIA H200 (first run on this GPU; later runs reuse "
        f"{tmp_path / 'kernels-work' / h200})\n"
    )
    (tmp_path / "kernels" / h200 / "triton").mkdir(parents=True)  # the tracked folder: linked in
    (tmp_path / "kernels" / h200 / "triton" / "k.json").write_text("{}")
    cli.prepare_device(cfg, "train.device")  # warm: nothing to say
    cli.prepare_device(make_config("train.device=cpu"), "train.device")  # CPU: nothing compiles
    assert out.file.getvalue().count("compiling") == 1


def test_run_stage_activates_the_cache_before_a_model_stage(
    make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(
        lifecycle,
        "activate_kernel_cache",
        lambda cfg, tracked: calls.append("tracked" if tracked else "activated"),
    )
    with pytest.raises(lifecycle.LifecycleError, match="no checkpoint of model 'base'"):
        lifecycle.run_stage("eval_qa@base", make_config())  # its configuration fails first: nothing runs
    assert calls == []
    with pytest.raises(CorpusError):  # the base stage starts, then finds no corpus
        lifecycle.run_stage("base", make_config())
    assert calls == ["activated"]
    with pytest.raises(EvalError):  # runs no model: nothing activated, then finds no scores
        lifecycle.run_stage("report", make_config())
    assert calls == ["activated"]
    lifecycle.run_stage("kernels", make_config())  # the one stage that writes DVC's folder
    assert calls == ["activated", "tracked", "tracked"]  # run_stage's, then the stage's own


def _invoke(*args: str):
    return CliRunner().invoke(
        cli.app, [args[0], "-p", "/dev/null", *(a for s in args[1:] for a in ("--set", s))]
    )


def test_warmup_on_a_cpu_has_nothing_to_compile(
    make_config, clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setattr(torch.cuda, "is_available", lambda: False)
    result = _invoke("warmup", f"paths.kernel_cache={tmp_path / 'kernels'}")
    assert result.exit_code == 0, result.output
    assert "nothing to compile: train.device and evaluate.device are no CUDA device" in " ".join(
        result.output.split()
    )
    assert (tmp_path / "kernels").is_dir()  # DVC's output exists on any machine


def test_warmup_reports_the_files_it_added(make_config, h200: str, tmp_path: Path, monkeypatch) -> None:
    """On a mocked H200: both parts run (faked: they write three files into Triton's cache)."""

    def fake_training(cfg, model) -> TrainingWarmup:
        compiled = Path(kernel_cache.os.environ["TRITON_CACHE_DIR"]) / "h"
        compiled.mkdir(parents=True)
        for name in ("k.cubin", "k.json", "k.autotune.json"):
            (compiled / name).write_text("x")
        return TrainingWarmup((2, 4096), "fused", {"ntp": 8.3, "refine": 8.4})

    monkeypatch.setattr(starting_model, "make_model", lambda cfg, device: "a model")
    monkeypatch.setattr(warmup, "warm_training", fake_training)
    monkeypatch.setattr(runner, "warm_generation", lambda cfg, model, tok: GenerationWarmup([1, 2], 2, 3))
    sets = [f"paths.kernel_cache={tmp_path / 'kernels'}", "train.device=cuda", "evaluate.device=cuda"]
    result = _invoke("warmup", f"paths.tokenizer_dir={make_config().paths.tokenizer_dir}", *sets)
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines()]
    assert ["files", "added", "to", "the", "cache", "3"] in lines
    assert ["training", "micro-steps", "NTP,", "ReFINE", "(fused)", "on", "[2,", "4096]"] in lines
    assert ["prefill", "lengths", "1,", "2"] in lines
    output = " ".join(result.output.split())  # rich wraps long lines
    assert (
        f"compiling GPU kernels for NVIDIA H200 (first run on this GPU; later runs reuse {tmp_path / 'kernels' / h200})"
        in output
    )
    assert (tmp_path / "kernels" / "README.txt").is_file()


def test_device_errors_are_one_red_line(make_config, clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setattr(torch.cuda, "is_available", lambda: False)
    tokenizer = f"paths.tokenizer_dir={make_config().paths.tokenizer_dir}"
    for command, field in (
        ("train", "train.device=cuda"),
        ("evaluate", "evaluate.device=cuda"),
        ("warmup", "train.device=cuda"),
    ):
        result = _invoke(command, tokenizer, f"paths.catalog={tmp_path / 'c.duckdb'}", field)
        assert result.exit_code == 2, (command, result.output)
        assert "no CUDA device here" in result.output and "Traceback" not in result.output, command
    result = _invoke("train", "train.device=gpu")
    assert result.exit_code == 2 and "train.device = 'gpu'" in result.output
    result = CliRunner().invoke(cli.app, ["stage", "nope", "-p", "/dev/null"])
    assert result.exit_code == 2 and "stage 'nope': unknown" in result.output


def test_other_gpu_processes_are_nvidia_smis_apps_but_this_one() -> None:
    def smi(command, **kwargs):
        assert command[0] == "nvidia-smi"
        rows = f"{os.getpid()}, python\n4242, python3 benchmarks/gpu_refine_step.py\n\n"
        return subprocess.CompletedProcess(command, 0, stdout=rows)

    assert kernel_cache.other_gpu_processes(smi) == ["4242, python3 benchmarks/gpu_refine_step.py"]
    failed = lambda command, **kwargs: subprocess.CompletedProcess(command, 9, stdout="")  # noqa: E731

    def missing(command, **kwargs):
        raise FileNotFoundError(command[0])

    assert kernel_cache.other_gpu_processes(failed) == [] and kernel_cache.other_gpu_processes(missing) == []


def test_a_first_compile_beside_other_gpu_processes_is_warned_of(
    make_config, h200: str, tmp_path: Path, monkeypatch
) -> None:
    out = Console(file=io.StringIO(), width=400)
    monkeypatch.setattr(cli, "console", out)
    monkeypatch.setattr(kernel_cache, "other_gpu_processes", lambda: ["4242, python3 bench.py"])
    cfg = make_config(f"paths.kernel_cache={tmp_path / 'kernels'}", "train.device=cuda")
    cli.prepare_device(cfg, "train.device")
    lines = out.file.getvalue().splitlines()
    assert lines[0].startswith("compiling GPU kernels for NVIDIA H200")
    assert lines[1] == (
        f"1 other process(es) use this GPU (4242, python3 bench.py): the autotuner times kernels there "
        f"and {tmp_path / 'kernels-work' / h200} keeps its choices for good; compile on an idle GPU "
        "(`refine warmup`), or delete that folder to tune again"
    )
