"""The experiment's page: base vs SFT vs ReFINE over seeds, with bootstrap confidence intervals.

Input: evaluation cells (`results_from_scores` rows) with a `seed` column, for the arms `base`
(one shared model), `sft` and `refine` (one run per seed: seed = mid-training data order and
rollout sampling), and each training run's metric lines. Output (`write_results`):
`results.md` (the headline table, per-metric tables, NIAH heat-maps, loss / reward / validation
curves as PNG) and `results.json` (every number on the page, with the runs' card, date, tokens,
steps, wall time and the command). Nothing on the page is typed by hand: every sentence that
states a finding is built from the numbers.

Statistics: per metric, each arm's mean over seeds with a percentile bootstrap 95% CI (seeds
resampled with replacement), and the *paired* difference ReFINE - SFT: per seed the difference of
the two runs that share that seed's data order, then its mean and bootstrap CI. A difference
whose CI excludes 0 is called a difference; anything else is "no difference shown".
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from refine_tasks.evaluate.plots import curve_plot, niah_heatmap
from refine_tasks.evaluate.records import EvalError
from refine_tasks.evaluate.report import FAMILY_TITLES, _md_table

ARMS = ("base", "sft", "refine")
NIAH_GROUPS = {"S-NIAH": "niah_single", "MK-NIAH": "niah_multikey", "MV-NIAH": "niah_multivalue", "MQ-NIAH": "niah_multiquery"}  # fmt: skip
CURVES = {
    "loss": ("loss", "ntp"),
    "reward": ("reward/cosine_mean",),
    "validation": ("val/loss", "val/accuracy"),
}


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its bootstrap confidence interval [low, high] and the seed count."""

    mean: float
    low: float
    high: float
    n: int

    def text(self) -> str:
        if self.n == 1:
            return f"{self.mean:.1f}"
        return f"{self.mean:.1f} [{self.low:.1f}, {self.high:.1f}]"

    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)


