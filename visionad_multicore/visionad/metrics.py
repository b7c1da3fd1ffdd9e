"""VisionAD's metrics as VisionAD runs them: ``metric(heatmap_set, image_score_set, targets_set, paths_set)``.

The metric functions registered in :data:`METRICS` under VisionAD's names wrap the pure functions of
:mod:`~visionad_multicore.visionad.metric_functions` (re-exported here) exactly as VisionAD's
``wrapper/metrics.py`` does, quirks included: targets cast with ``.int()``, the AUROC flip (logged), a method
whose metric cannot be computed skipped with a logged reason. :func:`run_metrics` runs a list of them like
VisionAD's ``wrapper.run_metrics``, with two additions that never change a number VisionAD would report:

* a method whose heatmaps (or scores) hold NaN or infinite values is not scored; its result is the string
  ``"failed: non-finite values in N maps"`` (``N scores`` for ``Imagewise_AUC``), and
  :func:`metric_failures` lists it so that the run ends with a non-zero exit code;
* with ``pixel_labels=False`` (an image-level-only dataset) every pixel metric is
  :data:`NOT_COMPUTABLE_IMAGE_LEVEL` for every method instead of being computed on masks that do not exist.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from visionad_multicore.visionad.metric_functions import (
    PL_IMAGE_SIZE,
    ArrayLike,
    MetricFunction,
    MetricResult,
    aupro,
    aupro_thresholds,
    aupro_with_info,
    comparable_thresholds,
    flip_auroc,
    image_auroc,
    pixel_auroc,
    pro_curve,
    proportion_localised,
)

logger = logging.getLogger(__name__)

PIXEL_METRICS = ("Pixelwise_AUC", "Pixelwise_AUC_anom_only", "Pixelwise_AUPRO", "PL")
"""Metrics that need pixel labels (masks)."""
NOT_COMPUTABLE_IMAGE_LEVEL = "not computable: image-level labels only (pixel_labels: false)"
"""The result of every pixel metric on a dataset without masks."""
FAILED_PREFIX = "failed: "
"""Results that are strings starting with this mark a method whose metric failed (see :func:`metric_failures`)."""


def _visionad_targets(targets: Any) -> np.ndarray:
    """Targets as VisionAD's metrics see them: ``targets.int()``, i.e. truncated towards zero.

    VisionAD resizes targets that are not 256 x 256 bilinearly, which leaves fractional values at region
    borders; its metrics then cast with ``.int()``, so only pixels that stayed exactly 1 count as anomalous.
    Binary targets pass through unchanged.
    """
    arr = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    if arr.dtype == bool:
        return arr.astype(np.int32)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(
            f"targets: {int((~np.isfinite(arr)).sum())} NaN or infinite values, so no pixel labels "
            "(an image-level-only dataset has NaN masks: run its metrics with pixel_labels=False)"
        )
    return np.trunc(arr).astype(np.int32)


def _targets(targets_set: Mapping[str, Any], metric: str) -> np.ndarray | None:
    """VisionAD's targets, or None (logged) when they cannot be used, so that no method is scored."""
    try:
        return _visionad_targets(_get(targets_set, "targets_novel", "targets_set"))
    except ValueError as err:
        logger.warning("Unable to calculate %s for any method: %s", metric, err)
        return None


