"""The lifecycle: its stages, the configuration each one runs with, and running one of them.

Stages, in order (dvc.yaml declares the same names with their deps, params and outs; `refine
stage NAME` runs one, `refine run` and the refine-lifecycle flow run them all):

  tokenizer, corpus                  the tokenizer and the Arrow corpus (+ the catalog's documents)
  kernels                            the GPU kernel cache of the configured shapes (`refine warmup`)
  base                               the base model: NTP from scratch, or lifecycle.base_checkpoint
  positions                          rollout positions under the base weights, cached in the catalog
  midtrain_sft, midtrain_refine      mid-training from the base: refine.coef = 0 (SFT) or as set
  eval_niah@M, eval_qa@M, eval_longbench@M   one benchmark family on model M (base, sft, refine)
  qa_data                            post-training's QA examples (questions >= 200, no test question)
  posttrain@V                        post-training of the ReFINE model: V = sft, nested-sft, nested-refine
  eval_qa_post@V                     RULER QA of post-trained model V (run post-V)
  eval_qa_ttt@O                      RULER QA of the nested-refine model with test-time training,
                                     O = sft (NTP) or refine (run ttt-O)
  report                             the comparison across models, from the evaluation outputs

A stage writes only its own outputs (`stage_outputs`). `run_stage` validates the stage's
configuration, then moves its previous outputs aside (`<output>.aside-<pid>`) and runs it on
fresh ones; if it fails, it removes what the stage had written and puts the previous outputs
back, so no half-written output is left for DVC (or the next stage) to take and the last good
one stays. A stage killed midway leaves its copy aside: the next `run_stage` puts it back first.
The kernel cache only grows (DVC `persist`): its stage runs on the folder as it is.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from refine_tasks.config import PipelineConfig
from refine_tasks.pipeline.kernel_cache import activate as activate_kernel_cache
from refine_tasks.store.catalog import process_alive
from refine_tasks.store.scratch import marked_pid, remove_path

MODELS = ("base", "sft", "refine")
POSTTRAIN_VARIANTS = ("sft", "nested-sft", "nested-refine")
TTT_OBJECTIVES = ("sft", "refine")
TTT_MODEL = "post-nested-refine"  # test-time training adapts the last post-trained model (the paper's rows)
# Every evaluated model in the order of the paper's cumulative rows.
ALL_RUNS = (*MODELS, *(f"post-{v}" for v in POSTTRAIN_VARIANTS), *(f"ttt-{o}" for o in TTT_OBJECTIVES))
EVAL_STAGES = {"eval_niah": "niah", "eval_qa": "ruler_qa", "eval_longbench": "longbench"}
TRAIN_STAGES = {"base": "base", "midtrain_sft": "sft", "midtrain_refine": "refine"}
ASIDE_MARK = ".aside-"  # `<output>.aside-<pid>`: a stage's previous output while it runs
SUMMARY_FILE = "summary.json"  # a training run's final figures (DVC metrics)
CURVE_FILE = "curve.json"  # a training run's per-step losses (DVC plots)
REPORT_METRICS = "metrics.json"  # family averages per model (DVC metrics)
KERNELS_README = (
    "Compiled GPU kernels and their autotuning results, one folder per GPU model and Triton version\n"
    "(<gpu>-triton<version>/triton, /inductor), written by `refine warmup` (the `kernels` stage) only;\n"
    "other commands compile into ../kernels-work, which links these files in. Copy a folder to another\n"
    "node of the same GPU model to skip its compiles.\n"
)

Summary = list[tuple[str, str]]
OnStep = Callable[[dict], None]  # one call per unit of work: a training metrics line, or {"done": n}


class LifecycleError(ValueError):
    """A stage cannot run as asked; the message names the stage, file or field and what to do."""


def stage_names() -> list[str]:
    """Every lifecycle stage in running order (foreach stages as `name@model`)."""
    return [f"{s.name}@{m}" if m else s.name for s in STAGES for m in (s.models or (None,))]


def split_stage(name: str) -> tuple[str, str | None]:
    """'eval_qa@sft' -> ('eval_qa', 'sft'); 'base' -> ('base', None). Unknown names are errors."""
    if name not in stage_names():
        raise LifecycleError(f"stage {name!r}: unknown; stages are {', '.join(stage_names())}")
    stage, _, model = name.partition("@")
    return stage, model or None


def stage_row(name: str) -> tuple[Stage, str | None]:
    """The table's row of stage `name` and its model (foreach stages), or a LifecycleError."""
    stage, model = split_stage(name)
    return next(s for s in STAGES if s.name == stage), model


