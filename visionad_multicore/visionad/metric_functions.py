"""VisionAD's evaluation metrics as pure functions on arrays, reproduced exactly, with a vectorised AUPRO.

:func:`image_auroc`, :func:`pixel_auroc`, :func:`aupro` and :func:`proportion_localised` take numpy arrays or
torch tensors, check their arguments (shapes, binary masks, finite values) and raise ``ValueError`` with a
message saying what was expected. :mod:`visionad_multicore.visionad.metrics` wraps them into VisionAD-shaped
metric functions and ``run_metrics`` (and re-exports them).

The definitions are VisionAD's (``wrapper/metrics.py``), quirks included, so that scores agree with
VisionAD's own code to 1e-9 on the same inputs (``benchmarks/check_metrics_vs_visionad.py`` checks this):

* AUROC flip: an AUROC of 0.5 or below is reported as ``1 - AUROC`` (the detector is assumed to have its
  sign the wrong way round). The wrappers log a warning naming the method when this happens.
* AUPRO: thresholds ``np.arange(min, max, (max - min) / num_thresholds)[1:]`` over the anomalous maps only;
  a pixel is predicted anomalous when ``map >= threshold``; the per-region overlap (PRO) is the mean over all
  connected regions of all masks (``skimage.measure.label``, default connectivity, i.e. 8-connected); the
  false positive rate counts the non-anomalous pixels of the anomalous images; rows with ``fpr < fpr_limit``
  are kept, their fpr divided by its maximum and the area taken with ``sklearn.metrics.auc``. The same is
  done for the reversed curve (``1 - pro`` against ``1 - fpr``) and the larger area is returned; a branch
  that cannot be computed (fewer than two rows, all-zero fpr) counts as 0.
* PL: the ``proportion_localised`` package's ``calculate`` with VisionAD's arguments.

VisionAD's AUPRO loops over the 200 thresholds with pandas; ours sorts each image's regular pixels once,
puts each region pixel into its threshold bin (``np.searchsorted``) and counts with ``np.bincount``, which
gives the same integer counts at every threshold, about 30 times faster on 100 maps of 256 x 256
(``benchmarks/bench_aupro.py``). The AUROCs are exact Mann-Whitney counts on sorted values, computed by
:func:`visionad_multicore.auroc.auroc`, the one AUROC of the package (the core uses it too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from visionad_multicore.auroc import auroc
from visionad_multicore.region_overlap import (  # the thresholds are re-exported for the harness
    aupro_arrays,
    aupro_thresholds,
    comparable_thresholds,
    pro_counts,
)

__all__ = [
    "PL_IMAGE_SIZE",
    "ArrayLike",
    "MetricFunction",
    "MetricResult",
    "aupro",
    "aupro_thresholds",
    "aupro_with_info",
    "comparable_thresholds",
    "flip_auroc",
    "image_auroc",
    "pixel_auroc",
    "pro_curve",
    "proportion_localised",
]

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor
MetricResult = tuple[dict[str, float], dict[str, Any]]
MetricFunction = Callable[[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any], Any], MetricResult]

# Size that the proportion_localised package hard-codes for its images.
PL_IMAGE_SIZE = 256


# ----------------------------------------------------------------------------------------------------------
# Argument handling
# ----------------------------------------------------------------------------------------------------------


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Convert a tensor or array-like to a numpy array without changing its dtype (bfloat16 -> float32)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise TypeError(f"{name}: expected a numeric array or tensor, got an object array")
    return arr


def _check_real(arr: np.ndarray, name: str) -> None:
    """Raise if ``arr`` is empty, not real-valued numeric, or holds NaN or infinite values."""
    if arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty array, got shape {arr.shape}")
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(f"{name}: expected real (float or integer) values, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        raise ValueError(f"{name}: expected finite values, found {n_nan} NaN and {n_inf} infinite values")


def _scores_1d(x: Any, name: str) -> np.ndarray:
    """Scores as a 1-D array: accepts shape ``(N,)`` or ``(N, 1)``."""
    arr = _to_numpy(x, name)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected shape (N,) or (N, 1), got {arr.shape}")
    _check_real(arr, name)
    return arr


def _maps_3d(x: Any, name: str) -> np.ndarray:
    """Heatmaps as ``(N, H, W)``: accepts ``(N, H, W)`` or VisionAD's ``(N, 1, H, W)``."""
    arr = _to_numpy(x, name)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected shape (N, H, W) or (N, 1, H, W), got {arr.shape}")
    _check_real(arr, name)
    return arr