def _get(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    """``mapping[key]`` with an error naming the missing key and the ones present."""
    try:
        return mapping[key]
    except KeyError:
        raise KeyError(f"{where}: missing key {key!r}; present keys: {sorted(mapping)}") from None


def _flip_logged(score: float, metric: str, method: str) -> tuple[float, bool]:
    """VisionAD's flip, with a warning when it changes the score."""
    if score < 0.5:
        logger.warning(
            "%s for method %r is %.4f < 0.5: reporting 1 - AUROC = %.4f (VisionAD's flip)",
            metric,
            method,
            score,
            1.0 - score,
        )
    return flip_auroc(score), score <= 0.5


def _per_method(
    metric: str, methods: Sequence[str], compute: Callable[[str], tuple[float, dict[str, Any]]]
) -> MetricResult:
    """Run ``compute(method)`` for every method; a failure is logged and that method skipped, as VisionAD does."""
    results: dict[str, float] = {}
    info: dict[str, Any] = {}
    for method in methods:
        try:
            score, method_info = compute(method)
        except Exception as err:  # noqa: BLE001 - VisionAD skips any failing method
            logger.warning(
                "Unable to calculate %s for method %r: %s: %s", metric, method, type(err).__name__, err
            )
            continue
        results[method] = float(score)
        info[method] = method_info
    return results, info


def imagewise_auc(
    heatmap_set: Mapping[str, Any],
    image_score_set: Mapping[str, Any],
    targets_set: Mapping[str, Any],
    paths_set: Any,
) -> MetricResult:
    """VisionAD's ``Imagewise_AUC``: :func:`image_auroc` per method of ``image_score_set``.

    Args:
        heatmap_set: Unused (VisionAD's signature).
        image_score_set: ``{"image_score_set_regular": {method: (M,)}, "image_score_set_novel": {method: (N,)}}``.
        targets_set: Unused.
        paths_set: Unused.

    Returns:
        ``({method: auroc}, {method: {"auroc_unflipped", "flipped"}})``.
    """
    regular = _get(image_score_set, "image_score_set_regular", "image_score_set")
    novel = _get(image_score_set, "image_score_set_novel", "image_score_set")

    def compute(method: str) -> tuple[float, dict[str, Any]]:
        raw = image_auroc(regular[method], _get(novel, method, "image_score_set_novel"), flip=False)
        score, flipped = _flip_logged(raw, "Imagewise_AUC", method)
        return score, {"auroc_unflipped": raw, "flipped": flipped}

    return _per_method("Imagewise_AUC", list(regular), compute)


def _pixelwise_auc(
    heatmap_set: Mapping[str, Any], targets_set: Mapping[str, Any], novel_only: bool, metric: str
) -> MetricResult:
    novel = _get(heatmap_set, "heatmap_set_novel", "heatmap_set")
    targets = _targets(targets_set, metric)
    if targets is None:
        return {}, {}

    def compute(method: str) -> tuple[float, dict[str, Any]]:
        regular = (
            None
            if novel_only
            else _get(_get(heatmap_set, "heatmap_set_regular", "heatmap_set"), method, "heatmap_set_regular")
        )
        raw = pixel_auroc(novel[method], targets, regular, flip=False)
        score, flipped = _flip_logged(raw, metric, method)
        return score, {"auroc_unflipped": raw, "flipped": flipped}

    return _per_method(metric, list(novel), compute)


def pixelwise_auc(
    heatmap_set: Mapping[str, Any],
    image_score_set: Mapping[str, Any],
    targets_set: Mapping[str, Any],
    paths_set: Any,
) -> MetricResult:
    """VisionAD's ``Pixelwise_AUC``: :func:`pixel_auroc` over anomalous and regular heatmaps, per method.

    Args:
        heatmap_set: ``{"heatmap_set_regular": {method: (M, 1, H, W)}, "heatmap_set_novel": {method: (N, 1, H, W)}}``.
        image_score_set: Unused.
        targets_set: ``{"targets_novel": (N, 1, H, W)}`` binary masks.
        paths_set: Unused.
    """
    return _pixelwise_auc(heatmap_set, targets_set, novel_only=False, metric="Pixelwise_AUC")


def pixelwise_auc_anom_only(
    heatmap_set: Mapping[str, Any],
    image_score_set: Mapping[str, Any],
    targets_set: Mapping[str, Any],
    paths_set: Any,
) -> MetricResult:
    """VisionAD's ``Pixelwise_AUC_anom_only``: :func:`pixel_auroc` over the anomalous heatmaps only."""
    return _pixelwise_auc(heatmap_set, targets_set, novel_only=True, metric="Pixelwise_AUC_anom_only")


def pixelwise_aupro(
    heatmap_set: Mapping[str, Any],
    image_score_set: Mapping[str, Any],
    targets_set: Mapping[str, Any],
    paths_set: Any,
) -> MetricResult:
    """VisionAD's ``Pixelwise_AUPRO``: :func:`aupro` (200 thresholds, fpr < 0.3) per method.

    Returns:
        ``({method: aupro}, {method: info of aupro_with_info})``.
    """
    novel = _get(heatmap_set, "heatmap_set_novel", "heatmap_set")
    targets = _targets(targets_set, "Pixelwise_AUPRO")
    if targets is None:
        return {}, {}

    def compute(method: str) -> tuple[float, dict[str, Any]]:
        score, info = aupro_with_info(novel[method], targets)
        if info["reversed"]:
            logger.warning(
                "Pixelwise_AUPRO for method %r: the reversed PRO curve scored higher (%.4f)", method, score
            )
        return score, info

    return _per_method("Pixelwise_AUPRO", list(novel), compute)


def pl_metric(
    heatmap_set: Mapping[str, Any],
    image_score_set: Mapping[str, Any],
    targets_set: Mapping[str, Any],
    paths_set: Any,
) -> MetricResult:
    """VisionAD's ``PL``: :func:`proportion_localised` with IoU limit 0.3 per method (256 x 256 heatmaps)."""
    novel = _get(heatmap_set, "heatmap_set_novel", "heatmap_set")
    targets = _targets(targets_set, "PL")
    if targets is None:
        return {}, {}
    # proportion_localised fails outright on an image without anomalous pixels (VisionAD's run then loses
    # PL for every method). Small defects can vanish in the 256 px NEAREST resize (Magnetic-Tile has such
    # images), so we score PL over the images whose mask is non-empty and say how many were left out.
    keep = targets.reshape(targets.shape[0], -1).any(axis=1)
    if not keep.all():
        logger.warning(
            "PL: %d of %d anomalous test images have an empty mask at this resolution and are left out of PL",
            int((~keep).sum()),
            keep.size,
        )

    def compute(method: str) -> tuple[float, dict[str, Any]]:
        maps = novel[method]
        maps = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
        score = proportion_localised(maps[keep], targets[keep], iou_limit=0.3)
        return score, {"n_images_scored": int(keep.sum()), "n_images_empty_mask": int((~keep).sum())}

    return _per_method("PL", list(novel), compute)


METRICS: dict[str, MetricFunction] = {
    "Imagewise_AUC": imagewise_auc,
    "Pixelwise_AUC": pixelwise_auc,
    "Pixelwise_AUC_anom_only": pixelwise_auc_anom_only,
    "Pixelwise_AUPRO": pixelwise_aupro,
    "PL": pl_metric,
}
"""VisionAD's metric names -> metric functions, in VisionAD's order."""


def resolve_metric_names(metric_names: Sequence[str] | str) -> list[str]:
    """Validate metric names; ``"all"`` anywhere in the list means every metric in :data:`METRICS`.

    Raises:
        ValueError: An unknown name (the message lists the known ones).
    """
    names = [metric_names] if isinstance(metric_names, str) else list(metric_names)
    if "all" in names:
        return list(METRICS)
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"Unknown metric(s) {unknown}; known metrics: {list(METRICS)} or 'all'")
    return list(dict.fromkeys(names))