@dataclass
class StageResult:
    name: str
    rows: Summary
    notice: str | None = None  # why the stage did nothing (e.g. its data path does not exist)
    files: list[Path] = field(default_factory=list)  # report files, for artifacts
    up_to_date: bool = False  # not run: DVC found its outputs up to date (run_tracked)
    # run_stage's own time, loading and saving included: what a stage's `seconds` row leaves out (on
    # the H200, 2026-12-04, the comparison's stages reported 342 s of a 514 s `refine run`)
    wall_s: float | None = None

    def shown_rows(self) -> Summary:
        """The rows, then the wall time where the stage ran."""
        return [*self.rows, *([("wall seconds", f"{self.wall_s:.1f}")] if self.wall_s is not None else [])]


def run_dir(cfg: PipelineConfig, model: str) -> Path:
    return Path(cfg.lifecycle.runs_dir) / model


def final_checkpoint(cfg: PipelineConfig, model: str) -> Path:
    """The last checkpoint of model's training run (what later stages start from or evaluate)."""
    from refine_tasks.models.checkpoint import latest_checkpoint

    root = run_dir(cfg, model)
    ckpt = latest_checkpoint(root / "checkpoints")
    if ckpt is None:
        stage = {v: k for k, v in TRAIN_STAGES.items()}.get(model, f"posttrain@{model.removeprefix('post-')}")
        raise LifecycleError(f"{root}: no checkpoint of model {model!r}; run the `{stage}` stage first")
    return ckpt


def _with(cfg: PipelineConfig, **sections: dict) -> PipelineConfig:
    """A copy of cfg with some fields of some sections replaced, validated like params.yaml."""
    data = cfg.model_dump()
    for section, fields in sections.items():
        data[section].update(fields)
    return PipelineConfig.model_validate(data)


def _base_config(cfg: PipelineConfig, model: str | None) -> PipelineConfig:
    train = {
        "out_dir": run_dir(cfg, "base"),
        "max_steps": cfg.lifecycle.base_steps,
        "lr": cfg.lifecycle.base_lr,
    }
    if cfg.lifecycle.base_batch_size is not None:
        train["batch_size"] = cfg.lifecycle.base_batch_size
    if cfg.lifecycle.base_val_every is not None:
        train["val_every"] = cfg.lifecycle.base_val_every
    if cfg.lifecycle.base_checkpoint_every is not None:
        train["checkpoint_every"] = cfg.lifecycle.base_checkpoint_every
    # The generated retrieval documents (corpus.retrieval_ratio) are base pretraining's alone.
    train["synthetic_docs"] = True
    # Whether it learns to retrieve, and when: the recall probe at every validation point.
    train["val_recall_docs"] = PROBE_DOCS
    return _with(cfg, train=train, refine={"coef": 0.0}, model={"init_from": None})


def _positions_config(cfg: PipelineConfig, model: str | None) -> PipelineConfig:
    return _with(cfg, model={"init_from": str(final_checkpoint(cfg, "base"))})


def _midtrain_config(objective: str) -> Callable[[PipelineConfig, str | None], PipelineConfig]:
    def config(cfg: PipelineConfig, model: str | None) -> PipelineConfig:
        return _with(
            cfg,
            train={"out_dir": run_dir(cfg, objective), "synthetic_docs": False},
            refine={"coef": 0.0 if objective == "sft" else cfg.refine.coef},
            model={"init_from": str(final_checkpoint(cfg, "base"))},
        )

    return config


