"""Leaderboard outputs: markdown, CSV and JSON renderings of a :class:`~.leaderboard.Leaderboard`.

The tables themselves (epoch selection, means, ranks, published rows) are built in :mod:`.leaderboard`; this
module only formats them. Published reference rows are marked with :data:`PUBLISHED_MARK` everywhere and
never bolded as best.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Literal

from .results import METRIC_TITLES

if TYPE_CHECKING:
    from .leaderboard import Leaderboard, MeanRow, Row

PUBLISHED_MARK = "published, not reproduced"


def metric_title(metric: str) -> str:
    """Short column title of a VisionAD metric name (``Pixelwise_AUC`` -> ``P-AUC``); unknown names as is."""
    return METRIC_TITLES.get(metric, metric)


def _fmt_metric(value: float | None) -> str:
    if value is None:
        return "-"
    return "nan" if math.isnan(value) else f"{value:.4f}"


def _fmt_time(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.4g}"


def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _bold_best(
    body: list[list[str]], rows: Sequence[Row | MeanRow], metrics: Sequence[str], offset: int
) -> None:
    """Bold the best value of each metric column among non-published rows (in place)."""
    for j, metric in enumerate(metrics):
        values = [
            r.metrics.get(metric, math.nan) if not getattr(r, "published", False) else math.nan for r in rows
        ]
        finite = [v for v in values if not math.isnan(v)]
        if not finite:
            continue
        best = max(finite)
        for i, v in enumerate(values):
            if v == best:
                body[i][offset + j] = f"**{body[i][offset + j]}**"


def to_markdown(board: Leaderboard) -> str:
    """The leaderboard as markdown: one table per dataset, the mean, the ranks and published rows."""
    titles = [metric_title(m) for m in board.metrics]
    out = [
        "# Leaderboard",
        "",
        f"Epoch selection: {board.selection}. Metrics as VisionAD computes them; times in seconds per image "
        "(train: total training time / training images; inference: test time / test images). "
        "Best value per column in bold.",
        "",
    ]
    for dataset in board.datasets:
        ours = [r for r in board.rows if r.dataset == dataset]
        refs = [r for r in board.published if r.dataset == dataset]
        header = ["algorithm", "method", *titles, "train s/img", "infer s/img", "epoch"]
        body = [
            [
                r.algorithm,
                r.method,
                *(_fmt_metric(r.metrics.get(m)) for m in board.metrics),
                _fmt_time(r.train_time_per_image),
                _fmt_time(r.inference_time_per_image),
                str(r.epoch),
            ]
            for r in ours
        ]
        _bold_best(body, ours, board.metrics, offset=2)
        body += [
            [
                f"{r.algorithm} †",
                r.method,
                *(_fmt_metric(r.metrics.get(m)) for m in board.metrics),
                _fmt_time(r.train_time_per_image),
                _fmt_time(r.inference_time_per_image),
                PUBLISHED_MARK,
            ]
            for r in refs
        ]
        out += [f"## {dataset}", "", _md_table(header, body), ""]
        if refs:
            out += [
                f"† {PUBLISHED_MARK}: numbers copied from the cited paper, not produced by this package.",
                "",
            ]

    n_datasets = len(board.datasets)
    header = ["algorithm", "method", "datasets", *titles, "train s/img", "infer s/img"]
    body = [
        [
            r.algorithm,
            r.method,
            f"{r.n_datasets}/{n_datasets}",
            *(_fmt_metric(r.metrics.get(m)) for m in board.metrics),
            _fmt_time(r.train_time_per_image),
            _fmt_time(r.inference_time_per_image),
        ]
        for r in board.means
    ]
    _bold_best(body, board.means, board.metrics, offset=3)
    out += [
        f"## Mean over datasets ({n_datasets})",
        "",
        "Rows run on fewer datasets than the others are averaged over the ones they have (see 'datasets').",
        "",
        _md_table(header, body),
        "",
    ]
    header = ["rank", "algorithm", "method", "datasets", *titles, "mean rank"]
    body = [
        [
            str(i + 1),
            r.algorithm,
            r.method,
            str(r.n_datasets),
            *(f"{r.ranks[m]:.2f}" if m in r.ranks else "-" for m in board.metrics),
            f"{r.mean_rank:.2f}",
        ]
        for i, r in enumerate(board.ranks)
    ]
    out += [
        "## Ranks",
        "",
        "Per metric: mean over datasets of the per-dataset rank (1 = best, ties averaged). Mean rank: mean over "
        "metrics.",
        "",
        _md_table(header, body),
        "",
    ]
    if board.published:
        header = ["algorithm", "method", "dataset", *titles, "train s/img", "infer s/img", "note", "source"]
        body = [
            [
                r.algorithm,
                r.method,
                r.dataset,
                *(_fmt_metric(r.metrics.get(m)) for m in board.metrics),
                _fmt_time(r.train_time_per_image),
                _fmt_time(r.inference_time_per_image),
                r.note or "-",
                r.source,
            ]
            for r in board.published
        ]
        out += [
            f"## Published reference results ({PUBLISHED_MARK})",
            "",
            "Copied from the papers cited in the 'source' column (benchmark_runs/published/). Not produced by "
            "this package, not on the datasets above unless the dataset name says so, and on other hardware: "
            "compare with care.",
            "",
            _md_table(header, body),
            "",
        ]
    if board.warnings:
        out += ["## Skipped or ambiguous entries", ""] + [f"- {w}" for w in board.warnings] + [""]
    return "\n".join(out)


CSV_COLUMNS_FIXED = ["kind", "dataset", "algorithm", "method", "epoch"]


def to_csv(board: Leaderboard) -> str:
    """The leaderboard as one flat CSV.

    Columns: ``kind`` (``dataset`` | ``mean`` | ``rank`` | ``published``), ``dataset`` (``mean`` / ``rank`` rows:
    empty), ``algorithm``, ``method``, ``epoch``, one column per metric (for ``rank`` rows: the mean rank),
    ``train_time_per_image``, ``inference_time_per_image``, ``n_datasets``, ``mean_rank``, ``source``.
    """
    header = [
        *CSV_COLUMNS_FIXED,
        *board.metrics,
        "train_time_per_image",
        "inference_time_per_image",
        "n_datasets",
        "mean_rank",
        "source",
    ]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)

    def num(v: float | None) -> str:
        return "" if v is None else repr(float(v))

    for r in board.rows:
        writer.writerow(
            [
                "dataset",
                r.dataset,
                r.algorithm,
                r.method,
                r.epoch,
                *(num(r.metrics.get(m)) for m in board.metrics),
                num(r.train_time_per_image),
                num(r.inference_time_per_image),
                1,
                "",
                r.source,
            ]
        )
    for m in board.means:
        writer.writerow(
            [
                "mean",
                "",
                m.algorithm,
                m.method,
                "",
                *(num(m.metrics.get(k)) for k in board.metrics),
                num(m.train_time_per_image),
                num(m.inference_time_per_image),
                m.n_datasets,
                "",
                "",
            ]
        )
    for k in board.ranks:
        writer.writerow(
            [
                "rank",
                "",
                k.algorithm,
                k.method,
                "",
                *(num(k.ranks.get(m)) for m in board.metrics),
                "",
                "",
                k.n_datasets,
                num(k.mean_rank),
                "",
            ]
        )
    for r in board.published:
        writer.writerow(
            [
                "published",
                r.dataset,
                r.algorithm,
                r.method,
                "",
                *(num(r.metrics.get(m)) for m in board.metrics),
                num(r.train_time_per_image),
                num(r.inference_time_per_image),
                "",
                "",
                f"{PUBLISHED_MARK}: {r.source}",
            ]
        )
    return buf.getvalue()


def _json_safe(value: Any) -> Any:
    """NaN -> None so the output is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def to_json(board: Leaderboard) -> str:
    """The leaderboard as JSON (``schema: visionad_multicore.leaderboard``, version 1; NaN written as null)."""
    doc = {
        "schema": "visionad_multicore.leaderboard",
        "schema_version": 1,
        "epoch_selection": {
            "mode": board.epoch_mode,
            "best_metric": board.best_metric,
            "text": board.selection,
        },
        "metrics": board.metrics,
        "datasets": {d: [asdict(r) for r in board.rows if r.dataset == d] for d in board.datasets},
        "mean": [asdict(m) for m in board.means],
        "ranks": [asdict(k) for k in board.ranks],
        "published": [{**asdict(r), "mark": PUBLISHED_MARK} for r in board.published],
        "warnings": board.warnings,
    }
    return json.dumps(_json_safe(doc), indent=2, sort_keys=False) + "\n"


def render(board: Leaderboard, fmt: Literal["md", "csv", "json"]) -> str:
    """The leaderboard in ``fmt`` (``md``, ``csv`` or ``json``)."""
    renderers = {"md": to_markdown, "csv": to_csv, "json": to_json}
    if fmt not in renderers:
        raise ValueError(f"unknown format {fmt!r}; known formats: {', '.join(renderers)}")
    return renderers[fmt](board)
