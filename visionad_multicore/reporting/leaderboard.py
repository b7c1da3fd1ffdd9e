"""Leaderboards from VisionAD-layout results: epoch selection, per-dataset tables, means, ranks, outputs.

Rows are (algorithm, method) pairs: VisionAD algorithms return several heatmap *methods* per run (MultiCore
returns ``multicore``, ``ensemble_mean`` and one per member), and every method is scored. The algorithm label
is VisionAD's folder name ``<algo_class_name>_<model_description>``.

Epoch selection per (algorithm, method, dataset):
    ``final``  the last evaluated epoch that scored the method;
    ``best``   the epoch with the highest ``best_metric`` for that method (earliest on ties, as VisionAD's
               ``save_best_preds``); note this picks an epoch *on the test set*, so tables say so.

When the same (algorithm, dataset) appears in several runs, the newest run (``data.json["time"]``) is used and
a warning names the others.

Ranks: for each dataset and metric the rows are ranked (1 = best, ties share the average rank); a row's rank
for a metric is the mean of its ranks over the datasets it has; its mean rank is the mean over metrics.
Published reference rows are never ranked.

This module builds the tables; :mod:`.formats` renders them as markdown, CSV or JSON (its functions are
re-exported here).
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from scipy.stats import rankdata

from .formats import PUBLISHED_MARK, metric_title, render, to_csv, to_json, to_markdown
from .results import DEFAULT_METRICS, EpochResult, ScanReport, _warn, scan_results

# The formatters live in .formats; they are re-exported here, where callers have always found them.
__all__ = [
    "DEFAULT_PUBLISHED_DIR",
    "PUBLISHED_MARK",
    "Leaderboard",
    "MeanRow",
    "RankRow",
    "Row",
    "build_leaderboard",
    "load_published",
    "matches",
    "mean_over_datasets",
    "metric_title",
    "rank_rows",
    "render",
    "select_rows",
    "to_csv",
    "to_json",
    "to_markdown",
]

EpochMode = Literal["final", "best"]
DEFAULT_PUBLISHED_DIR = Path(__file__).resolve().parents[2] / "benchmark_runs" / "published"


@dataclass(frozen=True)
class Row:
    """One (algorithm, method, dataset) result.

    Attributes:
        algorithm: algorithm label (``algo_<model description>``) or a published algorithm name.
        method: heatmap method name.
        dataset: dataset key.
        epoch: selected epoch (None for published rows).
        metrics: ``{metric: value}`` for the requested metrics the run has.
        train_time_per_image: seconds (VisionAD: total train time / number of training images).
        inference_time_per_image: seconds (VisionAD: test time / number of test images).
        source: the epoch folder, or the published source.
        published: True for reference numbers copied from a paper.
        note: free text (published rows: variant, hardware, what the number is).
    """

    algorithm: str
    method: str
    dataset: str
    epoch: int | None
    metrics: dict[str, float]
    train_time_per_image: float | None
    inference_time_per_image: float | None
    source: str
    published: bool = False
    note: str = ""


@dataclass(frozen=True)
class MeanRow:
    """Mean of one (algorithm, method) over the datasets it was run on."""

    algorithm: str
    method: str
    n_datasets: int
    metrics: dict[str, float]
    train_time_per_image: float | None
    inference_time_per_image: float | None


@dataclass(frozen=True)
class RankRow:
    """Mean rank of one (algorithm, method) per metric over datasets, and the mean over metrics."""

    algorithm: str
    method: str
    n_datasets: int
    ranks: dict[str, float]
    mean_rank: float


@dataclass
class Leaderboard:
    """Everything a leaderboard output shows."""

    metrics: list[str]
    epoch_mode: EpochMode
    best_metric: str
    rows: list[Row]
    means: list[MeanRow]
    ranks: list[RankRow]
    published: list[Row] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def datasets(self) -> list[str]:
        """Datasets of our rows, sorted."""
        return sorted({r.dataset for r in self.rows})

    @property
    def selection(self) -> str:
        """Human description of the epoch selection."""
        if self.epoch_mode == "final":
            return "final evaluated epoch"
        return f"best epoch by {self.best_metric} per method (chosen on the test set)"


def _newest_run_only(epochs: list[EpochResult], warnings: list[str]) -> list[EpochResult]:
    """Keep, per (label, dataset), the epochs of the newest run folder; warn about the others."""
    by_key: dict[tuple[str, str], dict[Path, list[EpochResult]]] = defaultdict(lambda: defaultdict(list))
    for e in epochs:
        by_key[(e.label, e.dataset)][e.dataset_dir].append(e)
    kept: list[EpochResult] = []
    for (label, dataset), runs in by_key.items():
        ordered = sorted(runs, key=lambda d: (max(x.run_time for x in runs[d]), str(d)))
        newest = ordered[-1]
        if len(ordered) > 1:
            others = ", ".join(str(d) for d in ordered[:-1])
            _warn(
                warnings, f"{label} on {dataset} appears in several runs; using {newest}, ignoring {others}"
            )
        kept.extend(runs[newest])
    return kept


def select_rows(
    epochs: Sequence[EpochResult],
    metrics: Sequence[str] = DEFAULT_METRICS,
    epoch_mode: EpochMode = "final",
    best_metric: str = "PL",
    warnings: list[str] | None = None,
) -> list[Row]:
    """Pick one epoch per (algorithm, method, dataset) and return the table rows.

    Args:
        epochs: scanned epoch folders.
        metrics: metric names to keep in the rows.
        epoch_mode: ``"final"`` (last epoch scoring the method) or ``"best"`` (highest ``best_metric``).
        best_metric: metric used by ``epoch_mode="best"``.
        warnings: list that receives warnings (duplicate runs, a method without ``best_metric``).

    Returns:
        Rows sorted by (dataset, algorithm, method).
    """
    if epoch_mode not in ("final", "best"):
        raise ValueError(f"epoch_mode must be 'final' or 'best', got {epoch_mode!r}")
    warnings = [] if warnings is None else warnings
    groups: dict[tuple[str, str], list[EpochResult]] = defaultdict(list)
    for e in _newest_run_only(list(epochs), warnings):
        groups[(e.label, e.dataset)].append(e)

    rows: list[Row] = []
    for (label, dataset), group in groups.items():
        group.sort(key=lambda e: e.epoch)
        for method in sorted({m for e in group for m in e.methods}):
            having = [e for e in group if any(method in v for v in e.metrics.values())]
            chosen = having[-1]
            if epoch_mode == "best":
                scored = [
                    (e.metrics[best_metric][method], e)
                    for e in having
                    if method in e.metrics.get(best_metric, {})
                    and not math.isnan(e.metrics[best_metric][method])
                ]
                if scored:
                    best_value = max(v for v, _ in scored)
                    chosen = next(e for v, e in scored if v == best_value)
                else:
                    _warn(
                        warnings,
                        f"{label}/{method} on {dataset}: no {best_metric} value (missing or NaN); using the final epoch",
                    )
            values = {m: chosen.metrics[m][method] for m in metrics if method in chosen.metrics.get(m, {})}
            rows.append(
                Row(
                    algorithm=label,
                    method=method,
                    dataset=dataset,
                    epoch=chosen.epoch,
                    metrics=values,
                    train_time_per_image=chosen.timings.get("train_time_per_image"),
                    inference_time_per_image=chosen.timings.get("inference_time_per_image"),
                    source=str(chosen.epoch_dir),
                )
            )
    rows.sort(key=lambda r: (r.dataset, r.algorithm, r.method))
    return rows


def matches(algorithm: str, method: str, patterns: Sequence[str] | None) -> bool:
    """True when no patterns are given or one matches ``algorithm/method`` or ``method`` (fnmatch)."""
    if not patterns:
        return True
    return any(
        fnmatch.fnmatchcase(f"{algorithm}/{method}", p) or fnmatch.fnmatchcase(method, p) for p in patterns
    )


def _nanmean(values: Iterable[float | None]) -> float | None:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def mean_over_datasets(rows: Sequence[Row], metrics: Sequence[str]) -> list[MeanRow]:
    """Mean of each metric and timing per (algorithm, method) over its datasets (NaN / missing skipped)."""
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r.algorithm, r.method)].append(r)
    means = []
    for (algorithm, method), group in sorted(groups.items()):
        values = {m: _nanmean(r.metrics.get(m) for r in group) for m in metrics}
        means.append(
            MeanRow(
                algorithm=algorithm,
                method=method,
                n_datasets=len({r.dataset for r in group}),
                metrics={m: v for m, v in values.items() if v is not None},
                train_time_per_image=_nanmean(r.train_time_per_image for r in group),
                inference_time_per_image=_nanmean(r.inference_time_per_image for r in group),
            )
        )
    return means


def rank_rows(rows: Sequence[Row], metrics: Sequence[str]) -> list[RankRow]:
    """Per-metric mean rank over datasets (1 = best, ties averaged) and mean rank over metrics.

    Returns:
        Rank rows sorted by mean rank (best first); rows with no finite metric are left out.
    """
    per_row: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    datasets: dict[tuple[str, str], set[str]] = defaultdict(set)
    by_dataset: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_dataset[r.dataset].append(r)
    for dataset_rows in by_dataset.values():
        for metric in metrics:
            scored = [
                (r, r.metrics[metric])
                for r in dataset_rows
                if metric in r.metrics and not math.isnan(r.metrics[metric])
            ]
            if not scored:
                continue
            ranks = rankdata([-v for _, v in scored], method="average")  # higher metric -> rank 1
            for (r, _), rank in zip(scored, ranks):
                per_row[(r.algorithm, r.method)][metric].append(float(rank))
                datasets[(r.algorithm, r.method)].add(r.dataset)
    out = []
    for key, by_metric in per_row.items():
        mean_ranks = {m: float(np.mean(v)) for m, v in by_metric.items()}
        out.append(
            RankRow(
                algorithm=key[0],
                method=key[1],
                n_datasets=len(datasets[key]),
                ranks=mean_ranks,
                mean_rank=float(np.mean(list(mean_ranks.values()))),
            )
        )
    out.sort(key=lambda r: (r.mean_rank, r.algorithm, r.method))
    return out


_PUBLISHED_FILE_KEYS = {"source", "rows"}
_PUBLISHED_SOURCE_KEYS = {"citation", "url", "location", "verified", "note"}
_PUBLISHED_ROW_KEYS = {
    "algorithm",
    "method",
    "dataset",
    "metrics",
    "train_time_per_image",
    "inference_time_per_image",
    "hardware",
    "note",
}


def _check_keys(found: Iterable[str], valid: set[str], where: str) -> None:
    unknown = sorted(set(found) - valid)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid keys are {sorted(valid)}")


def load_published(folder: str | os.PathLike[str] = DEFAULT_PUBLISHED_DIR) -> list[Row]:
    """Read the published reference rows from every ``*.yaml`` in ``folder``.

    File schema (see ``benchmark_runs/published/README.md``)::

        source: {citation, url, location, verified, note}
        rows:
          - {algorithm, method, dataset, metrics: {VisionAD metric name: value in [0, 1]},
             train_time_per_image, inference_time_per_image, hardware, note}

    Raises:
        FileNotFoundError: the folder does not exist or holds no YAML file.
        ValueError: a file has unknown keys, a missing required key or a non-numeric value (named).
    """
    root = Path(folder)
    files = sorted(root.glob("*.yaml")) if root.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"no published reference files (*.yaml) in {root}; pass --published-dir pointing at "
            "benchmark_runs/published of a visionad_multicore checkout"
        )
    rows: list[Row] = []
    for path in files:
        doc = yaml.safe_load(path.read_text())
        if not isinstance(doc, dict) or "rows" not in doc or "source" not in doc:
            raise ValueError(f"{path}: expected a mapping with keys 'source' and 'rows'")
        _check_keys(doc, _PUBLISHED_FILE_KEYS, str(path))
        _check_keys(doc["source"], _PUBLISHED_SOURCE_KEYS, f"{path}: source")
        citation = str(doc["source"].get("citation", path.name))
        for i, item in enumerate(doc["rows"]):
            where = f"{path}: rows[{i}]"
            _check_keys(item, _PUBLISHED_ROW_KEYS, where)
            for key in ("algorithm", "dataset"):
                if key not in item:
                    raise ValueError(f"{where}: missing required key {key!r}")
            metrics = {}
            for metric, value in (item.get("metrics") or {}).items():
                if not isinstance(value, int | float):
                    raise ValueError(f"{where}: metric {metric!r} must be a number, got {value!r}")
                metrics[str(metric)] = float(value)
            note = "; ".join(str(x) for x in (item.get("note"), item.get("hardware")) if x)
            rows.append(
                Row(
                    algorithm=str(item["algorithm"]),
                    method=str(item.get("method", "-")),
                    dataset=str(item["dataset"]),
                    epoch=None,
                    metrics=metrics,
                    train_time_per_image=item.get("train_time_per_image"),
                    inference_time_per_image=item.get("inference_time_per_image"),
                    source=citation,
                    published=True,
                    note=note,
                )
            )
    return rows


def build_leaderboard(
    results_dirs: Sequence[str | os.PathLike[str]] | ScanReport,
    metrics: Sequence[str] = DEFAULT_METRICS,
    epoch_mode: EpochMode = "final",
    best_metric: str = "PL",
    published: Sequence[Row] = (),
    methods: Sequence[str] | None = None,
) -> Leaderboard:
    """Scan results folders (or take a ready :class:`ScanReport`) and build the leaderboard.

    Args:
        results_dirs: folders to scan, or a :class:`ScanReport` already made from them.
        metrics: VisionAD metric names shown (columns, in order).
        epoch_mode: ``"final"`` or ``"best"`` (see the module docstring).
        best_metric: metric that ``"best"`` maximises.
        published: published reference rows (from :func:`load_published`), shown apart and never ranked.
        methods: optional ``fnmatch`` patterns on ``algorithm/method`` or ``method``; other rows are dropped.

    Raises:
        ValueError: no readable result was found (or none matches ``methods``).
    """
    report = results_dirs if isinstance(results_dirs, ScanReport) else scan_results(results_dirs)
    warnings = list(report.warnings)
    rows = select_rows(report.epochs, metrics, epoch_mode, best_metric, warnings)
    if methods:
        rows = [r for r in rows if matches(r.algorithm, r.method, methods)]
    if not rows:
        where = f" matching {list(methods)}" if methods else ""
        raise ValueError(f"no readable results found{where} (see the warnings above for skipped entries)")
    return Leaderboard(
        metrics=list(metrics),
        epoch_mode=epoch_mode,
        best_metric=best_metric,
        rows=rows,
        means=mean_over_datasets(rows, metrics),
        ranks=rank_rows(rows, metrics),
        published=list(published),
        warnings=warnings,
    )