def _count_non_finite(values: Any) -> int:
    """Number of items (first dimension) of ``values`` holding a NaN or infinite value."""
    arr = values.detach().cpu() if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if not (arr.is_floating_point() or arr.is_complex()) or arr.numel() == 0:
        return 0
    if arr.ndim == 0:
        return int(not torch.isfinite(arr))
    return int((~torch.isfinite(arr.reshape(arr.shape[0], -1))).any(dim=1).sum())


def _non_finite(group_set: Mapping[str, Any], prefix: str) -> dict[str, int]:
    """``{method: number of non-finite maps (or scores) over both test sets}`` for the methods that have any."""
    counts: dict[str, int] = {}
    for split in ("regular", "novel"):
        for method, values in dict(group_set.get(f"{prefix}_{split}", {})).items():
            counts[method] = counts.get(method, 0) + _count_non_finite(values)
    return {method: n for method, n in counts.items() if n}


def _without(group_set: Mapping[str, Any], methods: Sequence[str]) -> dict[str, Any]:
    """A shallow copy of a VisionAD ``*_set`` dict with ``methods`` removed from every split."""
    return {
        key: {m: v for m, v in value.items() if m not in methods} if isinstance(value, Mapping) else value
        for key, value in group_set.items()
    }


def run_metrics(
    metric_names: Sequence[str] | str,
    heatmap_set: Mapping[str, Any],
    image_score_set: Mapping[str, Any],
    targets_set: Mapping[str, Any],
    paths_set: Any,
    include_metric_data: bool = False,
    progress: bool = True,
    pixel_labels: bool = True,
) -> dict[str, dict[str, Any]]:
    """Run VisionAD metrics on the output of ``ModelWrapper.test()``.

    Args:
        metric_names: Names from :data:`METRICS`, or ``["all"]``.
        heatmap_set: ``{"heatmap_set_regular": {method: (M, 1, H, W)}, "heatmap_set_novel": {method: (N, 1, H, W)}}``.
        image_score_set: ``{"image_score_set_regular": {method: (M,)}, "image_score_set_novel": {method: (N,)}}``.
        targets_set: ``{"targets_novel": (N, 1, H, W)}`` binary masks (unused when ``pixel_labels`` is False).
        paths_set: Passed through (VisionAD's signature).
        include_metric_data: Also return each metric's info dict under ``"metric_data"`` (VisionAD's
            ``save_metric_meta_data``).
        progress: Show a progress bar over the metrics.
        pixel_labels: False for an image-level-only dataset: pixel metrics are reported as
            :data:`NOT_COMPUTABLE_IMAGE_LEVEL`, not computed.

    Returns:
        ``{metric: {"metric_results": {method: value}}}``: a float, or a string for a method that could not be
        scored: ``"failed: non-finite values in N maps"`` (or ``N scores``), or
        :data:`NOT_COMPUTABLE_IMAGE_LEVEL`. A method whose metric raised (as in VisionAD) is logged and missing.

    Raises:
        ValueError: An unknown metric name (checked before anything is computed).
    """
    names = resolve_metric_names(metric_names)
    bad_maps = _non_finite(heatmap_set, "heatmap_set")
    bad_scores = _non_finite(image_score_set, "image_score_set")
    for method, n in bad_maps.items():
        logger.error(
            "Method %r: non-finite values (NaN or inf) in %d heatmaps: its pixel metrics fail", method, n
        )
    for method, n in bad_scores.items():
        logger.error(
            "Method %r: non-finite values (NaN or inf) in %d image scores: Imagewise_AUC fails", method, n
        )
    clean_maps = _without(heatmap_set, list(bad_maps))
    clean_scores = _without(image_score_set, list(bad_scores))
    map_methods = list(dict(heatmap_set.get("heatmap_set_novel", {})))
    out: dict[str, dict[str, Any]] = {}
    for name in tqdm(names, desc="metrics", disable=not progress, leave=False):
        start = time.perf_counter()
        is_pixel = name in PIXEL_METRICS
        if is_pixel and not pixel_labels:
            results: dict[str, Any] = dict.fromkeys(map_methods, NOT_COMPUTABLE_IMAGE_LEVEL)
            info: dict[str, Any] = {}
        else:
            computed, info = METRICS[name](clean_maps, clean_scores, targets_set, paths_set)
            results = dict(computed)
            bad, unit = (bad_maps, "maps") if is_pixel else (bad_scores, "scores")
            for method, n in bad.items():
                results[method] = f"{FAILED_PREFIX}non-finite values in {n} {unit}"
        out[name] = {"metric_results": results}
        if include_metric_data:
            out[name]["metric_data"] = info
        logger.info("%s: %s (%.2g s)", name, results, time.perf_counter() - start)
    return out


def metric_failures(metric_results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``"<metric>/<method>: failed: ..."`` for every failed result of :func:`run_metrics`'s output."""
    failures = []
    for metric, item in metric_results.items():
        values = item.get("metric_results", item) if isinstance(item, Mapping) else {}
        for method, value in values.items():
            if isinstance(value, str) and value.startswith(FAILED_PREFIX):
                failures.append(f"{metric}/{method}: {value}")
    return failures


__all__ = [
    "FAILED_PREFIX",
    "PL_IMAGE_SIZE",
    "METRICS",
    "NOT_COMPUTABLE_IMAGE_LEVEL",
    "PIXEL_METRICS",
    "ArrayLike",
    "MetricFunction",
    "MetricResult",
    "aupro",
    "aupro_thresholds",
    "aupro_with_info",
    "comparable_thresholds",
    "image_auroc",
    "imagewise_auc",
    "metric_failures",
    "pixel_auroc",
    "pixelwise_aupro",
    "pixelwise_auc",
    "pixelwise_auc_anom_only",
    "pl_metric",
    "pro_curve",
    "proportion_localised",
    "resolve_metric_names",
    "run_metrics",
]