def _eval_config(family: str) -> Callable[[PipelineConfig, str | None], PipelineConfig]:
    def config(cfg: PipelineConfig, model: str | None) -> PipelineConfig:
        evaluate = {
            "families": [family],
            "run": model,
            "checkpoint": str(final_checkpoint(cfg, str(model))),
            "output_dir": Path(cfg.lifecycle.eval_dir) / family,
        }
        return _with(cfg, evaluate=evaluate)

    return config


def _posttrain_config(cfg: PipelineConfig, variant: str | None) -> PipelineConfig:
    posttrain = {
        "variant": variant,
        "init_from": str(final_checkpoint(cfg, "refine")),
        "out_dir": run_dir(cfg, f"post-{variant}"),
    }
    return _with(cfg, posttrain=posttrain)


def _eval_post_config(cfg: PipelineConfig, variant: str | None) -> PipelineConfig:
    run = f"post-{variant}"
    evaluate = {
        "families": ["ruler_qa"],
        "run": run,
        "checkpoint": str(final_checkpoint(cfg, run)),
        "output_dir": Path(cfg.lifecycle.eval_dir) / "ruler_qa",
    }
    return _with(cfg, evaluate=evaluate, ttt={"objective": "none"})


def _eval_ttt_config(cfg: PipelineConfig, objective: str | None) -> PipelineConfig:
    evaluate = {
        "families": ["ruler_qa"],
        "run": f"ttt-{objective}",
        "checkpoint": str(final_checkpoint(cfg, TTT_MODEL)),
        "output_dir": Path(cfg.lifecycle.eval_dir) / "ruler_qa",
    }
    return _with(cfg, evaluate=evaluate, ttt={"objective": objective})


def _as_given(cfg: PipelineConfig, model: str | None) -> PipelineConfig:
    return cfg


def stage_config(name: str, cfg: PipelineConfig) -> PipelineConfig:
    """The configuration stage `name` runs with: cfg plus the stage's own fields (run directory,
    starting weights, objective, evaluation family and model)."""
    row, model = stage_row(name)
    return row.config(cfg, model)


def stage_outputs(name: str, cfg: PipelineConfig) -> list[Path]:
    """What stage `name` writes (its DVC outs): moved aside while it runs, put back if it fails."""
    row, model = stage_row(name)
    return row.outputs(cfg, model)


def remove_outputs(paths: Iterable[Path]) -> None:
    for path in paths:
        remove_path(path)


def recover_outputs(paths: Iterable[Path]) -> None:
    """Put back the previous outputs that a killed stage left aside (dropping its half-written
    ones); refuse while the process that moved them is still running."""
    for path in paths:
        for aside in path.parent.glob(f"{glob.escape(path.name)}{ASIDE_MARK}*"):
            pid = marked_pid(aside, ASIDE_MARK)
            if pid is not None and process_alive(pid):
                raise LifecycleError(
                    f"{path}: PID {pid} is running a stage that writes it (its previous contents are in "
                    f"{aside}); wait for it to finish, or stop that process"
                )
            remove_outputs([path])
            os.replace(aside, path)


def set_aside(paths: Iterable[Path]) -> list[tuple[Path, Path]]:
    """Move each existing output to `<output>.aside-<pid>` beside it; returns (output, aside) pairs."""
    moved = []
    for path in paths:
        if path.exists() or path.is_symlink():
            aside = path.with_name(f"{path.name}{ASIDE_MARK}{os.getpid()}")
            os.replace(path, aside)
            moved.append((path, aside))
    return moved


def missing_eval_data(family: str, cfg: PipelineConfig) -> str | None:
    """Why `family` cannot be evaluated here (its data path does not exist), or None."""
    ev = cfg.evaluate
    if family == "ruler_qa":
        missing = [str(p) for p in ev.ruler_qa_files if not Path(p).is_file()]
        if missing and len(missing) == len(ev.ruler_qa_files):
            return f"evaluate.ruler_qa_files: {', '.join(missing)} not found"
    if family == "longbench" and not ev.longbench_source.startswith("hf:"):
        if not Path(ev.longbench_source).is_dir():
            return f"evaluate.longbench_source: {ev.longbench_source} not found"
    return None


