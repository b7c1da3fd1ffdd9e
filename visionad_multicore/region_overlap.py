"""The per-region-overlap (PRO) curve and its area (AUPRO), VisionAD's definition, on plain numpy arrays.

A leaf module (numpy, scikit-image and scikit-learn only; nothing from this package) so that the algorithm
core (the fusion module's checkpoint selection) and the VisionAD harness (:mod:`visionad_multicore.visionad.
metrics`, which checks arguments and calls these functions) share one implementation. The definition, the
vectorised counting and the dtype rules are documented in the harness module's docstring and in
:func:`pro_counts`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from skimage import measure
from sklearn.metrics import auc as sklearn_auc

__all__ = [
    "aupro_arrays",
    "aupro_thresholds",
    "comparable_thresholds",
    "per_image_pro",
    "pro_area",
    "pro_counts",
    "weighted_aupro",
]

# numpy < 2 rounds a float64 scalar to the array's dtype before comparing (value-based casting).
_LEGACY_PROMOTION = np.lib.NumpyVersion(np.__version__) < "2.0.0"


def aupro_thresholds(maps: np.ndarray, num_thresholds: int) -> np.ndarray:
    """VisionAD's AUPRO thresholds: ``np.arange(min, max, (max - min) / num_thresholds)[1:]``.

    Computed with the maps' own dtype exactly as VisionAD does, so the floating-point values are identical.
    """
    min_th = maps.min()
    max_th = maps.max()
    delta = (max_th - min_th) / num_thresholds
    return np.arange(min_th, max_th, delta)[1:]


def comparable_thresholds(
    thresholds: np.ndarray, dtype: np.dtype, legacy_promotion: bool = _LEGACY_PROMOTION
) -> tuple[np.ndarray, np.dtype]:
    """Thresholds and a working dtype in which ``values >= thresholds`` gives exactly VisionAD's answers.

    VisionAD compares maps of ``dtype`` with the float64 thresholds of ``np.arange``. With numpy >= 2 the
    comparison happens in float64; for a narrower float ``dtype`` the same answers come from comparing, in
    ``dtype``, with the smallest ``dtype`` value not below each threshold (no 8-byte copy of the maps). With
    numpy 1.x value-based casting the thresholds are instead rounded to ``dtype`` (``legacy_promotion``).
    Integer maps are compared in float64, as numpy does.

    Args:
        thresholds: Ascending thresholds, ``(T,)``.
        dtype: dtype of the maps.
        legacy_promotion: Reproduce numpy 1.x's rounding of the scalar threshold to ``dtype``.

    Returns:
        ``(thresholds_in_working_dtype (T,), working_dtype)``, still ascending.
    """
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating) or np.dtype(dtype).itemsize >= thresholds.dtype.itemsize:
        work = np.result_type(dtype, thresholds.dtype)
        return thresholds.astype(work), work
    narrow = thresholds.astype(dtype)  # round to nearest
    if not legacy_promotion:
        below = narrow.astype(thresholds.dtype) < thresholds
        narrow[below] = np.nextafter(narrow[below], np.array(np.inf, dtype=dtype))
    return narrow, dtype


def pro_counts(
    amaps: np.ndarray, gt: np.ndarray, num_thresholds: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PRO and false positive rate at VisionAD's thresholds, counted without a loop over thresholds.

    Per image the regular pixels are sorted once and the thresholds searched in them (false positives at every
    threshold); each region pixel gets its bin ``k = searchsorted(thresholds, value, "right")`` and
    ``np.bincount`` over (region, bin), summed from the top, gives every region's true positives at every
    threshold: the integer counts VisionAD gets by thresholding with ``>=``.

    Args:
        amaps: ``(N, H, W)`` finite real maps, not all equal (callers check).
        gt: ``(N, H, W)`` bool masks.
        num_thresholds: VisionAD's ``num_th`` (>= 2).

    Returns:
        ``(thresholds, pro, fpr)``, each ``(T,)``, thresholds ascending.

    Raises:
        ValueError: no anomalous region in any mask.
    """
    thresholds = _checked_thresholds(amaps, num_thresholds)
    fp = np.zeros(thresholds.size, dtype=np.int64)  # (T,) regular pixels >= each threshold
    region_hists: list[np.ndarray] = []  # per image: (R_i, n_bins)
    region_areas: list[np.ndarray] = []  # per image: (R_i,)
    for image_fp, hist, areas in _image_counts(amaps, gt, thresholds):
        fp += image_fp
        if len(areas):
            region_hists.append(hist)
            region_areas.append(areas)
    if not region_hists:
        raise ValueError("masks: no anomalous region in any mask, the per-region overlap is undefined")

    hist = np.concatenate(region_hists)  # (R, n_bins)
    areas = np.concatenate(region_areas)  # (R,)
    # Pixels with bin index > j are those >= thresholds[j]: suffix sums, dropping bin 0.
    tp = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]  # (R, T)
    pro = (tp / areas[:, None]).mean(axis=0)  # (T,) mean over all regions of all images
    n_regular = int((~gt).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = fp / n_regular  # NaN when no regular pixel, as in VisionAD
    return thresholds, pro, fpr


def _checked_thresholds(amaps: np.ndarray, num_thresholds: int) -> np.ndarray:
    thresholds = aupro_thresholds(amaps, int(num_thresholds))
    if np.any(np.diff(thresholds) < 0):  # np.arange is monotone; the counting relies on it
        raise RuntimeError("AUPRO thresholds are not ascending")
    return thresholds


def _image_counts(
    amaps: np.ndarray, gt: np.ndarray, thresholds: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image: regular pixels ``>=`` each threshold ``(T,)``, region histograms ``(R_i, T + 1)``, areas ``(R_i,)``."""
    work_thresholds, work_dtype = comparable_thresholds(thresholds, amaps.dtype)
    n_bins = thresholds.size + 1
    for amap, mask in zip(amaps, gt):
        values = amap.ravel().astype(work_dtype, copy=False)  # (H*W,)
        regions = measure.label(mask).ravel()  # (H*W,) 0 = background, 1..R_i regions
        inside = regions > 0
        regular = np.sort(values[~inside])
        fp = regular.size - np.searchsorted(regular, work_thresholds, side="left")  # (T,)
        n_regions = int(regions.max())
        if n_regions == 0:
            yield fp, np.zeros((0, n_bins), dtype=np.int64), np.zeros(0, dtype=np.int64)
            continue
        bins = np.searchsorted(work_thresholds, values[inside], side="right")  # thresholds <= value
        flat = (regions[inside].astype(np.int64) - 1) * n_bins + bins
        hist = np.bincount(flat, minlength=n_regions * n_bins).reshape(n_regions, n_bins)
        yield fp, hist, np.bincount(regions[inside], minlength=n_regions + 1)[1:]


def per_image_pro(
    amaps: np.ndarray, gt: np.ndarray, num_thresholds: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-image pieces of the PRO curve, for resampling images (e.g. a bootstrap of AUPRO).

    At the thresholds of the whole set (:func:`aupro_thresholds`), image ``i`` contributes
    ``pro_sum[i]`` (the sum over its regions of each region's overlap), ``n_regions[i]``, ``fp[i]`` (its
    regular pixels ``>=`` each threshold) and ``n_regular[i]``. For image weights ``w`` (e.g. bootstrap
    counts), ``pro = w @ pro_sum / w @ n_regions`` and ``fpr = w @ fp / w @ n_regular``; with all weights 1
    this is :func:`pro_counts`' curve (summed in another order).

    Returns:
        ``(pro_sum (N, T), n_regions (N,), fp (N, T), n_regular (N,))`` as float64.
    """
    thresholds = _checked_thresholds(amaps, num_thresholds)
    pro_sum, n_regions, fps, n_regular = [], [], [], []
    for (fp, hist, areas), mask in zip(_image_counts(amaps, gt, thresholds), gt):
        tp = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]  # (R_i, T)
        pro_sum.append(
            (tp / np.maximum(areas, 1)[:, None]).sum(axis=0) if len(areas) else np.zeros(thresholds.size)
        )
        n_regions.append(len(areas))
        fps.append(fp)
        n_regular.append(int((~mask).sum()))
    return (
        np.asarray(pro_sum, dtype=np.float64),
        np.asarray(n_regions, dtype=np.float64),
        np.asarray(fps, dtype=np.float64),
        np.asarray(n_regular, dtype=np.float64),
    )


def weighted_aupro(
    pieces: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], weights: np.ndarray, fpr_limit: float = 0.3
) -> np.ndarray:
    """Forward AUPRO of :func:`per_image_pro`'s pieces under image weights ``(N,)`` or ``(B, N)`` -> ``(B,)``.

    The area is taken as :func:`pro_area` takes it (points with ``fpr < fpr_limit``, fpr divided by its largest
    kept value, trapezoids); 0 where fewer than two points are kept.
    """
    pro_sum, n_regions, fp, n_regular = pieces
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))  # (B, N)
    with np.errstate(invalid="ignore", divide="ignore"):
        pro = (w @ pro_sum) / (w @ n_regions)[:, None]  # (B, T)
        fpr = (w @ fp) / (w @ n_regular)[:, None]  # (B, T)
    out = np.zeros(len(w))
    for b in range(len(w)):
        keep = fpr[b] < fpr_limit
        x, y = fpr[b][keep], pro[b][keep]
        if x.size >= 2 and x.max() > 0:  # fpr falls as the threshold rises: the area is -trapezoid, as auc()
            out[b] = float(-np.trapezoid(y, x / x.max()))
    return out


