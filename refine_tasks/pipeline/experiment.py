"""The experiment: the lifecycle's SFT and ReFINE arms at several seeds from one base, and its page.

Seed `seed` is the lifecycle itself (`refine run`: data/runs, data/eval). Each further seed of
`lifecycle.seeds` runs, under `lifecycle.experiment_dir/seed-<s>/`, the stages that depend on the
seed: positions, midtrain_sft, midtrain_refine and every evaluation of sft and refine, starting
from the lifecycle's base (imported as that seed's base, so every arm of every seed starts from
the same weights). A seed's stage whose outputs are already there is not run again, so an
interrupted experiment continues where it stopped. `write_experiment_results` then writes
`lifecycle.results_dir/results.{md,json}` (refine_tasks.evaluate.experiment) from the outputs.

An ablation of `lifecycle.ablations` is one ReFINE run at `seed` from the same base with its settings
changed (its positions, training and evaluations under `lifecycle.experiment_dir/ablation-<name>/`);
one that changes train.* trains an SFT at the same settings beside it, the SFT it is compared with.
`refine experiment` runs them when ReFINE beats SFT on no primary metric, each family's average
(`lifecycle.ablate`).
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from refine_tasks.config import ConfigError, PipelineConfig, config_with
from refine_tasks.pipeline.lifecycle import (
    EVAL_STAGES,
    SUMMARY_FILE,
    StageResult,
    final_checkpoint,
    run_dir,
    run_stage,
    stage_outputs,
)

SCORES_FILE = "scores.json"  # an evaluation stage's last file (refine_tasks.evaluate.results)
SEED_STAGES = (
    "base",
    "positions",
    "midtrain_sft",
    "midtrain_refine",
    *(f"{stage}@{model}" for stage in EVAL_STAGES for model in ("sft", "refine")),
)


ABLATION_STAGES = ("base", "positions", "midtrain_refine", *(f"{stage}@refine" for stage in EVAL_STAGES))
ABLATION_SFT_STAGES = ("midtrain_sft", *(f"{stage}@sft" for stage in EVAL_STAGES))


def seed_config(cfg: PipelineConfig, seed: int, import_base: bool = True) -> PipelineConfig:
    """The configuration of seed `seed`: cfg itself for cfg.seed, else the same with its own folders
    (runs, positions, evaluations) and the lifecycle's base as its base (not with import_base=False:
    only the folders, to read the outputs where the base's checkpoint is not, e.g. copied back)."""
    if seed == cfg.seed:
        return cfg
    return _branch(cfg, f"seed-{seed}", [f"seed={seed}"], f"seed {seed}", import_base)


def ablation_config(cfg: PipelineConfig, name: str, import_base: bool = True) -> PipelineConfig:
    """The configuration of ablation `name`: cfg with its settings, its own folders, the lifecycle's
    base (import_base: as seed_config's)."""
    if name not in cfg.lifecycle.ablations:
        raise ConfigError(
            f"lifecycle.ablations: no ablation {name!r} (there are: {', '.join(cfg.lifecycle.ablations)})"
        )
    settings = ablation_settings(cfg, name)
    return _branch(cfg, f"ablation-{name}", settings, f"lifecycle.ablations.{name}", import_base)


def ablation_settings(cfg: PipelineConfig, name: str) -> list[str]:
    """Ablation `name`'s settings, and when they change train.grad_accum but not train.max_steps, the
    train.max_steps at which it reads the lifecycle's micro-batches (its documents), no more: the
    reference protocol at grad_accum 4 takes 50 batches of 4 for the lifecycle's 200 of 1, so its
    ReFINE makes 200 optimizer steps (refine.mini_batches 4 a batch) on the same data as ours,
    and its SFT one step a batch, as the reference's (DESIGN.md section 7)."""
    settings = list(cfg.lifecycle.ablations[name])
    fields = {item.partition("=")[0].strip(): item.partition("=")[2].strip() for item in settings}
    accum = fields.get("train.grad_accum")
    if accum is None or "train.max_steps" in fields or cfg.train.max_steps is None:
        return settings
    try:
        accum_n = int(accum)
    except ValueError:
        return settings  # config_with names the wrong value
    micro = cfg.train.max_steps * cfg.train.grad_accum
    return [*settings, f"train.max_steps={max(1, -(-micro // max(accum_n, 1)))}"]


def _branch(
    cfg: PipelineConfig, folder: str, settings: list[str], origin: str, import_base: bool
) -> PipelineConfig:
    """cfg with `settings`, its runs, positions and evaluations under lifecycle.experiment_dir/folder,
    and the lifecycle's base model as its base."""
    root = Path(cfg.lifecycle.experiment_dir) / folder
    base = [f"lifecycle.base_checkpoint={final_checkpoint(cfg, 'base')}"] if import_base else []
    return config_with(
        cfg,
        [
            *settings,
            f"lifecycle.runs_dir={root / 'runs'}",
            f"lifecycle.positions_dir={root / 'positions'}",
            f"lifecycle.eval_dir={root / 'eval'}",
            *base,
        ],
        origin,
    )


