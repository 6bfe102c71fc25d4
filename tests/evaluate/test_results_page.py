"""The experiment's statistics (bootstrap CIs, the paired difference) and its page, on synthetic
evaluation and training outputs."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from refine_tasks.evaluate.experiment import (
    Interval,
    bootstrap_ci,
    chance_of_excluding_zero,
    gains,
    headline,
    held_out_turn,
    metric_scores,
    paired_difference,
    verdict,
    write_results,
)


def test_bootstrap_ci_of_normal_data_matches_the_normal_theory():
    x = np.random.default_rng(1).normal(2.0, 1.0, size=400)
    ci = bootstrap_ci(x)
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)  # the CLT interval the bootstrap approximates
    assert ci.mean == pytest.approx(x.mean(), abs=1e-12) and ci.n == 400
    assert ci.low == pytest.approx(x.mean() - half, abs=0.012)
    assert ci.high == pytest.approx(x.mean() + half, abs=0.012)
    assert bootstrap_ci(x) == ci  # seeded: the same page every time


def test_bootstrap_ci_edge_cases_and_bad_input():
    assert bootstrap_ci([5.0, 5.0, 5.0]) == Interval(5.0, 5.0, 5.0, 3)
    assert bootstrap_ci([4.0]) == Interval(4.0, 4.0, 4.0, 1)
    # three seeds: every resampled mean lies between the smallest and the largest value
    ci = bootstrap_ci([1.0, 2.0, 6.0])
    assert 1.0 <= ci.low < 3.0 < ci.high <= 6.0
    with pytest.raises(ValueError, match="non-empty 1-D"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([1.0, float("nan")])


def test_paired_difference_removes_the_shared_seed_effect():
    seed_effect = np.array([10.0, 30.0, 50.0, 70.0])  # large spread across seeds, same in both arms
    sft, refine = seed_effect, seed_effect + 3.0
    paired = paired_difference(refine, sft)
    assert paired == Interval(3.0, 3.0, 3.0, 4) and paired.excludes_zero()
    unpaired_low = bootstrap_ci(refine).low - bootstrap_ci(sft).high
    assert unpaired_low < 0  # the arms' own CIs overlap; pairing is what shows the difference
    with pytest.raises(ValueError, match="pair them by seed"):
        paired_difference([1.0, 2.0], [1.0])


def _cells(seeds=(0, 1, 2), gain=5.0) -> pd.DataFrame:
    """Evaluation rows: a seed effect of 10 per seed shared by both arms, ReFINE `gain` above SFT."""
    rng = np.random.default_rng(0)
    rows = []
    for arm in ("base", "sft", "refine"):
        plus = gain if arm == "refine" else 0.0
        for seed in seeds if arm != "base" else (0,):
            for task in ("niah_single_1", "niah_multikey_1"):
                for length in (1024, 2048):
                    for depth in (0.0, 50.0):
                        score = 40 + plus + 10 * seed + rng.uniform(-1, 1)
                        rows.append((arm, f"/c/{arm}", "niah", task, length, depth, 4, score, seed))
            rows.append((arm, f"/c/{arm}", "ruler_qa", "squad", None, None, 8, 20.0 + seed + plus, seed))
            rows.append((arm, f"/c/{arm}", "longbench", "trec", None, None, 2, 10.0 + seed + plus, seed))
    columns = ["run", "checkpoint", "family", "task", "length", "depth", "n_samples", "score", "seed"]
    return pd.DataFrame(rows, columns=columns)


def test_metrics_group_niah_by_variant_family_and_length():
    scores = metric_scores(_cells())
    metrics = set(scores.metric)
    assert {
        "S-NIAH 1K",
        "S-NIAH 2K",
        "S-NIAH avg",
        "MK-NIAH 1K",
        "RULER QA: squad",
        "LongBench average",
    } <= metrics
    odd = metric_scores(_cells().assign(length=lambda d: d.length.replace({1024: 512})))
    assert {"S-NIAH 512", "S-NIAH 2K"} <= set(odd.metric)
    one = scores[(scores.metric == "RULER QA: squad") & (scores.arm == "sft") & (scores.seed == 2)]
    assert one.score.item() == pytest.approx(22.0)


def test_headline_and_verdict_state_the_paired_gain():
    rows = headline(metric_scores(_cells(gain=5.0)))
    by = {r["metric"]: r for r in rows}
    qa = by["RULER QA: squad"]
    assert qa["refine_minus_sft"]["mean"] == pytest.approx(5.0) and qa["seeds"] == [0, 1, 2]
    assert qa["base"]["n"] == 1 and qa["sft"]["n"] == 3
    assert "ReFINE beats SFT" in verdict(rows) and "RULER QA: squad" in verdict(rows)
    flat = headline(metric_scores(_cells(gain=0.0)))
    text = verdict([r for r in flat if not r["metric"].startswith(("S-", "MK-"))])
    assert "does not beat SFT" in text


def test_the_bootstraps_false_positive_rate_at_few_seeds_is_the_one_the_page_states():
    # n = 3: the percentile interval excludes 0 exactly when all three differences share a sign
    assert chance_of_excluding_zero(3) == pytest.approx(2 / 2**3, abs=0.03)
    rng = np.random.default_rng(5)
    null = [paired_difference(rng.normal(size=3), rng.normal(size=3), resamples=2000) for _ in range(400)]
    assert np.mean([d.excludes_zero() for d in null]) == pytest.approx(chance_of_excluding_zero(3), abs=0.06)
    assert chance_of_excluding_zero(10) < chance_of_excluding_zero(6) < chance_of_excluding_zero(3)
    assert chance_of_excluding_zero(10) > 0.05  # still above the nominal 5% at ten seeds


def _row(metric: str, diffs) -> dict:
    return {"metric": metric, "refine_minus_sft": vars(bootstrap_ci(diffs))}


def test_the_verdict_is_decided_on_the_family_averages_not_a_per_task_win():
    rows = [
        _row("LongBench: qmsum", [1.0, 2.0, 1.5]),  # every seed up: its CI is above 0
        _row("LongBench: lcc", [-1.0, -2.0, -1.5]),  # every seed down
        _row("LongBench average", [0.4, -0.2, 0.1]),  # the primary metric holds 0
        _row("S-NIAH 1K", [0.0, 0.0, 0.0]),
        _row("S-NIAH avg", [0.0, 0.0, 0.0]),
    ]
    assert gains(rows) == ["LongBench: qmsum"] and gains(rows, primary_only=True) == []
    text = verdict(rows)
    assert "does not beat SFT at this scale on any primary metric" in text
    assert "Per task or length (3 metrics): ReFINE beats SFT on 1: LongBench: qmsum" in text
    # the chance line counts only the per-task metrics that vary (not the all-zero S-NIAH 1K)
    assert "of the 2 per-task metrics whose differences are not all 0" in text
    rows[2] = _row("LongBench average", [0.5, 0.6, 0.4])
    assert "beats SFT (95% CI of the difference above 0) on 1: LongBench average" in verdict(rows)
    assert "does not beat" not in verdict(rows)


def test_write_results_page_and_json_hold_the_same_numbers(tmp_path):
    metrics = [
        {"step": s, "loss": 3.0 - 0.1 * s, "ntp": 3.0 - 0.1 * s, "reward/cosine_mean": 0.1 * s}
        for s in range(1, 6)
    ]
    metrics[-1].update({"val/loss": 2.6, "val/accuracy": 0.3})
    summary = {"steps": 5, "tokens": 4096, "seconds": 12.5, "device": "NVIDIA H200", "final_ntp": 2.5}
    summary.update(final_val_loss=2.6, final_val_accuracy=0.3)
    runs = {
        f"{arm} seed {s}": {"seed": s, "protocol": arm, "summary": summary, "metrics": metrics}
        for arm in ("sft", "refine")
        for s in (0, 1, 2)
    }
    md, js = write_results(
        _cells(), runs, tmp_path / "docs", {"command": "refine experiment -p x.yaml", "date": "2026-12-02"}
    )
    page, data = md.read_text(), json.loads(js.read_text())
    assert "refine experiment -p x.yaml" in page and data["command"] == "refine experiment -p x.yaml"
    for r in data["headline"]:
        d = r["refine_minus_sft"]
        assert f"{d['mean']:.1f} [{d['low']:.1f}, {d['high']:.1f}]" in page
        assert r["metric"] in page
    for name in (
        "niah_base.png",
        "niah_sft.png",
        "niah_refine.png",
        "curves_loss.png",
        "curves_reward.png",
        "curves_validation.png",
    ):
        assert (tmp_path / "docs" / name).stat().st_size > 1000 and f"]({name})" in page
    assert data["runs"]["refine seed 1"]["summary"]["device"] == "NVIDIA H200"
    assert re.search(
        r"\| refine seed 2 \| refine \| 5 \| 4,096 \| 12 \| NVIDIA H200 \| 2.5000 \| 2.6000 \| 0.3000 \|",
        page,
    )
    assert data["finding"] in page
    assert "## Ablations" not in page  # none configured, none to report
    md, _ = write_results(
        _cells(), runs, tmp_path / "again", {"command": "c"}, {"coef-0p4": ["refine.coef=0.4"]}
    )
    assert "None of the 1 of lifecycle.ablations (coef-0p4) has scores yet" in md.read_text()


def test_the_page_says_when_the_bases_held_out_loss_turned_up():
    falling = [{"step": s, "val/loss": 7.0 - s / 100} for s in range(10, 110, 10)]
    assert held_out_turn(falling) is None and held_out_turn([]) is None
    turning = [{"step": s, "val/loss": 4.0 + abs(s - 300) / 400} for s in range(10, 2010, 10)]
    text = held_out_turn(turning + [{"step": 2010, "loss": 0.4}])  # a line without val/loss is passed over
    assert "lowest at step 300 (4.000) and ends at 8.250 at step 2,000" in text
    assert held_out_turn([{"step": 1, "val/loss": 4.0}, {"step": 2, "val/loss": 4.1}]) is None  # within 5%