def bootstrap_ci(values, level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> Interval:
    """Mean of `values` [n] and the percentile bootstrap CI of the mean at `level`: resample the n
    values with replacement `resamples` times, take the (1-level)/2 and (1+level)/2 quantiles of
    the resampled means. One value: the CI is that value."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"bootstrap_ci: expected a non-empty 1-D array of finite numbers, got {x!r}")
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, mean, mean, 1)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(mean, float(low), float(high), int(x.size))


def paired_difference(treated, control, **kw) -> Interval:
    """ReFINE - SFT paired by seed: treated [n] and control [n] in the same seed order."""
    t, c = np.asarray(treated, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if t.shape != c.shape:
        raise ValueError(
            f"paired_difference: {t.size} treated against {c.size} control values; pair them by seed"
        )
    return bootstrap_ci(t - c, **kw)


def metric_scores(cells: pd.DataFrame) -> pd.DataFrame:
    """Scores (0-100) per (arm, seed, metric): NIAH groups per length (`S-NIAH 1K`) and over all
    lengths, each other task, and each family's average. cells: evaluation rows with `run` (the
    arm) and `seed`; scores are sample-weighted within a metric, family averages unweighted."""
    cells = cells.assign(mass=cells.score * cells.n_samples)
    rows: list[dict] = []

    def add(frame: pd.DataFrame, name: str, family: str) -> None:
        g = frame.groupby(["run", "seed"])[["mass", "n_samples"]].sum()
        for (arm, seed), r in g.iterrows():
            rows.append(
                {"arm": arm, "seed": seed, "family": family, "metric": name, "score": r.mass / r.n_samples}
            )

    niah = cells[cells.family == "niah"]
    for group, prefix in NIAH_GROUPS.items():
        part = niah[niah.task.str.startswith(prefix)]
        for length in sorted(set(part.length.dropna())):
            size = f"{int(length) // 1024}K" if length % 1024 == 0 else f"{int(length)}"
            add(part[part.length == length], f"{group} {size}", "niah")
        if not part.empty:
            add(part, f"{group} avg", "niah")
    for family in [f for f in dict.fromkeys(cells.family) if f != "niah"]:
        block = cells[cells.family == family]
        for task in sorted(set(block.task)):
            add(block[block.task == task], f"{FAMILY_TITLES.get(family, family)}: {task}", family)
    out = pd.DataFrame(rows, columns=["arm", "seed", "family", "metric", "score"])
    averages = (
        out[out.family != "niah"]
        .groupby(["arm", "seed", "family"], as_index=False)
        .score.mean()
        .assign(metric=lambda d: [f"{FAMILY_TITLES.get(f, f)} average" for f in d.family])
    )
    return pd.concat([out, averages], ignore_index=True)


def headline(scores: pd.DataFrame) -> list[dict]:
    """Per metric: base, SFT and ReFINE (mean and CI over seeds) and the paired ReFINE - SFT."""
    rows = []
    for metric in dict.fromkeys(scores.metric):
        m = scores[scores.metric == metric]
        row: dict = {"metric": metric, "family": m.family.iloc[0]}
        for arm in ARMS:
            values = m[m.arm == arm].sort_values("seed").score.to_numpy()
            row[arm] = vars(bootstrap_ci(values)) if values.size else None
        sft = m[m.arm == "sft"].set_index("seed").score
        refine = m[m.arm == "refine"].set_index("seed").score
        seeds = sorted(set(sft.index) & set(refine.index))
        row["refine_minus_sft"] = vars(paired_difference(refine[seeds], sft[seeds])) if seeds else None
        row["seeds"] = [int(s) for s in seeds]
        rows.append(row)
    return rows


def _cell(value: dict | None) -> str:
    return "—" if value is None else Interval(**value).text()


def is_primary(metric: str) -> bool:
    """A primary metric: a family's average (`S-NIAH avg`, `LongBench average`), fixed before any run.
    The per-length and per-task metrics are secondary: many, correlated, and each is noisy."""
    return metric.endswith((" avg", " average"))


def _excluding_zero(rows: list[dict], sign: int, primary_only: bool) -> list[str]:
    """The metrics whose paired difference's 95% CI leaves out 0 on the side of `sign` (+1 / -1)."""
    diffs = [(r["metric"], Interval(**r["refine_minus_sft"])) for r in rows if r["refine_minus_sft"]]
    return [
        m for m, d in diffs if d.excludes_zero() and d.mean * sign > 0 and (is_primary(m) or not primary_only)
    ]


def gains(rows: list[dict], primary_only: bool = False) -> list[str]:
    """The metrics where ReFINE beats SFT: the paired difference's 95% CI above 0 (of the primary
    metrics alone with primary_only)."""
    return _excluding_zero(rows, +1, primary_only)


def losses(rows: list[dict], primary_only: bool = False) -> list[str]:
    """The metrics where ReFINE is below SFT: the paired difference's 95% CI below 0."""
    return _excluding_zero(rows, -1, primary_only)


@functools.cache
def chance_of_excluding_zero(n: int, level: float = 0.95, trials: int = 2000, resamples: int = 1000) -> float:
    """How often bootstrap_ci's interval of a paired difference leaves out 0 when there is no true
    difference: the share of `trials` draws of n standard-normal differences (seeded) whose percentile
    bootstrap interval at `level` excludes 0. Far above 1 - level at few seeds (about 24% at n = 3,
    where it is exactly "all three of one sign"; 15% at 6; 9% at 10): the page states it."""
    if n < 2:
        return 1.0
    rng = np.random.default_rng(0)
    x = rng.standard_normal((trials, n))
    means = x[:, rng.integers(0, n, size=(resamples, n))].mean(axis=2)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return float(((low > 0) | (high < 0)).mean())