def ablation_stages(cfg: PipelineConfig, name: str) -> tuple[str, ...]:
    """The base imported from the lifecycle's, ReFINE's positions, training and evaluations; with an
    SFT of its own when train.* changes."""
    own_sft = any(item.startswith("train.") for item in cfg.lifecycle.ablations[name])
    return (*ABLATION_STAGES, *ABLATION_SFT_STAGES) if own_sft else ABLATION_STAGES


def run_ablations(
    cfg: PipelineConfig, on_stage: Callable[[str, StageResult], None] | None = None
) -> list[tuple[str, str]]:
    """Run every ablation's stages that have no outputs yet; returns the (ablation, stage) run."""
    configs = {name: ablation_config(cfg, name) for name in cfg.lifecycle.ablations}  # all valid first
    done: list[tuple[str, str]] = []
    for name, ablation_cfg in configs.items():
        done += _run_missing(name, ablation_cfg, ablation_stages(cfg, name), on_stage)
    return done


def _run_missing(key, stage_cfg: PipelineConfig, stages, on_stage) -> list[tuple]:
    """Run each of `stages` that has no outputs in stage_cfg's folders; returns (key, stage) per run."""
    done = []
    for stage in stages:
        if stage_done(stage, stage_cfg):
            continue
        result = run_stage(stage, stage_cfg)
        done.append((key, stage))
        if on_stage is not None:
            on_stage(key, result)
    return done


def should_ablate(cfg: PipelineConfig) -> tuple[bool, str]:
    """Whether `refine experiment` runs the ablations, and why (lifecycle.ablate and the paired CIs)."""
    from refine_tasks.evaluate.experiment import gains, headline, metric_scores

    mode = cfg.lifecycle.ablate
    if mode != "if-no-gain" or not cfg.lifecycle.ablations:
        return mode == "always" and bool(cfg.lifecycle.ablations), f"lifecycle.ablate: {mode}"
    cells = _cells(cfg)
    if cells.empty:
        return False, "no evaluation results yet"
    better = gains(headline(metric_scores(cells)), primary_only=True)
    if better:
        return False, f"ReFINE beats SFT on {len(better)} primary metric(s): {', '.join(better)}"
    return True, "ReFINE beats SFT on no primary metric (each family's average)"


def experiment_seeds(cfg: PipelineConfig) -> list[int]:
    return list(dict.fromkeys([cfg.seed, *cfg.lifecycle.seeds]))


def stage_done(name: str, cfg: PipelineConfig) -> bool:
    """Whether stage `name` finished here: each output holds the file a stage writes last (a
    training run's or the positions' summary.json, an evaluation's scores.json); a stage killed
    midway leaves none, so it runs again."""
    return all((p / SUMMARY_FILE).is_file() or (p / SCORES_FILE).is_file() for p in stage_outputs(name, cfg))


def run_seeds(
    cfg: PipelineConfig, on_stage: Callable[[int, StageResult], None] | None = None
) -> list[tuple[int, str]]:
    """Run every further seed's stages that have no outputs yet; returns the (seed, stage) run."""
    done: list[tuple[int, str]] = []
    for seed in cfg.lifecycle.seeds:
        if seed != cfg.seed:
            done += _run_missing(seed, seed_config(cfg, seed), SEED_STAGES, on_stage)
    return done


class Arm(NamedTuple):
    """One run the page may hold. run: its name in the evaluation cells (the arm, or `ablation NAME`
    / `ablation NAME sft`); label: its name among the runs; settings: an ablation's, else None."""

    run: str
    label: str
    seed: int
    cfg: PipelineConfig
    arm: str
    settings: list[str] | None = None


def _arms(cfg: PipelineConfig, seeds: bool = True, ablations: bool = True) -> list[Arm]:
    """The base, SFT and ReFINE at `seed`; SFT and ReFINE at each further seed (`seeds`) and each
    ablation's (`ablations`) (their folders: the page reads outputs, with or without the checkpoints
    beside them)."""
    arms = [
        Arm(a, a if a == "base" else f"{a} seed {cfg.seed}", cfg.seed, cfg, a)
        for a in ("base", "sft", "refine")
    ]
    for seed in experiment_seeds(cfg)[1:] if seeds else []:
        seed_cfg = seed_config(cfg, seed, import_base=False)
        arms += [Arm(a, f"{a} seed {seed}", seed, seed_cfg, a) for a in ("sft", "refine")]
    for name in cfg.lifecycle.ablations if ablations else []:
        settings = ablation_settings(cfg, name)
        ablation_cfg = ablation_config(cfg, name, import_base=False)
        for a in ("sft", "refine"):
            label = ablation_label(name, a)
            arms.append(Arm(label, label, cfg.seed, ablation_cfg, a, settings))
    return arms


