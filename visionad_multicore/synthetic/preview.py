"""Pictures and tables of the Stratified Synthetic Anomalies (like the paper's figures 3 and 4).

Everything here is pure: functions take a :class:`MaskSet` (and optionally images) and return a matplotlib
``Figure`` or table rows; the ``ssa-preview`` command does the loading and the writing.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec
from scipy import ndimage

from visionad_multicore.synthetic.anomalies import ANOMALY_KINDS, apply_anomaly, resolve_mix
from visionad_multicore.synthetic.dataset import SyntheticAnomalySet
from visionad_multicore.synthetic.masks import MaskSet

DEFAULT_BUCKETS = (1, 2, 3, 5, 8, 13, 20, 29)


def counts_table(mask_set: MaskSet) -> list[dict[str, Any]]:
    """One row per bucket ``n``, per multi count ``a`` and for the empty masks.

    Returns:
        Rows with keys ``kind`` (single / multi / empty), ``value`` (n, a or ""), ``count``,
        ``median_area_px``, ``median_area_pct`` (of the image) and ``mean_components``.
    """
    d2 = mask_set.size**2
    areas = mask_set.masks.reshape(len(mask_set), -1).sum(axis=1)
    groups: list[tuple[str, Any, np.ndarray]] = []
    singles = mask_set.n_anomalies == 1
    for n in mask_set.config.buckets:
        groups.append(("single", n, singles & (mask_set.bucket == n)))
    for a in mask_set.config.multi_counts:
        groups.append(("multi", a, (mask_set.bucket == 0) & (mask_set.n_anomalies == a)))
    groups.append(("empty", "", mask_set.n_anomalies == 0))
    rows = []
    for kind, value, sel in groups:
        count = int(sel.sum())
        med = float(np.median(areas[sel])) if count else 0.0
        rows.append(
            {
                "kind": kind,
                "value": value,
                "count": count,
                "median_area_px": round(med, 1),
                "median_area_pct": round(100.0 * med / d2, 3),
                "mean_components": round(float(mask_set.n_components[sel].mean()), 2) if count else 0.0,
            }
        )
    rows.append(
        {
            "kind": "total",
            "value": "",
            "count": len(mask_set),
            "median_area_px": "",
            "median_area_pct": "",
            "mean_components": "",
        }
    )
    return rows


def table_to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Render table rows (a list of same-keyed dicts) as a GitHub markdown table."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def table_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Render table rows as CSV text."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _overlay(masks: np.ndarray, seed: int = 0, alpha: float = 0.45) -> np.ndarray:
    """``(H, W, 3)`` picture of ``masks (K, H, W)`` blended one over another, each in its own colour."""
    from matplotlib import colormaps

    rng = np.random.default_rng(seed)
    colours = colormaps["hsv"](rng.uniform(0, 1, size=len(masks)))[:, :3]  # (K, 3)
    canvas = np.full(masks.shape[1:] + (3,), 0.08)
    for m, c in zip(masks, colours):
        canvas[m] = (1 - alpha) * canvas[m] + alpha * c
    return canvas


def _grid_lines(ax: Any, n: int, d: int) -> None:
    if n > 12:
        return  # too dense to help
    for k in range(1, n):
        ax.axhline(k * d / n - 0.5, color="white", lw=0.4, alpha=0.35)
        ax.axvline(k * d / n - 0.5, color="white", lw=0.4, alpha=0.35)


def _clean_axis(ax: Any, title: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def preview_figure(
    mask_set: MaskSet,
    synthetic: SyntheticAnomalySet | None = None,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    n_examples: int = 16,
    source: str = "",
    kind_mixes: Sequence[str] = ("mixed", "subtle"),
) -> Figure:
    """Draw the mask schema, every anomaly kind, and (optionally) synthetic training images with their masks.

    Row 1: all masks of selected buckets ``n`` overlaid, each in its own colour, with the ``n x n`` grid.
    Row 2: one multi-anomaly mask per ``a`` (components coloured) and the median mask area per bucket.
    Row 3 (with ``synthetic``): one image per anomaly kind (noise, cut-paste, texture, blur, colour) and per
    mixture of ``kind_mixes``, all on the same mask, so the kinds and strengths can be compared.
    Rows 4-5 (with ``synthetic``): synthetic items as the set makes them, masks outlined in red, chosen to
    span the buckets.

    Args:
        mask_set: The masks to draw.
        synthetic: A synthetic set built on ``mask_set`` with ``size >= len(mask_set)`` (so every mask occurs).
        buckets: Buckets for row 1 (those absent from the mask set are skipped).
        n_examples: Noised examples for rows 3-4 (a multiple of the column count reads best).
        source: Where the images come from, for the title.

    Returns:
        The matplotlib figure (Agg-compatible, not shown).
    """
    d = mask_set.size
    buckets = [n for n in buckets if n in mask_set.config.buckets]
    multis = list(mask_set.config.multi_counts)
    n_kind_cells = len(ANOMALY_KINDS) * len(kind_mixes)
    n_cols = max(8, len(buckets), len(multis) + 2, n_kind_cells if synthetic is not None else 0)
    kind_rows = 0 if synthetic is None or not kind_mixes else 1
    example_rows = 0 if synthetic is None else -(-n_examples // n_cols)
    n_rows = 2 + kind_rows + example_rows
    fig = Figure(figsize=(2.0 * n_cols, 2.3 * n_rows + 0.5))
    grid = GridSpec(
        n_rows,
        n_cols,
        figure=fig,
        left=0.01,
        right=0.99,
        bottom=0.03,
        top=1 - 0.55 / (2.3 * n_rows + 0.5),
        wspace=0.05,
        hspace=0.22,
    )
    cfg = mask_set.config
    fig.suptitle(
        f"Stratified synthetic anomalies at {d} px: {len(mask_set)} masks "
        f"({len(cfg.buckets)} buckets x {cfg.masks_per_bucket}, a = {min(multis, default=0)}..{max(multis, default=0)}"
        f" x {cfg.masks_per_multi}, {cfg.n_empty} empty; seed {mask_set.seed})",
        fontsize=11,
    )
    for col, n in enumerate(buckets):
        ax = fig.add_subplot(grid[0, col])
        sel = (mask_set.bucket == n) & (mask_set.n_anomalies == 1)
        ax.imshow(_overlay(mask_set.masks[sel], seed=n), interpolation="nearest")
        _grid_lines(ax, n, d)
        _clean_axis(ax, f"n = {n}: {int(sel.sum())} masks")
    for col, a in enumerate(multis):
        ax = fig.add_subplot(grid[1, col])
        idx = np.flatnonzero((mask_set.bucket == 0) & (mask_set.n_anomalies == a))
        if idx.size:  # the largest of the a-masks: components are often small, this one shows the schema best
            best = idx[np.argmax(mask_set.masks[idx].reshape(idx.size, -1).sum(axis=1))]
            labels, _ = ndimage.label(mask_set.masks[best], structure=np.ones((3, 3)))
            parts = np.stack([labels == k for k in range(1, labels.max() + 1)])
            ax.imshow(_overlay(parts, seed=a, alpha=0.9), interpolation="nearest")
        _clean_axis(ax, f"a = {a} (largest of {idx.size})")
    ax = fig.add_subplot(grid[1, len(multis) :])
    areas = mask_set.masks.reshape(len(mask_set), -1).sum(axis=1)
    ns = np.array(cfg.buckets)
    med = [np.median(areas[(mask_set.bucket == n) & (mask_set.n_anomalies == 1)]) for n in ns]
    ax.loglog(ns, np.maximum(med, 0.5), "o-", ms=3, label="median mask area")
    ax.loglog(ns, (d / ns) ** 2, "--", color="grey", lw=1, label="(d / n)$^2$ box")
    ax.set_xlabel("bucket n", fontsize=8)
    ax.set_ylabel("pixels", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    ax.set_title("single-mask area per bucket", fontsize=9)
    pos = ax.get_position()  # leave room for the tick labels and axis labels
    ax.set_position((pos.x0 + 0.045, pos.y0 + 0.035, pos.width - 0.05, pos.height - 0.04))
    if synthetic is not None:
        if kind_rows:
            _draw_kinds(fig, grid, 2, mask_set, synthetic, kind_mixes)
        _draw_examples(fig, grid, mask_set, synthetic, n_examples, n_cols, source, first_row=2 + kind_rows)
    return fig


def _draw_kinds(
    fig: Figure,
    grid: GridSpec,
    row: int,
    mask_set: MaskSet,
    synthetic: SyntheticAnomalySet,
    mixes: Sequence[str],
) -> None:
    """One cell per (mixture, kind): the same image and mask, filled with that kind (seeded per cell)."""
    singles = np.flatnonzero(mask_set.n_anomalies == 1)
    areas = mask_set.masks[singles].reshape(len(singles), -1).sum(axis=1)
    d = mask_set.size
    ys, xs = np.mgrid[0:d, 0:d]
    masks = mask_set.masks[singles]
    centre_y = (masks * ys).reshape(len(singles), -1).sum(1) / np.maximum(areas, 1)
    centre_x = (masks * xs).reshape(len(singles), -1).sum(1) / np.maximum(areas, 1)
    off_centre = np.hypot(centre_y - d / 2, centre_x - d / 2) / d
    # a mask of about a sixteenth of the image, near its centre
    pick = singles[np.argmin(np.abs(np.log(np.maximum(areas, 1) / (d / 4) ** 2)) + 4 * off_centre)]
    mask = torch.from_numpy(mask_set.masks[pick])[None].float()  # (1, d, d)
    image01 = (synthetic.clean_images[0] * synthetic.std + synthetic.mean).clamp(0, 1)
    if mask.shape[-2:] != image01.shape[-2:]:
        mask = torch.nn.functional.interpolate(mask[None], size=image01.shape[-2:], mode="nearest")[0]
    donor = synthetic.clean_images[-1] * synthetic.std + synthetic.mean
    col = 0
    for mix_name in mixes:
        mix = resolve_mix(mix_name)
        for k, kind in enumerate(ANOMALY_KINDS):
            generator = torch.Generator().manual_seed(1000 * col + k)
            out, _ = apply_anomaly(image01, mask, mix, generator, donor01=donor, kind=kind)
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(out.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.contour(mask[0].numpy(), levels=[0.5], colors="red", linewidths=0.5)
            _clean_axis(ax, f"{kind} ({mix_name})")
            col += 1


def _example_items(mask_set: MaskSet, synthetic: SyntheticAnomalySet, n_examples: int) -> list[int]:
    """Synthetic items whose masks span the buckets (small n to large) then the multi counts."""
    wanted: list[int] = []
    singles = np.flatnonzero(mask_set.n_anomalies == 1)
    multis = np.flatnonzero((mask_set.bucket == 0) & (mask_set.n_anomalies > 1))
    n_multi = min(len(multis), max(2, n_examples // 4))
    n_single = max(n_examples - n_multi, 0) if len(singles) else 0
    picks = np.linspace(0, len(singles) - 1, n_single).round().astype(int)
    wanted += [int(singles[p]) for p in picks]
    wanted += [int(multis[p]) for p in np.linspace(0, len(multis) - 1, n_multi).round().astype(int)]
    first_item: dict[int, int] = {}
    for item, m in enumerate(synthetic.mask_index):
        first_item.setdefault(int(m), item)
    return [first_item[m] for m in wanted if m in first_item][:n_examples]


def _draw_examples(
    fig: Figure,
    grid: GridSpec,
    mask_set: MaskSet,
    synthetic: SyntheticAnomalySet,
    n_examples: int,
    n_cols: int,
    source: str,
    first_row: int = 2,
) -> None:
    mean, std = synthetic.mean, synthetic.std
    for k, item in enumerate(_example_items(mask_set, synthetic, n_examples)):
        image, mask = synthetic[item]
        pixels = (image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()  # (H, W, 3)
        ax = fig.add_subplot(grid[first_row + k // n_cols, k % n_cols])
        ax.imshow(pixels, interpolation="nearest")
        if mask.any():
            ax.contour(mask[0].numpy(), levels=[0.5], colors="red", linewidths=0.7)
        m = int(synthetic.mask_index[item])
        label = (
            f"n = {mask_set.bucket[m]}" if mask_set.n_anomalies[m] == 1 else f"a = {mask_set.n_anomalies[m]}"
        )
        _clean_axis(ax, f"{label}, img {int(synthetic.image_index[item])}")
    if source:
        content = f"noise std {synthetic.noise_std}" if synthetic.mix is None else "the anomaly mixture"
        fig.text(0.005, 0.003, f"synthetic images: {source}; {content}", fontsize=8)


def brick_images(size: int, count: int = 6) -> torch.Tensor:
    """``(count, 3, size, size)`` images in [0, 1]: crops of scikit-image's brick texture (no dataset needed)."""
    from skimage import data
    from skimage.transform import resize

    brick = data.brick().astype(np.float64) / 255.0  # (512, 512) grey
    side = brick.shape[0] * 3 // 4
    starts = np.linspace(0, brick.shape[0] - side, count).round().astype(int)
    crops = []
    for k, s in enumerate(starts):
        crop = brick[s : s + side, (k * 37) % (brick.shape[1] - side) :][:, :side]
        if k % 2:
            crop = crop[:, ::-1]
        crops.append(resize(crop, (size, size), order=1, anti_aliasing=True))
    grey = torch.from_numpy(np.stack(crops)).float()  # (count, size, size)
    return grey[:, None].repeat(1, 3, 1, 1)
