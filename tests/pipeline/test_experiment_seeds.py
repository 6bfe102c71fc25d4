"""`refine experiment`'s bookkeeping: each further seed's folders and shared base, and the page
written from the lifecycle's outputs at every seed (synthetic outputs, no training)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from refine_tasks.config import ConfigError, load_config
from refine_tasks.pipeline.experiment import (
    ABLATION_STAGES,
    SEED_STAGES,
    ablation_config,
    ablation_stages,
    run_ablations,
    seed_config,
    should_ablate,
    stage_done,
    write_experiment_results,
)
from refine_tasks.pipeline.lifecycle import (
    EVAL_STAGES,
    LifecycleError,
    StageResult,
    stage_config,
    stage_outputs,
)


def _config(tmp_path: Path, *more: str):
    return load_config(
        None,
        [
            f"lifecycle.runs_dir={tmp_path / 'runs'}",
            f"lifecycle.eval_dir={tmp_path / 'eval'}",
            f"lifecycle.positions_dir={tmp_path / 'positions'}",
            f"lifecycle.experiment_dir={tmp_path / 'exp'}",
            f"lifecycle.results_dir={tmp_path / 'docs'}",
            "lifecycle.seeds=[1, 2]",
            *more,
        ],
    )


def _base(tmp_path: Path) -> Path:
    ckpt = tmp_path / "runs" / "base" / "checkpoints" / "step-0000010"
    ckpt.mkdir(parents=True)
    (ckpt.parent / "latest").write_text("step-0000010\n")
    return ckpt


def _scores(path: Path, arm: str, seed: int, family: str, score: float) -> None:
    path.mkdir(parents=True)
    cell = {"run": arm, "checkpoint": f"/c/{arm}/{seed}", "family": family, "task": "squad",
            "length": None, "depth": None, "n_samples": 4, "score": score}  # fmt: skip
    (path / "scores.json").write_text(json.dumps({"run": arm, "cells": [cell]}))


def _run(folder: Path, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    summary = {
        "steps": 3,
        "tokens": 300,
        "seconds": 1.5,
        "device": "cpu",
        "protocol": "ours",
        "final_ntp": 2.0,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    lines = [{"step": s, "loss": 3.0 - s, "ntp": 3.0 - s, "val/loss": 2.9 - s} for s in (1, 2, 3)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_a_further_seed_has_its_own_folders_and_the_lifecycles_base(tmp_path):
    cfg = _config(tmp_path)
    with pytest.raises(LifecycleError, match="run the `base` stage first"):
        seed_config(cfg, 1)
    base = _base(tmp_path)
    assert seed_config(cfg, 0) is cfg
    one = seed_config(cfg, 1)
    assert one.seed == 1 and one.lifecycle.base_checkpoint == str(base)
    assert one.lifecycle.runs_dir == tmp_path / "exp" / "seed-1" / "runs"
    assert one.lifecycle.eval_dir == tmp_path / "exp" / "seed-1" / "eval"
    sft = stage_config("midtrain_sft", cfg)
    assert sft.train.synthetic_docs is False and stage_config("base", cfg).train.synthetic_docs is True
    assert "base" in SEED_STAGES and "eval_niah@base" not in SEED_STAGES  # one base model evaluated once


def test_the_page_pairs_sft_and_refine_by_seed(tmp_path):
    cfg = _config(tmp_path)
    _base(tmp_path)
    _run(tmp_path / "runs" / "base", 0)
    for seed in (0, 1, 2):
        root = tmp_path / ("eval" if seed == 0 else f"exp/seed-{seed}/eval")
        runs = tmp_path / ("runs" if seed == 0 else f"exp/seed-{seed}/runs")
        for arm, score in (("sft", 20.0 + 10 * seed), ("refine", 22.0 + 10 * seed)):
            _scores(root / "ruler_qa" / arm, arm, seed, "ruler_qa", score)
            _run(runs / arm, seed)
    _scores(tmp_path / "eval" / "ruler_qa" / "base", "base", 0, "ruler_qa", 15.0)
    md, js = write_experiment_results(cfg, command="refine experiment -p params-gpu-small.yaml")
    data = json.loads(js.read_text())
    row = next(r for r in data["headline"] if r["metric"] == "RULER QA: squad")
    assert row["seeds"] == [0, 1, 2] and row["refine_minus_sft"]["mean"] == pytest.approx(2.0)
    assert row["refine_minus_sft"]["low"] == pytest.approx(2.0)  # the same gain at every seed
    assert row["base"]["mean"] == 15.0
    assert data["seeds"] == [0, 1, 2] and data["tokens"] == 7 * 300 and data["card"] == "cpu"
    assert set(data["runs"]) == {"base", *(f"{a} seed {s}" for a in ("sft", "refine") for s in (0, 1, 2))}
    assert "2.0 [2.0, 2.0]" in md.read_text() and (tmp_path / "docs" / "curves_validation.png").is_file()
    assert "curves_base.png" in data["figures"]  # the base on its own axis: it trains many more steps
    # outputs copied back from a GPU machine, without the checkpoints: the same page
    shutil.rmtree(tmp_path / "runs" / "base" / "checkpoints")
    _, again = write_experiment_results(cfg, command="refine report --experiment")
    assert json.loads(again.read_text())["headline"] == data["headline"]
    assert "configured have no paired" not in md.read_text() and data["seeds_configured"] == [0, 1, 2]
    assert "recall probe" not in md.read_text()  # the base's summary has none
    summary = json.loads((tmp_path / "runs" / "base" / "summary.json").read_text())
    summary["recall_probe"] = {"use_exact": 0.25, "statement_exact": 0.0, "uses": 40, "statements": 16}
    (tmp_path / "runs" / "base" / "summary.json").write_text(json.dumps(summary))
    md, _ = write_experiment_results(cfg, command="refine report --experiment")
    assert (
        "x 100): 25.0 at later uses (40 values), 0.0 where first stated (16, not retrievable)."
        in md.read_text()
    ) and "log-probability" not in md.read_text()  # a summary from before the probe had a gain
    summary["recall_probe"]["gain"] = 0.4321
    (tmp_path / "runs" / "base" / "summary.json").write_text(json.dumps(summary))
    md, _ = write_experiment_results(cfg, command="refine report --experiment")
    assert (
        "Its value tokens' log-probability is +0.432 nats/token where used over where stated"
        in md.read_text()
    )
    # a run cut short: seed 2's ReFINE never evaluated; the page says whose pairs its intervals are over
    shutil.rmtree(tmp_path / "exp" / "seed-2" / "eval" / "ruler_qa" / "refine")
    md, js = write_experiment_results(cfg, command="refine report --experiment")
    short = json.loads(js.read_text())
    assert short["seeds"] == [0, 1] and short["seeds_configured"] == [0, 1, 2]
    assert "Seed(s) 2 of the 3 configured have no paired SFT and ReFINE evaluations yet" in short["finding"]
    assert "the intervals are over seed(s) 0, 1." in md.read_text()


def test_a_stage_killed_midway_is_not_taken_for_done(tmp_path):
    cfg = _config(tmp_path)
    _base(tmp_path)
    one = seed_config(cfg, 1)
    run = tmp_path / "exp" / "seed-1" / "runs" / "sft"
    (run / "checkpoints").mkdir(parents=True)  # what a killed training leaves: no summary.json
    assert not stage_done("midtrain_sft", one)
    _run(run, 1)
    assert stage_done("midtrain_sft", one)
    assert not stage_done("eval_niah@sft", one)
    _scores(tmp_path / "exp" / "seed-1" / "eval" / "niah" / "sft", "sft", 1, "niah", 1.0)
    assert stage_done("eval_niah@sft", one)


# --- ablations ------------------------------------------------------------------------------------


def test_an_ablation_has_its_settings_its_folders_and_the_lifecycles_base(tmp_path):
    cfg = _config(tmp_path)
    base = _base(tmp_path)
    coef = ablation_config(cfg, "coef-0p4")
    assert coef.refine.coef == 0.4 and cfg.refine.coef == 0.2 and coef.seed == cfg.seed
    assert coef.lifecycle.base_checkpoint == str(base)
    assert coef.lifecycle.runs_dir == tmp_path / "exp" / "ablation-coef-0p4" / "runs"
    assert coef.lifecycle.eval_dir == tmp_path / "exp" / "ablation-coef-0p4" / "eval"
    ref = ablation_config(cfg, "protocol-reference")
    assert ref.refine.protocol == "reference" and ref.train.grad_accum == 4
    # the lifecycle's micro-batches (documents), no more: a quarter of the batches, rounded up
    assert ref.train.max_steps == -(-cfg.train.max_steps * cfg.train.grad_accum // 4)
    assert ref.train.max_steps * 4 >= cfg.train.max_steps > (ref.train.max_steps - 1) * 4
    own = ablation_config(
        _config(tmp_path, "lifecycle.ablations={ref: [train.grad_accum=2, train.max_steps=7]}"), "ref"
    )
    assert own.train.max_steps == 7  # an ablation's own max_steps stands
    # train.* changed: an SFT at the same settings is trained beside it, the SFT it is compared with
    assert "midtrain_sft" in ablation_stages(cfg, "protocol-reference")
    assert "midtrain_sft" not in ablation_stages(cfg, "coef-0p4")
    assert set(ablation_stages(cfg, "coef-0p4")) == {"base", "positions", "midtrain_refine", *(
        f"{s}@refine" for s in EVAL_STAGES)}  # fmt: skip


def test_a_bad_ablation_is_refused_naming_it(tmp_path):
    _base(tmp_path)
    with pytest.raises(ConfigError, match="lifecycle.ablations.fast.*refine.coef"):
        ablation_config(_config(tmp_path, "lifecycle.ablations={fast: [refine.coef=-1]}"), "fast")
    for name in ("a/b", "coef-0.1"):
        with pytest.raises(ConfigError, match="names a folder"):
            _config(tmp_path, f"lifecycle.ablations={{'{name}': [refine.coef=0.1]}}")
    with pytest.raises(ConfigError, match="section.field=value"):
        _config(tmp_path, "lifecycle.ablations={a: [coef]}")
    with pytest.raises(ConfigError, match="no ablation 'nope'"):
        ablation_config(_config(tmp_path), "nope")


def _arms_at_seeds(tmp_path: Path, gain: list[float]) -> None:
    """SFT and ReFINE scores at seeds 0, 1, 2 with ReFINE - SFT = gain[seed]."""
    _run(tmp_path / "runs" / "base", 0)
    for seed in (0, 1, 2):
        root = tmp_path / ("eval" if seed == 0 else f"exp/seed-{seed}/eval")
        runs = tmp_path / ("runs" if seed == 0 else f"exp/seed-{seed}/runs")
        for arm, score in (("sft", 20.0 + 10 * seed), ("refine", 20.0 + 10 * seed + gain[seed])):
            _scores(root / "ruler_qa" / arm, arm, seed, "ruler_qa", score)
            _run(runs / arm, seed)


def test_ablations_run_only_when_refine_beats_sft_nowhere_unless_asked(tmp_path):
    _base(tmp_path)
    _arms_at_seeds(tmp_path, gain=[2.0, 2.0, 2.0])  # a gain at every seed: the CI is above 0
    assert should_ablate(_config(tmp_path))[0] is False
    assert should_ablate(_config(tmp_path, "lifecycle.ablate=always"))[0] is True
    for seed_dir in ("eval", "exp/seed-1/eval", "exp/seed-2/eval"):
        for arm in ("sft", "refine"):
            shutil.rmtree(tmp_path / seed_dir / "ruler_qa" / arm)
    _arms_at_seeds(tmp_path, gain=[3.0, -1.0, -2.0])  # the CI of the difference holds 0
    run, why = should_ablate(_config(tmp_path))
    assert run is True and "no primary metric" in why
    assert should_ablate(_config(tmp_path, "lifecycle.ablate=never"))[0] is False


def test_a_per_task_win_alone_does_not_stop_the_ablations(tmp_path):
    _base(tmp_path)
    for seed in (0, 1, 2):
        root = tmp_path / ("eval" if seed == 0 else f"exp/seed-{seed}/eval")
        runs = tmp_path / ("runs" if seed == 0 else f"exp/seed-{seed}/runs")
        for arm, squad, hotpot in (("sft", 20.0, 30.0), ("refine", 22.0, 27.0)):  # +2 on one, -3 on the other
            cells = [
                {
                    "run": arm,
                    "checkpoint": f"/c/{arm}/{seed}",
                    "family": "ruler_qa",
                    "task": task,
                    "length": None,
                    "depth": None,
                    "n_samples": 4,
                    "score": score + seed,
                }  # fmt: skip
                for task, score in (("squad", squad), ("hotpot", hotpot))
            ]
            (root / "ruler_qa" / arm).mkdir(parents=True)
            (root / "ruler_qa" / arm / "scores.json").write_text(json.dumps({"run": arm, "cells": cells}))
            _run(runs / arm, seed)
    run, why = should_ablate(_config(tmp_path))
    assert (
        run is True and "no primary metric" in why
    )  # RULER QA: squad is up at every seed; the average is not


def test_run_ablations_runs_each_missing_stage_once(tmp_path, monkeypatch):
    import refine_tasks.pipeline.experiment as experiment

    cfg = _config(tmp_path, "lifecycle.ablations={coef-0p4: [refine.coef=0.4], ga: [train.grad_accum=2]}")
    _base(tmp_path)
    ran = []

    def fake_run_stage(name, stage_cfg):
        ran.append((name, stage_cfg.refine.coef, stage_cfg.train.grad_accum))
        for out in stage_outputs(name, stage_cfg):
            out.mkdir(parents=True, exist_ok=True)
            (
                out
                / (
                    "summary.json"
                    if name in ("positions", "midtrain_sft", "midtrain_refine")
                    else "scores.json"
                )
            ).write_text("{}")
        return StageResult(name, [])

    monkeypatch.setattr(experiment, "run_stage", fake_run_stage)
    done = run_ablations(cfg)
    assert [n for n, _ in done if n == "coef-0p4"] == ["coef-0p4"] * len(ABLATION_STAGES)
    assert {s for n, s in done if n == "ga"} == {
        *ABLATION_STAGES,
        "midtrain_sft",
        *(f"{s}@sft" for s in EVAL_STAGES),
    }
    assert all(coef == 0.4 for name, coef, _ in ran if name == "midtrain_refine" and coef != 0.2)
    assert {(c, g) for n, c, g in ran if n == "midtrain_refine"} == {(0.4, 1), (0.2, 2)}
    assert run_ablations(cfg) == []  # everything is there: nothing runs again


def test_the_page_has_the_ablations_table_against_the_right_sft(tmp_path):
    cfg = _config(tmp_path, "lifecycle.ablations={coef-0p4: [refine.coef=0.4], ga: [train.grad_accum=2]}")
    _base(tmp_path)
    _arms_at_seeds(tmp_path, gain=[3.0, -1.0, -2.0])  # seed 0: SFT 20, ReFINE 23
    ablation = tmp_path / "exp" / "ablation-coef-0p4"
    _scores(ablation / "eval" / "ruler_qa" / "refine", "refine", 0, "ruler_qa", 26.0)
    _run(ablation / "runs" / "refine", 0)
    own = tmp_path / "exp" / "ablation-ga"
    _scores(own / "eval" / "ruler_qa" / "refine", "refine", 0, "ruler_qa", 30.0)
    _scores(own / "eval" / "ruler_qa" / "sft", "sft", 0, "ruler_qa", 35.0)
    md, js = write_experiment_results(cfg, command="refine experiment")
    rows = {r["ablation"]: r for r in json.loads(js.read_text())["ablations"]}
    coef = rows["coef-0p4"]["metrics"]["RULER QA: squad"]
    assert coef == {"score": 26.0, "minus_sft": 6.0, "minus_refine": 3.0}
    assert rows["coef-0p4"]["compared_sft"] == "sft"
    ga = rows["ga"]["metrics"]["RULER QA: squad"]
    assert rows["ga"]["compared_sft"] == "ablation ga sft" and ga["minus_sft"] == -5.0
    text = md.read_text()
    assert "## Ablations" in text and "| coef-0p4 | refine.coef=0.4 | sft | 26.0 (+6.0) |" in text
    row = next(r for r in json.loads(js.read_text())["headline"] if r["metric"] == "RULER QA: squad")
    assert row["seeds"] == [0, 1, 2]  # the ablations stay out of the headline's pairs


def test_the_ablations_can_come_from_another_lifecycle_run_against_its_own_sft(tmp_path, monkeypatch):
    """`refine report --experiment --ablations-from DIR`: the seeds from this run, the ablations (and the
    SFT and ReFINE they are compared with) from DIR's, a run with a base of its own."""
    here, there = tmp_path / "here", tmp_path / "there"
    relative = ["lifecycle.runs_dir=runs", "lifecycle.eval_dir=eval", "lifecycle.positions_dir=positions",
                "lifecycle.experiment_dir=exp", f"lifecycle.results_dir={tmp_path / 'docs'}",
                "lifecycle.seeds=[1, 2]", "lifecycle.ablations={coef-0p4: [refine.coef=0.4]}"]  # fmt: skip
    cfg = load_config(None, relative)
    _arms_at_seeds(here, gain=[3.0, -1.0, -2.0])  # seed 0 here: SFT 20, ReFINE 23
    _scores(
        here / "exp" / "ablation-coef-0p4" / "eval" / "ruler_qa" / "refine", "refine", 0, "ruler_qa", 99.0
    )
    _run(there / "runs" / "base", 0)
    for arm, score in (("base", 5.0), ("sft", 10.0), ("refine", 12.0)):
        _scores(there / "eval" / "ruler_qa" / arm, arm, 0, "ruler_qa", score)
        _run(there / "runs" / arm, 0)
    ablation = there / "exp" / "ablation-coef-0p4"
    _scores(ablation / "eval" / "ruler_qa" / "refine", "refine", 0, "ruler_qa", 15.0)
    _run(ablation / "runs" / "refine", 0)
    monkeypatch.chdir(here)
    md, js = write_experiment_results(cfg, command="refine report --experiment", ablations_from=there)
    data = json.loads(js.read_text())
    coef = data["ablations"][0]["metrics"]["RULER QA: squad"]
    assert coef == {"score": 15.0, "minus_sft": 5.0, "minus_refine": 3.0}  # there's SFT and ReFINE
    assert data["ablation_reference"]["sft"]["RULER QA: squad"] == 10.0
    assert str(there) in data["ablations_source"]
    row = next(r for r in data["headline"] if r["metric"] == "RULER QA: squad")
    assert row["seeds"] == [0, 1, 2] and row["sft"]["mean"] == pytest.approx(30.0)  # here's seeds only
    text = md.read_text()
    assert "another lifecycle run" in text and "| coef-0p4 | refine.coef=0.4 | sft | 15.0 (+5.0) |" in text
    assert "ablations' sft seed 0" in data["runs"] and "99.0" not in text  # here's own ablation left out
    with pytest.raises(ConfigError, match="no ablation has evaluation scores"):
        write_experiment_results(cfg, ablations_from=here / "runs")
    with pytest.raises(ConfigError, match="no such folder"):
        write_experiment_results(cfg, ablations_from=tmp_path / "nowhere")