def verdict(rows: list[dict]) -> str:
    """The page's finding, from the paired differences only: decided on the primary metrics (the
    families' averages); the per-task and per-length ones are listed, with the chance that a metric
    without a true difference is counted at this number of seeds."""
    diffs = [(r["metric"], Interval(**r["refine_minus_sft"])) for r in rows if r["refine_minus_sft"]]
    if not diffs:
        return "No metric has both an SFT and a ReFINE run: nothing to compare."
    n = max(d.n for _, d in diffs)
    primary = [m for m, _ in diffs if is_primary(m)]
    up, down = gains(rows, primary_only=True), losses(rows, primary_only=True)
    sec_up = [m for m in gains(rows) if not is_primary(m)]
    sec_down = [m for m in losses(rows) if not is_primary(m)]
    lines = [
        f"Paired over {n} seed(s), on {len(diffs)} metrics ({len(primary)} primary: each family's average)."
    ]
    lines.append(
        f"On the primary metrics ReFINE beats SFT (95% CI of the difference above 0) on {len(up)}: "
        f"{', '.join(up) or 'none'}; it is below SFT (CI below 0) on {len(down)}: {', '.join(down) or 'none'}."
    )
    lines.append(
        f"Per task or length ({len(diffs) - len(primary)} metrics): ReFINE beats SFT on {len(sec_up)}: "
        f"{', '.join(sec_up) or 'none'}; it is below SFT on {len(sec_down)}: {', '.join(sec_down) or 'none'}."
    )
    varied = [m for m, d in diffs if not is_primary(m) and not d.low == d.high == d.mean == 0]
    if n > 1:
        chance = chance_of_excluding_zero(n)
        lines.append(
            f"At {n} seeds a metric with no true difference has its bootstrap CI leave out 0 about {chance:.0%} "
            f"of the time (simulated): of the {len(varied)} per-task metrics whose differences are not all 0, "
            f"about {chance * len(varied) / 2:.1f} each way by chance alone."
        )
    if not up:
        lines.append(
            "**ReFINE does not beat SFT at this scale on any primary metric.** The ablations that may explain "
            "it (positions, reward, rollout length, coefficient, update protocol) come before any conclusion."
        )
    return " ".join(lines)


def held_out_turn(metrics: list[dict], rise: float = 0.05) -> str | None:
    """A sentence when a run's held-out loss ends more than `rise` (relative) above its lowest: the
    step and value of the lowest and the last (the run over-fits its corpus from that step on).
    None when it did not (or has no held-out loss)."""
    points = [(m["step"], m["val/loss"]) for m in metrics if m.get("val/loss") is not None]
    if len(points) < 2:
        return None
    best_step, best = min(points, key=lambda p: p[1])
    last_step, last = points[-1]
    if last <= best * (1 + rise):
        return None
    return (
        f"The base's held-out loss (natural text it never read) was lowest at step {best_step:,} "
        f"({best:.3f}) and ends at {last:.3f} at step {last_step:,}: from step {best_step:,} on it fits its "
        f"own corpus at the cost of text it never read (over-fitting)."
    )