# --- the stages ---------------------------------------------------------------------------------


def _tokenizer(cfg: PipelineConfig, on_step: OnStep | None) -> StageResult:
    from refine_tasks.corpus import DropLog, corpus_texts
    from refine_tasks.corpus.tokenizer import build_tokenizer

    drops = DropLog()

    def counted(texts: Iterable[str]) -> Iterator[str]:
        for text in texts:
            if on_step is not None:
                on_step({"done": 1})
            yield text

    report = build_tokenizer(cfg.tokenizer, cfg.paths.tokenizer_dir, counted(corpus_texts(cfg, drops)))
    return StageResult("tokenizer", [*report.summary_rows(), ("documents dropped", f"{drops.total:,}")])


def _corpus(cfg: PipelineConfig, on_step: OnStep | None) -> StageResult:
    from refine_tasks.corpus import ingest

    report = ingest(cfg, on_progress=lambda docs, tokens: on_step and on_step({"done": docs}))
    return StageResult("corpus", report.summary_rows())


def _import_base(cfg: PipelineConfig, source: str) -> StageResult:
    """Copy a user's model directory in as the base run's only checkpoint (DVC versions it)."""
    from refine_tasks.models.checkpoint import LATEST

    src = Path(source)
    if not (src / "config.json").is_file():
        raise LifecycleError(f"lifecycle.base_checkpoint = {source!r}: no config.json; not a model directory")
    root = run_dir(cfg, "base") / "checkpoints"
    shutil.copytree(src, root / "step-0000000")
    (root / LATEST).write_text("step-0000000\n")
    summary = {"imported_from": str(src.resolve()), "steps": 0}
    (run_dir(cfg, "base") / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return StageResult("base", [("base model", f"imported from {src}"), ("checkpoint", str(root))])


def train_stage(name: str, cfg: PipelineConfig, on_step: OnStep | None = None) -> StageResult:
    """A training stage (base, midtrain_sft, midtrain_refine): in this process, or under torchrun
    when nproc_per_node > 1 (whose rank 0 comes back here and writes the run's files)."""
    from refine_tasks.pipeline.launch import launch_training, nproc_per_node
    from refine_tasks.train.distributed import in_torchrun, train_here

    if name == "base" and cfg.lifecycle.base_checkpoint is not None:
        return _import_base(cfg, cfg.lifecycle.base_checkpoint)
    run_cfg = stage_config(name, cfg)
    out = Path(run_cfg.train.out_dir)
    nproc = nproc_per_node(cfg)
    if nproc > 1 and not in_torchrun():
        launch_training(name, cfg, nproc)
        summary = json.loads((out / SUMMARY_FILE).read_text())
        return StageResult(name, [("processes", str(nproc)), *((k, str(v)) for k, v in summary.items())])
    result = train_here(run_cfg, on_step)
    if result is None:  # a torchrun rank other than 0: rank 0 writes the run's files
        return StageResult(name, [])
    curve_keys = ("step", "loss", "ntp", "policy", "lr", "grad_norm", "val/loss", "val/accuracy")
    curve_keys += ("val/recall_use", "val/retrieval_gain")
    curve = [{k: h[k] for k in curve_keys if k in h} for h in result.history]
    (out / CURVE_FILE).write_text(json.dumps(curve, indent=1) + "\n")
    validated = [h for h in result.history if "val/loss" in h]
    summary = {
        "steps": result.steps,
        "skipped": result.skipped,
        "last_loss": result.last_loss,
        "final_ntp": curve[-1]["ntp"] if curve else None,
        "tokens_per_s": round(result.tokens_per_s, 1),
        "tokens": sum(h["tokens"] for h in result.history),
        "seconds": round(sum(h["step_s"] for h in result.history), 1),
        "device": device_name(run_cfg.train.device),
        "protocol": run_cfg.refine.protocol if run_cfg.refine.coef > 0 else "sft",
        **({"final_val_loss": validated[-1]["val/loss"]} if validated else {}),
        **({"final_val_accuracy": validated[-1]["val/accuracy"]} if validated else {}),
    }
    rows = result.summary_rows()
    if name == "base" and result.checkpoint is not None:
        probe = base_recall(run_cfg, result.checkpoint)
        if probe is not None:
            summary["recall_probe"] = probe
            rows.append(
                (
                    "recall probe: uses / statements",
                    " / ".join(
                        "-" if x is None else f"{x:.3f}"
                        for x in (probe["use_exact"], probe["statement_exact"])
                    )
                    + f" exact ({probe['uses']} / {probe['statements']} values)",
                )
            )
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return StageResult(name, rows)


PROBE_DOCS = 16  # unseen natural documents the recall probe builds a generated document from, each


def base_recall(cfg: PipelineConfig, checkpoint: Path) -> dict | None:
    """The recall probe of the base at `checkpoint` (see refine_tasks.train.recall_probe) on
    train.device at train.dtype, as its validation runs; None without text the base has not read
    (corpus.midtrain_share 0). Every setting it reads is one of the base stage's own parameters."""
    from refine_tasks.train.recall_probe import base_probe
    from refine_tasks.train.starting_model import make_model, mixed_precision, resolve_device

    probe = base_probe(cfg, PROBE_DOCS)
    if probe is None:
        return None
    device = resolve_device(cfg.train.device)
    model = make_model(_with(cfg, model={"init_from": str(checkpoint)}), device)
    with mixed_precision(device, cfg.train.dtype):
        return probe(model)


def device_name(device: str) -> str:
    """The card a run used (what a results page records): the CUDA device's name, or "cpu"."""
    from refine_tasks.train.starting_model import resolve_device

    resolved = resolve_device(device)
    if resolved.type != "cuda":
        return resolved.type
    import torch

    return torch.cuda.get_device_name(resolved)


def _positions(cfg: PipelineConfig, on_step: OnStep | None) -> StageResult:
    from refine_tasks.train.positions import precompute_positions

    out = Path(cfg.lifecycle.positions_dir)
    out.mkdir(parents=True, exist_ok=True)
    # No timings in summary.json: midtrain_refine depends on it, and only a changed selection counts.
    if cfg.positions.policy != "precomputed":
        summary = {"policy": cfg.positions.policy}
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
        notice = (
            "positions: positions.policy=online selects positions in every training step; nothing to cache"
        )
        return StageResult("positions", [("policy", cfg.positions.policy)], notice=notice)
    report = precompute_positions(
        stage_config("positions", cfg), on_progress=lambda n: on_step and on_step({"done": n})
    )
    summary = {"policy": "precomputed", "checkpoint": report.checkpoint, "sequences": report.sequences}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return StageResult("positions", report.summary_rows())


def _qa_data(cfg: PipelineConfig) -> StageResult:
    from refine_tasks.pipeline.qa_data import build_qa_data

    return StageResult("qa_data", build_qa_data(cfg))


def _posttrain(name: str, cfg: PipelineConfig, on_step: OnStep | None) -> StageResult:
    from refine_tasks.train.posttrain import posttrain

    result = posttrain(stage_config(name, cfg), on_step)
    curve = [{k: h[k] for k in ("step", "inner_loss", "answer_loss") if k in h} for h in result.history]
    (result.out_dir / CURVE_FILE).write_text(json.dumps(curve, indent=1) + "\n")
    return StageResult(name, result.summary_rows())


def _evaluate(name: str, cfg: PipelineConfig, on_step: OnStep | None) -> StageResult:
    """An evaluation stage: one family on one model, its outputs in <evaluate.output_dir>/<evaluate.run>."""
    return _evaluate_with(name, stage_config(name, cfg), on_step, None)


def _evaluate_ttt(name: str, cfg: PipelineConfig, on_step: OnStep | None) -> StageResult:
    """An evaluation stage with test-time training (ttt.*) before each batch."""
    from refine_tasks.train.ttt import TestTimeTrainer

    return _evaluate_with(name, stage_config(name, cfg), on_step, TestTimeTrainer)


def _evaluate_with(
    name: str, ev_cfg: PipelineConfig, on_step: OnStep | None, ttt: Callable | None
) -> StageResult:
    from refine_tasks.evaluate.results import task_summary
    from refine_tasks.evaluate.runner import build_records, load_eval_model, run_evaluation

    (family,) = ev_cfg.evaluate.families
    model = ev_cfg.evaluate.run
    out = Path(ev_cfg.evaluate.output_dir) / model
    reason = missing_eval_data(family, ev_cfg)
    if reason is not None:
        notice = f"{name}: skipped, {reason} (run `dvc repro -f -s {name}` once the data is there)"
        out.mkdir(parents=True, exist_ok=True)
        skipped = {"run": model, "checkpoint": ev_cfg.evaluate.checkpoint, "skipped": reason, "cells": []}
        (out / "scores.json").write_text(json.dumps(skipped, indent=2) + "\n")
        return StageResult(name, [("skipped", reason)], notice=notice)
    eval_model, tokenizer, checkpoint = load_eval_model(ev_cfg)
    records = build_records(ev_cfg.evaluate, tokenizer, ev_cfg.seed)
    adapt = ttt(eval_model, ev_cfg) if ttt is not None else None
    run = run_evaluation(
        ev_cfg,
        eval_model,
        tokenizer,
        checkpoint=checkpoint,
        records=records,
        on_batch=lambda n: on_step and on_step({"done": n}),
        adapt=adapt,
    )
    rows = [(f"{task} ({t['metric']})", f"{t['score']:.2f}") for task, t in task_summary(run.results).items()]
    rows += [("samples", f"{len(run.results):,}"), ("seconds", f"{run.seconds:.1f}")]
    return StageResult(name, rows, files=list(run.paths.values()))


def score_files(cfg: PipelineConfig) -> list[Path]:
    """Every evaluation output the report reads (skipped stages' files hold no cells)."""
    root = Path(cfg.lifecycle.eval_dir)
    files = [root / family / model / "scores.json" for family in EVAL_STAGES.values() for model in MODELS]
    return files + [root / "ruler_qa" / run / "scores.json" for run in ALL_RUNS[len(MODELS) :]]


def evaluation_results(cfg: PipelineConfig):
    """The evaluation cells of every model evaluated so far (a DataFrame, models in MODELS order)."""
    from refine_tasks.evaluate.report import results_from_scores

    files = [f for f in score_files(cfg) if f.is_file()]
    scores = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    present = {s["run"] for s in scores if s["cells"]}
    return results_from_scores(files, [m for m in ALL_RUNS if m in present] or list(MODELS))


def comparison(cfg: PipelineConfig) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the comparison of base, SFT and ReFINE on every evaluated task."""
    from refine_tasks.evaluate.report import comparison_rows

    return comparison_rows(evaluation_results(cfg))


def _report(cfg: PipelineConfig) -> StageResult:
    from refine_tasks.evaluate.report import length_scores, task_scores, write_report_frame

    df = evaluation_results(cfg)
    out = Path(cfg.evaluate.report_dir)
    files = write_report_frame(df, out)
    averages = task_scores(df).groupby(["label", "family"], observed=True).score.mean()
    metrics: dict[str, dict[str, float]] = {}
    for (label, family), score in averages.items():
        metrics.setdefault(str(label), {})[str(family)] = round(float(score), 4)
    for t in length_scores(df).itertuples():  # every task at every evaluated length
        metrics.setdefault(str(t.label), {})[f"{t.task}@{int(t.length)}"] = round(float(t.score), 4)
    (out / REPORT_METRICS).write_text(json.dumps(metrics, indent=1) + "\n")
    skipped = [
        json.loads(f.read_text())["skipped"]
        for f in score_files(cfg)
        if f.is_file() and "skipped" in json.loads(f.read_text())
    ]
    notice = f"report: without {'; '.join(sorted(set(skipped)))}" if skipped else None
    rows = [("report", str(out / "comparison.md")), ("files", f"{len(files) + 1}")]
    return StageResult("report", rows, notice=notice, files=[*files, out / REPORT_METRICS])


def warm_kernels(cfg: PipelineConfig) -> StageResult:
    """Compile the configured shapes' GPU kernels into the kernel cache (`refine warmup`, the
    `kernels` stage): training's NTP and ReFINE micro-steps on train.device, evaluation's generation
    at every prefill length on evaluate.device. On a machine without CUDA there is nothing to
    compile; the folder is made all the same (DVC's output on every machine)."""
    from refine_tasks.corpus.tokenizer import load_tokenizer
    from refine_tasks.evaluate.runner import eval_device, warm_generation
    from refine_tasks.train.starting_model import make_model, resolve_device
    from refine_tasks.train.warmup import warm_training

    train_device = resolve_device(cfg.train.device)
    training = train_device.type == "cuda"
    evaluation = eval_device(cfg.evaluate.device).type == "cuda"
    root = Path(cfg.paths.kernel_cache)
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.txt").write_text(KERNELS_README)  # what the folder is; DVC's output on a CPU too
    cache = activate_kernel_cache(cfg, tracked=True)  # only this stage writes DVC's folder
    if cache is None or not (training or evaluation):
        rows = [("kernel cache", "nothing to compile: train.device and evaluate.device are no CUDA device")]
        return StageResult("kernels", rows)
    before, began = cache.files(), time.perf_counter()
    model = make_model(cfg, train_device)
    rows = warm_training(cfg, model).summary_rows() if training else []
    if evaluation:
        rows += warm_generation(cfg, model, load_tokenizer(cfg.paths.tokenizer_dir)).summary_rows()
    rows = [
        ("GPU", cache.gpu),
        ("kernel cache", str(cache.kept_in)),
        *rows,
        ("seconds", f"{time.perf_counter() - began:.1f}"),
        ("files added to the cache", f"{cache.files() - before:,}"),
        ("files in the cache", f"{cache.files():,}"),
    ]
    return StageResult("kernels", rows)


@dataclass(frozen=True)
class Stage:
    """A row of the stage table: a stage, or with `models` a foreach stage (one `name@model` each).

    config(cfg, model): cfg plus the stage's own fields; outputs(cfg, model): what it writes (its
    DVC outs); run(name, cfg, on_step): the stage itself; device: the field naming the device its
    model runs on, for a stage that runs one (the GPU kernel cache and CPU threads are set first);
    persist: its outputs only grow (DVC's `persist`), so they are neither set aside nor removed."""

    name: str
    outputs: Callable[[PipelineConfig, str | None], list[Path]]
    run: Callable[[str, PipelineConfig, OnStep | None], StageResult]
    config: Callable[[PipelineConfig, str | None], PipelineConfig] = _as_given
    models: tuple[str, ...] = ()
    device: str | None = None
    persist: bool = False


def _eval_stage(stage: str, family: str) -> Stage:
    return Stage(
        stage,
        lambda cfg, model: [Path(cfg.lifecycle.eval_dir) / family / str(model)],
        _evaluate,
        _eval_config(family),
        models=MODELS,
        device="evaluate.device",
    )


def _train_stage(stage: str, config: Callable[[PipelineConfig, str | None], PipelineConfig]) -> Stage:
    return Stage(
        stage, lambda cfg, _: [run_dir(cfg, TRAIN_STAGES[stage])], train_stage, config, device="train.device"
    )


def _qa_stage(
    stage: str,
    prefix: str,
    run: Callable[[str, PipelineConfig, OnStep | None], StageResult],
    config: Callable[[PipelineConfig, str | None], PipelineConfig],
    models: tuple[str, ...],
) -> Stage:
    """RULER QA of runs `<prefix>-<model>` (post-trained models, test-time training)."""
    return Stage(
        stage,
        lambda cfg, model: [Path(cfg.lifecycle.eval_dir) / "ruler_qa" / f"{prefix}-{model}"],
        run,
        config,
        models=models,
        device="evaluate.device",
    )


STAGES: tuple[Stage, ...] = (
    Stage("tokenizer", lambda cfg, _: [Path(cfg.paths.tokenizer_dir)], lambda n, cfg, s: _tokenizer(cfg, s)),
    Stage("corpus", lambda cfg, _: [Path(cfg.paths.corpus_dir)], lambda n, cfg, s: _corpus(cfg, s)),
    Stage(
        "kernels",
        lambda cfg, _: [Path(cfg.paths.kernel_cache)],
        lambda n, cfg, s: warm_kernels(cfg),
        device="train.device",
        persist=True,
    ),
    _train_stage("base", _base_config),
    Stage(
        "positions",
        lambda cfg, _: [Path(cfg.lifecycle.positions_dir)],
        lambda n, cfg, s: _positions(cfg, s),
        _positions_config,
        device="train.device",
    ),
    _train_stage("midtrain_sft", _midtrain_config("sft")),
    _train_stage("midtrain_refine", _midtrain_config("refine")),
    *(_eval_stage(stage, family) for stage, family in EVAL_STAGES.items()),
    Stage("qa_data", lambda cfg, _: [Path(cfg.qa_data.out_dir)], lambda n, cfg, s: _qa_data(cfg)),
    Stage(
        "posttrain",
        lambda cfg, variant: [run_dir(cfg, f"post-{variant}")],
        _posttrain,
        _posttrain_config,
        models=POSTTRAIN_VARIANTS,
        device="train.device",
    ),
    _qa_stage("eval_qa_post", "post", _evaluate, _eval_post_config, POSTTRAIN_VARIANTS),
    _qa_stage("eval_qa_ttt", "ttt", _evaluate_ttt, _eval_ttt_config, TTT_OBJECTIVES),
    Stage("report", lambda cfg, _: [Path(cfg.evaluate.report_dir)], lambda n, cfg, s: _report(cfg)),
)


def run_stage(name: str, cfg: PipelineConfig, on_step: OnStep | None = None) -> StageResult:
    """Run stage `name` on fresh outputs, its previous ones set aside: deleted when it succeeds,
    put back when it fails (after removing what it wrote). A stage that runs a model first points
    the GPU kernel caches at paths.kernel_cache (its work folder but for the `kernels` stage)."""
    began = time.perf_counter()
    row, model = stage_row(name)
    row.config(cfg, model)  # a configuration the stage cannot run fails here, before any output moves
    outputs = [] if row.persist else row.outputs(cfg, model)
    recover_outputs(outputs)
    if row.device is not None:
        from refine_tasks.pipeline.cpu_threads import choose_cpu_threads  # reads the model's size

        # before any kernel compiles (the flows call run_stage directly); the `kernels` stage writes
        # the DVC-tracked folder, every other stage its work folder (see pipeline.kernel_cache)
        activate_kernel_cache(cfg, tracked=row.name == "kernels")
        choose_cpu_threads(cfg, row.device)
    moved = set_aside(outputs)
    try:
        result = row.run(name, cfg, on_step)
    except BaseException:
        remove_outputs(outputs)
        for path, aside in moved:
            os.replace(aside, path)
        raise
    remove_outputs(aside for _, aside in moved)
    result.wall_s = time.perf_counter() - began
    return result


def run_tracked(
    name: str, cfg: PipelineConfig, on_step: OnStep | None = None, force: bool = False
) -> StageResult:
    """Run stage `name` the way `dvc repro` would: not at all when the working directory's DVC
    repository says it is up to date (unless `force`, e.g. to re-read a corpus source DVC does not
    track); else run it and commit its outputs (`dvc commit`); when it fails, put back its last
    committed outputs. Outside a DVC repository, or with a configuration other than the
    repository's params.yaml, it just runs the stage."""
    from refine_tasks.pipeline.dvc_state import DvcStages

    dvc = DvcStages.for_config(cfg)
    if dvc is not None and not force and dvc.up_to_date(name):
        return StageResult(name, [("up to date", "dvc status: nothing changed")], up_to_date=True)
    try:
        result = run_stage(name, cfg, on_step)
    except BaseException:
        if dvc is not None:
            dvc.restore(name)
        raise
    if dvc is not None:
        dvc.commit(name)
        result.rows.append(("dvc", "outputs committed (dvc.lock)"))
    return result