def _masks_3d(x: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Binary masks as a bool ``(N, H, W)`` array of the given shape; any value other than 0/1 is an error."""
    arr = _to_numpy(x, name)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} (matching the maps), got {arr.shape}")
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name}: expected a binary mask, got dtype {arr.dtype}")
    is_one = arr == 1
    if not np.logical_or(is_one, arr == 0).all():
        bad = np.unique(arr[~np.logical_or(is_one, arr == 0)])[:5]
        raise ValueError(
            f"{name}: expected a binary mask with values in {{0, 1}}, found values {bad.tolist()}"
        )
    return is_one


# ----------------------------------------------------------------------------------------------------------
# AUROC
# ----------------------------------------------------------------------------------------------------------


def flip_auroc(score: float) -> float:
    """VisionAD's rule: keep an AUROC above 0.5, otherwise report ``1 - AUROC``."""
    return score if score > 0.5 else 1.0 - score


def image_auroc(scores_regular: ArrayLike, scores_anomalous: ArrayLike, flip: bool = True) -> float:
    """Image-level ROC AUC, anomalous images as the positive class.

    Args:
        scores_regular: Scores of the regular (defect-free) test images, shape ``(M,)`` or ``(M, 1)``.
        scores_anomalous: Scores of the anomalous test images, shape ``(N,)`` or ``(N, 1)``.
        flip: Apply VisionAD's flip: an AUROC of 0.5 or below is reported as ``1 - AUROC``.

    Returns:
        The AUROC in [0, 1] (in [0.5, 1] with ``flip``).

    Raises:
        ValueError: Wrong shapes, non-finite scores, or an empty set.

    Memory: sorted copies of both sets plus int64 counts for the smaller one, in blocks of 4M (O(N + M)).
    """
    regular = _scores_1d(scores_regular, "scores_regular")
    anomalous = _scores_1d(scores_anomalous, "scores_anomalous")
    score = auroc(anomalous, regular)
    return flip_auroc(score) if flip else score


def pixel_auroc(
    maps_anomalous: ArrayLike,
    masks: ArrayLike,
    maps_regular: ArrayLike | None = None,
    flip: bool = True,
) -> float:
    """Pixel-level ROC AUC: anomalous-mask pixels are positives, all other pixels negatives.

    Args:
        maps_anomalous: Heatmaps of the anomalous test images, ``(N, H, W)`` or ``(N, 1, H, W)``.
        masks: Ground-truth masks of those images in {0, 1}, same shape as ``maps_anomalous``.
        maps_regular: Heatmaps of the regular test images, ``(M, H', W')`` or ``(M, 1, H', W')``; all of their
            pixels are labelled 0. ``None`` gives VisionAD's "anomalous only" variant.
        flip: Apply VisionAD's flip: an AUROC of 0.5 or below is reported as ``1 - AUROC``.

    Returns:
        The AUROC in [0, 1] (in [0.5, 1] with ``flip``).

    Raises:
        ValueError: Wrong shapes, non-binary masks, non-finite values, or only one class present.

    Memory: one copy of all pixel values (``N*H*W + M*H'*W'`` values of the maps' dtype, split by class and
    sorted in place) and int64 counts for the smaller class in blocks of 4M values; about 1.5 s for 13 M
    pixels where scikit-learn takes several times longer.
    """
    anomalous = _maps_3d(maps_anomalous, "maps_anomalous")
    labels = _masks_3d(masks, "masks", anomalous.shape)
    positives = anomalous[labels]
    negatives = anomalous[~labels]
    if maps_regular is not None:
        regular = _maps_3d(maps_regular, "maps_regular")
        dtype = np.result_type(anomalous.dtype, regular.dtype)
        negatives = np.concatenate(
            [negatives.astype(dtype, copy=False), regular.astype(dtype, copy=False).ravel()]
        )
    score = auroc(positives, negatives, overwrite=True)
    return flip_auroc(score) if flip else score


# ----------------------------------------------------------------------------------------------------------
# AUPRO
# ----------------------------------------------------------------------------------------------------------


def pro_curve(
    maps: ArrayLike, masks: ArrayLike, num_thresholds: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-region-overlap curve at VisionAD's thresholds, without a loop over thresholds.

    Per image: the regular pixels are sorted once and the thresholds searched in them, which counts the false
    positives at every threshold; each region pixel gets its bin ``k = searchsorted(thresholds, value,
    "right")`` (the number of thresholds ``<= value``, so it is predicted anomalous at threshold ``j``
    exactly when ``j < k``), and ``np.bincount`` over (region, bin) summed from the top gives every region's
    true positives at every threshold. These are the integer counts VisionAD gets by thresholding the maps
    with ``>=`` (see :func:`comparable_thresholds` for the dtypes).

    Args:
        maps: Heatmaps of the anomalous test images, ``(N, H, W)`` or ``(N, 1, H, W)``.
        masks: Their binary ground-truth masks, same shape.
        num_thresholds: VisionAD's ``num_th``.

    Returns:
        ``(thresholds, pro, fpr)``, each of shape ``(T,)`` with ``T`` about ``num_thresholds - 1``: the mean
        per-region overlap and the false positive rate (over the masks' zero pixels; NaN when there are
        none) at each threshold, thresholds ascending.

    Raises:
        ValueError: Bad shapes or values, constant maps, or masks without any anomalous region.

    Memory: a sorted copy of one image's regular pixels and int64 bins for its region pixels at a time, plus
    ``R x (T + 1)`` int64 counts for the ``R`` regions (e.g. 100 regions x 200 thresholds = 160 kB); with
    integer maps also a float64 copy of one image.
    """
    n = _check_num_thresholds(num_thresholds)
    amaps = _maps_3d(maps, "maps")
    gt = _masks_3d(masks, "masks", amaps.shape)
    _check_not_constant(amaps)
    return pro_counts(amaps, gt, n)


def _check_num_thresholds(num_thresholds: Any) -> int:
    if (
        isinstance(num_thresholds, bool)
        or not isinstance(num_thresholds, int | np.integer)
        or num_thresholds < 2
    ):
        raise ValueError(f"num_thresholds: expected an integer >= 2, got {num_thresholds!r}")
    return int(num_thresholds)


def _check_not_constant(amaps: np.ndarray) -> None:
    if amaps.min() == amaps.max():
        raise ValueError(f"maps: all values equal ({amaps.min()}), AUPRO thresholds are undefined")


def aupro_with_info(
    maps: ArrayLike, masks: ArrayLike, num_thresholds: int = 200, fpr_limit: float = 0.3
) -> tuple[float, dict[str, Any]]:
    """:func:`aupro` plus the curves of the winning branch and whether the reversed curve won.

    Returns:
        ``(score, info)``; ``info`` has ``reversed`` (bool), ``fpr`` and ``pro`` (full curve),
        ``fpr_crop_normalised`` and ``pro_crop_normalised`` (the part integrated, when it exists).
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit: expected a value in (0, 1], got {fpr_limit!r}")
    amaps = _maps_3d(maps, "maps")
    gt = _masks_3d(masks, "masks", amaps.shape)
    _check_not_constant(amaps)
    return aupro_arrays(amaps, gt, _check_num_thresholds(num_thresholds), fpr_limit)


def aupro(maps: ArrayLike, masks: ArrayLike, num_thresholds: int = 200, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, VisionAD's definition.

    See the module docstring for the exact definition (thresholds over the anomalous maps only, ``>=``,
    mean over all regions, fpr normalised by its maximum kept value, max of the forward and reversed curves).

    Args:
        maps: Heatmaps of the anomalous test images, ``(N, H, W)`` or ``(N, 1, H, W)``.
        masks: Their binary ground-truth masks, same shape; regions are 8-connected components.
        num_thresholds: Number of threshold steps between the maps' minimum and maximum (>= 2).
        fpr_limit: Keep curve points with false positive rate strictly below this.

    Returns:
        The AUPRO in [0, 1]; 0 when neither curve has two points below ``fpr_limit``.

    Raises:
        ValueError: Bad shapes or values, constant maps, or masks without any anomalous region.

    Memory: see :func:`pro_curve`; about 8 bytes per pixel of one image plus small per-region counts.
    """
    return aupro_with_info(maps, masks, num_thresholds, fpr_limit)[0]


# ----------------------------------------------------------------------------------------------------------
# Proportion localised
# ----------------------------------------------------------------------------------------------------------


def proportion_localised(
    maps: ArrayLike,
    masks: ArrayLike,
    iou_limit: float = 0.3,
    min_target_scale: float = 1 / 8,
    n_thresholds: int = 25,
    overlap_limit: float = 1 / 3,
) -> float:
    """The PL score of the ``proportion_localised`` package (Taylor et al., TMLR 2024).

    The proportion of anomalies (merged, rotated bounding boxes of the mask regions) whose IoU with the
    thresholded heatmap exceeds ``iou_limit``, at the best of ``n_thresholds`` percentile thresholds, in
    whichever direction of the heatmap scores higher. Calls ``proportion_localised.calculate`` with the
    arguments VisionAD uses.

    Args:
        maps: Heatmaps of the anomalous test images, ``(N, 256, 256)`` or ``(N, 1, 256, 256)`` (the package
            hard-codes 256 x 256 images).
        masks: Their binary ground-truth masks, same shape; each must contain at least one anomalous pixel.
        iou_limit: IoU above which an anomaly counts as localised.
        min_target_scale: Boxes are enlarged to at least this fraction of the image side.
        n_thresholds: Number of percentile thresholds tried.
        overlap_limit: Boxes overlapping more than this are merged.

    Returns:
        The PL score in [0, 1].

    Raises:
        ValueError: Bad shapes or values, images not 256 x 256, or an image whose mask is empty.

    Memory: the package allocates ``256 x 256 x R`` float64 distances per image with ``R`` regions, and a few
    ``256 x 256`` masks per region.
    """
    import proportion_localised as pl  # heavy (cv2, shapely): imported on use

    heatmaps = _maps_3d(maps, "maps")
    gt = _masks_3d(masks, "masks", heatmaps.shape)
    if heatmaps.shape[1:] != (PL_IMAGE_SIZE, PL_IMAGE_SIZE):
        raise ValueError(
            f"maps: proportion_localised needs {PL_IMAGE_SIZE}x{PL_IMAGE_SIZE} images, got {heatmaps.shape[1:]}"
        )
    empty = np.flatnonzero(~gt.reshape(gt.shape[0], -1).any(axis=1))
    if empty.size:
        raise ValueError(
            f"masks: images {empty[:10].tolist()} have no anomalous pixel; PL needs one per image"
        )
    score, _ = pl.calculate(
        heatmaps,
        gt.astype(np.float32),
        iou_limit,
        min_target_scale=min_target_scale,
        n_thresholds=n_thresholds,
        overlap_limit=overlap_limit,
    )
    return float(score)


# ----------------------------------------------------------------------------------------------------------
