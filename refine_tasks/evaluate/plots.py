"""Figures of an evaluation report: the NIAH heat-map, LongBench per-task bars and training curves
(matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def niah_heatmap(cells: pd.DataFrame, title: str, path: Path) -> Path:
    """Score by context length (x) and needle depth (y), like the usual NIAH plots.

    `cells` has columns length, depth, score (0-100) and n_samples; cells of several
    variants are averaged, weighted by their sample counts.
    """
    if cells.empty:
        raise ValueError(f"{title}: no NIAH results to plot")
    weighted = cells.assign(mass=cells.score * cells.n_samples)
    grid = weighted.groupby(["depth", "length"])[["mass", "n_samples"]].sum()
    table = (grid.mass / grid.n_samples).unstack("length").sort_index(ascending=True)
    lengths, depths = list(table.columns), list(table.index)
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(lengths), 1.2 + 0.45 * len(depths)))
    image = ax.imshow(table.to_numpy(), cmap="RdYlGn", vmin=0, vmax=100, aspect="auto", origin="upper")
    for (i, j), value in np.ndenumerate(table.to_numpy()):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" if n % 1024 == 0 else str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="score")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def longbench_bars(scores: pd.DataFrame, title: str, path: Path) -> Path:
    """Grouped bars: one group per LongBench task, one bar per run. `scores`: tasks x runs (0-100)."""
    if scores.empty:
        raise ValueError(f"{title}: no LongBench results to plot")
    tasks, runs = list(scores.index), list(scores.columns)
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(tasks) * max(1, len(runs) / 2)), 4.2))
    for k, run in enumerate(runs):
        xs = np.arange(len(tasks)) + (k - (len(runs) - 1) / 2) * width
        bars = ax.bar(xs, scores[run].to_numpy(), width, label=run)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_ylabel("score")
    top = float(np.nanmax(scores.to_numpy())) if scores.notna().any().any() else 0.0
    ax.set_ylim(0, max(10.0, top * 1.15))
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curve_plot(runs: dict[str, list[dict]], keys: tuple[str, ...], title: str, path: Path) -> Path | None:
    """One panel per key, one line per run (label -> metric lines); None when no run logged a key."""
    keys = tuple(k for k in keys if any(k in line for lines in runs.values() for line in lines))
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for label, lines in runs.items():
            points = [(x["step"], x[key]) for x in lines if key in x]
            if points:
                ax.plot(*zip(*points, strict=True), label=label, linewidth=1.2)
        ax.set_title(f"{title}: {key}")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