def pro_area(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> tuple[float, dict[str, list[float]]]:
    """Area under one PRO curve up to ``fpr_limit``, VisionAD's way; 0 when it cannot be computed."""
    keep = fpr < fpr_limit
    x = fpr[keep]
    y = pro[keep]
    info = {"fpr": fpr.tolist(), "pro": pro.tolist()}
    if x.size < 2 or not x.max() > 0:  # sklearn's auc needs two points; all-zero fpr gives 0/0
        return 0.0, info
    x = x / x.max()
    try:
        area = float(sklearn_auc(x, y))
    except ValueError:  # non-monotonic x; cannot happen for a PRO curve but VisionAD counts it as 0
        return 0.0, info
    info.update({"fpr_crop_normalised": x.tolist(), "pro_crop_normalised": y.tolist()})
    return area, info


def aupro_arrays(
    amaps: np.ndarray,
    gt: np.ndarray,
    num_thresholds: int = 200,
    fpr_limit: float = 0.3,
    allow_reversed: bool = True,
) -> tuple[float, dict[str, Any]]:
    """AUPRO of checked arrays: the larger of the forward and the reversed curve's area (VisionAD's rule).

    Args:
        amaps, gt, num_thresholds: as :func:`pro_counts`.
        fpr_limit: Keep curve points with a false positive rate below this.
        allow_reversed: VisionAD's rule (also score the map upside down and keep the larger area). ``False``
            scores the forward curve only: what a model selection needs, where a map that ranks defects
            *below* normal pixels must not score well.

    Returns:
        ``(score, info)`` with ``reversed`` and the winning branch's curves.
    """
    _, pro, fpr = pro_counts(amaps, gt, num_thresholds)
    forward, forward_info = pro_area(fpr, pro, fpr_limit)
    if not allow_reversed:
        return forward, {"reversed": False, **forward_info}
    backward, backward_info = pro_area(1 - fpr, 1 - pro, fpr_limit)
    if backward > forward:  # ties go to the forward curve, like np.argmax in VisionAD
        return backward, {"reversed": True, **backward_info}
    return forward, {"reversed": False, **forward_info}