def ablation_rows(scores: pd.DataFrame, ablations: dict[str, list[str]], seed: int) -> list[dict]:
    """Per ablation that has scores: its settings, and per metric its score and the difference from
    the SFT it is compared with (its own, `ablation NAME sft`, if it trained one; else the lifecycle's
    SFT at `seed`) and from the lifecycle's ReFINE at `seed`. One run each: no interval."""
    at_seed = scores[scores.seed == seed].set_index(["arm", "metric"]).score
    rows = []
    for name, settings in ablations.items():
        arm = f"ablation {name}"
        if arm not in set(scores.arm):
            continue
        sft_arm = f"{arm} sft" if f"{arm} sft" in set(scores.arm) else "sft"
        metrics = {}
        for metric in dict.fromkeys(scores[scores.arm == arm].metric):
            score = float(at_seed[(arm, metric)])
            sft = at_seed.get((sft_arm, metric))
            refine = at_seed.get(("refine", metric))
            metrics[metric] = {
                "score": score,
                "minus_sft": None if sft is None else score - float(sft),
                "minus_refine": None if refine is None else score - float(refine),
            }
        rows.append(
            {"ablation": name, "settings": list(settings), "compared_sft": sft_arm, "metrics": metrics}
        )
    return rows


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def write_results(
    cells: pd.DataFrame,
    runs: dict[str, dict],
    out_dir: Path,
    meta: dict,
    ablations: dict[str, list[str]] | None = None,
    ablation_cells: pd.DataFrame | None = None,
    ablation_source: str | None = None,
) -> tuple[Path, Path]:
    """Write out_dir/results.md and results.json (see the module docstring). cells: evaluation rows
    with run (arm) and seed; runs: label ("sft seed 1") -> {"summary": summary.json, "metrics":
    metric lines, "protocol": ..., ...}; meta: command, date, card and anything else to record;
    ablations: name -> settings of the `ablation NAME` runs among the cells (a table of their own);
    ablation_cells: the ablations' cells instead, from another lifecycle run (ablation_source names it),
    with the base, SFT and ReFINE of that run at the first seed, which they are compared with."""
    if cells.empty:
        raise EvalError(f"{out_dir}: no evaluation results to report; run the evaluations first")
    out_dir.mkdir(parents=True, exist_ok=True)
    scores = metric_scores(cells)
    rows = headline(scores)
    figures: list[str] = []
    for arm in ARMS:
        niah = cells[(cells.run == arm) & (cells.family == "niah")]
        if not niah.empty:
            path = niah_heatmap(
                niah.drop(columns="seed"), f"NIAH: {arm} (all seeds)", out_dir / f"niah_{arm}.png"
            )
            figures.append(path.name)
    # Mid-training runs share an axis; the base (many more steps) gets a figure of its own.
    mid = {k: v["metrics"] for k, v in runs.items() if k != "base"}
    plots = [(mid, keys, name, f"curves_{name}.png") for name, keys in CURVES.items()]
    base = {k: v["metrics"] for k, v in runs.items() if k == "base"}
    plots.append((base, ("loss", "val/loss", "val/retrieval_gain"), "base", "curves_base.png"))
    for curves, keys, name, file in plots:
        path = curve_plot(curves, keys, name, out_dir / file)
        if path is not None:
            figures.append(path.name)
    finding = verdict(rows)
    configured = [int(x) for x in meta.get("seeds", [])]
    paired = sorted({seed for r in rows for seed in r["seeds"]})
    missing = [seed for seed in configured if seed not in paired]
    if missing:  # a run still under way, or one cut short: the page says which seeds it lacks
        finding += (
            f" Seed(s) {', '.join(map(str, missing))} of the {len(configured)} configured have no paired "
            f"SFT and ReFINE evaluations yet; the intervals are over seed(s) {', '.join(map(str, paired)) or 'none'}."
        )
    md = [
        "# Results: base vs SFT vs ReFINE\n",
        f"Written by `{meta.get('command', 'refine report')}`; {meta.get('date', '')}.\n",
    ]
    md.append(finding + "\n")
    probe = runs.get("base", {}).get("summary", {}).get("recall_probe")
    if probe:  # refine_tasks.train.recall_probe: whether the base retrieves at all, in its own wording
        shares = [
            "-" if x is None else f"{100 * x:.1f}" for x in (probe["use_exact"], probe["statement_exact"])
        ]
        md.append(
            f"The base's recall probe (generated documents from text it never read; values copied whole, "
            f"x 100): {shares[0]} at later uses ({probe['uses']} values), {shares[1]} where first stated "
            f"({probe['statements']}, not retrievable)."
            + (
                f" Its value tokens' log-probability is {probe['gain']:+.3f} nats/token where used over where "
                "stated (above 0 only for a model that reads a value back from its statement)."
                if probe.get("gain") is not None
                else ""
            )
            + "\n"
        )
    overfit = held_out_turn(runs.get("base", {}).get("metrics", []))
    if overfit:
        md.append(overfit + "\n")
    md.append("## Headline (scores x 100; mean [95% bootstrap CI] over seeds)\n")
    md.append(
        _md_table(
            ["metric", "base", "SFT", "ReFINE", "ReFINE - SFT (paired)"],
            [
                [
                    r["metric"],
                    _cell(r["base"]),
                    _cell(r["sft"]),
                    _cell(r["refine"]),
                    _cell(r["refine_minus_sft"]),
                ]
                for r in rows
            ],
        )
    )
    seed = configured[0] if configured else int(cells.seed.min())
    ablation_scores = scores if ablation_cells is None else metric_scores(ablation_cells)
    ablated = ablation_rows(ablation_scores, ablations or {}, seed)
    reference: dict[str, dict[str, float]] = {}
    if ablated:
        summaries = [m for m in dict.fromkeys(scores.metric) if m.endswith((" avg", " average"))]
        md.append(f"\n## Ablations (seed {seed}, one run each; score, then its difference from SFT)\n")
        md.append(
            "Each is a ReFINE run from the same base with the settings shown; it is compared with the "
            "lifecycle's SFT, or with an SFT at the same settings where it changes train.* "
            "(`compared with`). Every metric is in results.json.\n"
        )
        table = []
        if ablation_cells is not None:
            at_seed = ablation_scores[ablation_scores.seed == seed]
            for arm in ARMS:
                got = at_seed[at_seed.arm == arm].set_index("metric").score
                reference[arm] = {m: float(v) for m, v in got.items()}
            md.append(
                f"These runs come from another lifecycle run, with a base of its own: {ablation_source}. "
                f"Its base, SFT and ReFINE at seed {seed} are the first rows, and every difference is "
                "from that run's SFT, not from the headline's.\n"
            )
            table += [
                [f"{arm} (that run)", "-", "-", *(
                    f"{reference[arm][m]:.1f}" if m in reference[arm] else "-" for m in summaries
                )]
                for arm in ARMS
            ]  # fmt: skip
        for row in ablated:
            cells_ = [
                f"{m['score']:.1f} ({_signed(m['minus_sft'])})" if (m := row["metrics"].get(name)) else "-"
                for name in summaries
            ]
            table.append([row["ablation"], ", ".join(row["settings"]), row["compared_sft"], *cells_])
        md.append(_md_table(["ablation", "settings", "compared with", *summaries], table))
    elif ablations:
        md.append("\n## Ablations\n")
        md.append(
            f"None of the {len(ablations)} of lifecycle.ablations ({', '.join(ablations)}) has scores yet: "
            "`refine experiment` runs them when ReFINE beats SFT on no primary metric.\n"
        )
    md.append("\n## Runs\n")
    md.append(
        "Last batch NTP is one batch's loss (it varies with the batch); held-out loss and next-token "
        "accuracy are on the run's held-out sequences at its last validation (train.val_every).\n"
    )

    def number(value, form: str) -> str:
        return "-" if value is None else format(value, form)

    run_rows = []
    for label, run in runs.items():
        s = run.get("summary", {})
        run_rows.append(
            [
                label,
                str(run.get("protocol", "-")),
                str(s.get("steps", "-")),
                f"{s.get('tokens', 0):,}",
                f"{s.get('seconds', 0):.0f}",
                str(s.get("device", "-")),
                number(s.get("final_ntp"), ".4f"),
                number(s.get("final_val_loss"), ".4f"),
                number(s.get("final_val_accuracy"), ".4f"),
            ]
        )
    header = ["run", "protocol", "steps", "tokens", "wall s", "device", "last batch NTP", "held-out loss"]
    md.append(_md_table([*header, "held-out accuracy"], run_rows))
    md.append("\n## Figures\n")
    md += [f"![{name}]({name})\n" for name in figures]
    md_path, json_path = out_dir / "results.md", out_dir / "results.json"
    md_path.write_text("\n".join(md), encoding="utf-8")
    payload = {
        **meta,
        "seeds": paired,  # the seeds the paired differences are over
        "seeds_configured": configured,
        "finding": finding,
        "headline": rows,
        "ablations": ablated,
        "ablations_source": ablation_source,
        "ablation_reference": reference,
        "scores": scores.to_dict(orient="records"),
        "runs": {k: {kk: vv for kk, vv in v.items() if kk != "metrics"} for k, v in runs.items()},
        "figures": figures,
    }
    json_path.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    return md_path, json_path
