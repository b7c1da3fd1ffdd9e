"""Bar chart of a leaderboard: one panel per metric, a group of bars per dataset plus the mean.

Published reference rows, when the leaderboard has them, get their own groups (their datasets are paper-level
aggregates such as "MVTec AD, mean of 15 classes") and are drawn hatched, labelled "published, not reproduced".
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

from .formats import metric_title
from .leaderboard import Leaderboard
from .results import atomic_savefig


def _lower_limit(values: list[float]) -> float:
    """A y-axis floor that keeps close scores apart (AUCs near 1) without hiding low ones."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return 0.0
    low = min(finite)
    return max(0.0, math.floor((low - 0.05) * 10) / 10)


def plot_leaderboard(board: Leaderboard, path: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Write a grouped bar chart PNG of ``board`` to ``path`` (atomically) and return the path.

    Rows are our (algorithm, method) pairs, each with its own colour; groups are the datasets and "mean".
    """
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    series = [(m.algorithm, m.method) for m in board.means]
    groups = [*board.datasets, "mean"]
    value_of: dict[tuple[str, str, str, str], float] = {}
    for r in board.rows:
        for metric, v in r.metrics.items():
            value_of[(r.algorithm, r.method, r.dataset, metric)] = v
    for m in board.means:
        for metric, v in m.metrics.items():
            value_of[(m.algorithm, m.method, "mean", metric)] = v
    published = board.published
    pub_groups = sorted({r.dataset for r in published if set(r.metrics) & set(board.metrics)})

    cmap = matplotlib.colormaps["tab20" if len(series) > 10 else "tab10"]
    n_metrics = len(board.metrics)
    width_in = max(8.0, 1.2 + 0.28 * (len(series) + 1) * (len(groups) + len(pub_groups)))
    fig = Figure(figsize=(min(width_in, 30.0), 2.6 * n_metrics + 0.6))
    axes = fig.subplots(n_metrics, 1, squeeze=False)
    bar_w = 0.8 / max(1, len(series))
    for ax, metric in zip(axes[:, 0], board.metrics):
        all_values: list[float] = []
        for i, (algorithm, method) in enumerate(series):
            xs: list[float] = []
            ys: list[float] = []
            for g, group in enumerate(groups):
                value = value_of.get((algorithm, method, group, metric))
                if value is not None and not math.isnan(value):
                    xs.append(g - 0.4 + bar_w * (i + 0.5))
                    ys.append(value)
            all_values += ys
            ax.bar(xs, ys, width=bar_w, color=cmap(i % cmap.N), label=f"{algorithm} / {method}")
        floor = _lower_limit(all_values + [r.metrics[metric] for r in published if metric in r.metrics])
        for g, dataset in enumerate(pub_groups):
            refs = [r for r in published if r.dataset == dataset and metric in r.metrics]
            if not refs:
                ax.text(
                    len(groups) + g,
                    floor + 0.02 * (1 - floor),
                    "no published value",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color="0.4",
                )
            w = 0.8 / max(1, len(refs))
            for j, r in enumerate(refs):
                x = len(groups) + g - 0.4 + w * (j + 0.5)
                ax.bar(x, r.metrics[metric], width=w, color="white", edgecolor="0.3", hatch="//")
                ax.text(
                    x, floor + 0.01, r.algorithm, rotation=90, ha="center", va="bottom", fontsize=7,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
                )  # fmt: skip
                all_values.append(r.metrics[metric])
        ax.set_ylim(floor, 1.0)
        ax.set_ylabel(metric_title(metric))
        ax.grid(axis="y", alpha=0.3)
        labels = groups + [textwrap.fill(d, 16) + "\n(published,\nnot reproduced)" for d in pub_groups]
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_xlim(-0.6, len(labels) - 0.4)
    axes[0, 0].legend(
        loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, title="algorithm / method"
    )
    fig.suptitle(f"Leaderboard ({board.selection})", fontsize=10)
    fig.tight_layout()
    return atomic_savefig(fig, path, dpi=dpi)