def _cells(cfg: PipelineConfig, arms: list[Arm] | None = None):
    import pandas as pd

    from refine_tasks.evaluate.report import results_from_scores

    frames = []
    for a in _arms(cfg) if arms is None else arms:
        root = Path(a.cfg.lifecycle.eval_dir)
        files = [root / f / a.arm / SCORES_FILE for f in EVAL_STAGES.values()]
        files = [f for f in files if f.is_file() and json.loads(f.read_text())["cells"]]
        if files:
            frames.append(results_from_scores(files).drop(columns="label").assign(run=a.run, seed=a.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def ablation_label(name: str, arm: str) -> str:
    """The run name of an ablation's arm in the page's cells and runs: `ablation NAME` (ReFINE) or
    `ablation NAME sft` (its own SFT)."""
    return f"ablation {name}" + (" sft" if arm == "sft" else "")


def _runs(cfg: PipelineConfig, arms: list[Arm] | None = None) -> dict[str, dict]:
    """label -> the training run's summary, protocol and metric lines (an ablation's: its settings and
    no curves), for every run there is."""
    runs: dict[str, dict] = {}
    for a in _arms(cfg) if arms is None else arms:
        folder = run_dir(a.cfg, a.arm)
        if not (folder / SUMMARY_FILE).is_file():
            continue
        summary = json.loads((folder / SUMMARY_FILE).read_text())
        entry = {"seed": a.seed, "protocol": summary.get("protocol", "-"), "summary": summary, "metrics": []}
        metrics = folder / "metrics.jsonl"
        if a.settings is not None:
            entry["settings"] = a.settings
        elif metrics.is_file():
            entry["metrics"] = [json.loads(x) for x in metrics.read_text().splitlines() if x]
        runs[a.label] = entry
    return runs


def rebased(cfg: PipelineConfig, root: Path) -> PipelineConfig:
    """cfg with the lifecycle's folders (runs, positions, evaluations, the experiment's) under `root`,
    where another run's outputs were copied (a device run's progress/ folder: data/runs, ...)."""
    lc = cfg.lifecycle
    folders = {
        "runs_dir": lc.runs_dir,
        "positions_dir": lc.positions_dir,
        "eval_dir": lc.eval_dir,
        "experiment_dir": lc.experiment_dir,
    }
    return config_with(
        cfg,
        [f"lifecycle.{k}={v if Path(v).is_absolute() else Path(root) / v}" for k, v in folders.items()],
        f"--ablations-from {root}",
    )


def write_experiment_results(
    cfg: PipelineConfig, command: str | None = None, ablations_from: Path | None = None
) -> tuple[Path, Path]:
    """results.md and results.json in lifecycle.results_dir, from every seed's outputs.

    ablations_from: the ablations are read from another lifecycle run's outputs under that folder
    (`rebased`), beside its own base, SFT and ReFINE at `seed`, which they are compared with: a run
    of the ablations from a base of their own, when the seeds' run and theirs do not fit one lease
    of a GPU machine. Without it, the ablations are this lifecycle's."""
    from refine_tasks.evaluate.experiment import write_results

    if ablations_from is None:
        runs, cells, ablation_cells, source = _runs(cfg), _cells(cfg), None, None
    else:
        if not Path(ablations_from).is_dir():
            raise ConfigError(f"--ablations-from {ablations_from}: no such folder")
        other = rebased(cfg, Path(ablations_from))
        mine = _arms(cfg, ablations=False)
        theirs = _arms(other, seeds=False)
        runs, cells, ablation_cells = _runs(cfg, mine), _cells(cfg, mine), _cells(other, theirs)
        ablation_runs = {a.run for a in theirs if a.settings is not None}
        if ablation_cells.empty or not ablation_runs & set(ablation_cells.run):
            raise ConfigError(
                f"--ablations-from {ablations_from}: no ablation has evaluation scores under "
                f"{other.lifecycle.experiment_dir}"
            )
        for label, entry in _runs(other, theirs).items():  # the reference runs: no curves of theirs
            runs[label if entry.get("settings") else f"ablations' {label}"] = {**entry, "metrics": []}
        base = runs.get("ablations' base", {}).get("summary", {})
        loss = base.get("last_loss")
        source = f"{ablations_from} (its base: {base.get('steps', '?')} steps, last loss " + (
            f"{loss:.4f})" if isinstance(loss, int | float) else "unknown)"
        )
    devices = sorted({str(r["summary"].get("device")) for r in runs.values() if r["summary"].get("device")})
    meta = {
        "command": command or shlex.join(["refine", *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "card": ", ".join(devices) or "unknown",
        "seeds": experiment_seeds(cfg),
        "model": {"preset": cfg.model.preset, "mixer": cfg.model.mixer},
        "refine": {"coef": cfg.refine.coef, "protocol": cfg.refine.protocol, "reward": cfg.refine.reward},
        "tokens": sum(r["summary"].get("tokens", 0) for r in runs.values()),
        "steps": {label: r["summary"].get("steps") for label, r in runs.items()},
        "train_wall_s": round(sum(r["summary"].get("seconds", 0.0) for r in runs.values()), 1),
    }
    ablations = {name: ablation_settings(cfg, name) for name in cfg.lifecycle.ablations}
    return write_results(
        cells, runs, Path(cfg.lifecycle.results_dir), meta, ablations, ablation_cells, source
    )
