"""Patch features of Patchcore+ (SPEC section 3): p x p neighbourhoods at stride s over two feature maps.

Aggregations (``feature_aggregation``), chosen per backbone by :func:`resolve_aggregation`:

``paper`` (the paper's pipeline, the default for ``wideresnet50``). Per layer: every p x p neighbourhood (zero padding (p - 1) // 2) at stride s over the layer's own grid is
flattened to a vector of C * p * p values (``F.unfold``); the layer3 patch grid is resized (bilinear) to the
layer2 patch grid; each layer's patch vectors are reduced to ``feature_dim`` values by adaptive average
pooling; the two are stacked and pooled again to ``feature_dim`` (PatchCore's aggregation, no learned weights).

Every step is linear, so :func:`patch_features` computes the same numbers (up to float rounding) without
materialising the unfolded (B, C * p * p, h, w) tensors: unfold followed by adaptive average pooling of the
C * p * p values, followed by the final pooling (which averages adjacent pairs of the stacked 2 * F values,
so the first F / 2 outputs come from layer2 and the last F / 2 from layer3), is one convolution per layer
with a fixed (F / 2, C, p, p) kernel of pooling weights, padding (p - 1) // 2 and stride s. Channel pooling
and bilinear resizing act on different axes and commute, so layer3 is resized after its convolution.
:func:`patch_features_reference` is the literal unfold -> resize -> pool -> stack -> pool pipeline, kept as
the specification the tests compare against.

Why a second aggregation. Adaptive average pooling of the C * p * p unfolded values (index c * p * p + i * p
+ j) to F = 1024 averages runs of ``C * p * p / F`` consecutive values. For WRN50 (512 and 1024 channels, p = 3:
4608 and 9216 values) a run spans several neighbouring positions of one channel, so the paper's pooling is a
*local average* of each channel over part of the neighbourhood, and each layer gets F / 2 values. For a small
backbone the same code does something else: EfficientNet-Lite0's 40 and 112 channels give 360 and 1008 values
at p = 3, which adaptive pooling *repeats* up to 1024 instead of averaging. Every position of the
neighbourhood then stays a separate dimension, so a test patch only matches bank patches with the same layout
inside the neighbourhood (a one-pixel shift of a texture looks anomalous), and the repetition counts weight
the two layers arbitrarily. Measured on unseen texture photos and an MVTec AD object (shared/notes), that
costs 0.05-0.15 P-AUC against anomalib's PatchCore with the same backbone.

``local_mean`` does what the paper's pooling does for WRN50 by construction: each layer is averaged over the p x p neighbourhood at stride s (``avg_pool2d``, zero padding
``(p - 1) // 2`` counted in the average, so the grid is exactly the paper's), the layer3 grid is resized
(bilinear) to the layer2 grid, a layer with more than F / 2 channels is pooled down to F / 2 channels
(adaptive average, adjacent channels, as the paper), and the layers are concatenated. The vector has
``sum(min(C_l, F / 2))`` dimensions (152 for Lite0, 1024 for WRN50), nothing repeated. ``p = 1`` is the raw
feature. With p = 3, s = 1 this is anomalib's PatchCore embedding (3 x 3 average pool, concatenation), so
``local_mean`` keeps the natural layer weighting: each channel counts once, so Lite0's finer layer (40
channels) weighs a third of the coarser one (112). ``local_mean_equal`` (the default for every backbone but
WRN50) scales each layer by ``sqrt(D / (2 C_l))`` so that both layers carry the same total weight in squared
euclidean distance, whatever their channel counts: what the paper's 512 + 512 split gives WRN50, and what its
pipeline gave Lite0 through the repeated values. Measured against anomalib's PatchCore on the three demo
classes and the four development sets (``benchmarks/bench_vs_anomalib.py``, benchmark_runs/vs_anomalib/),
equal weights gave the better AUPRO and PL on six of the seven sets and were within 0.004 P-AUC elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

FEATURE_AGGREGATIONS = ("auto", "paper", "local_mean", "local_mean_equal")
PAPER_BACKBONES = ("wideresnet50",)


def resolve_aggregation(name: str, backbone: str) -> str:
    """The aggregation to run: ``auto`` is ``paper`` for the paper's backbone, ``local_mean_equal`` otherwise.

    Raises:
        ValueError: unknown ``name`` (the message lists :data:`FEATURE_AGGREGATIONS`).
    """
    if name not in FEATURE_AGGREGATIONS:
        raise ValueError(f"unknown feature_aggregation {name!r}; valid: {', '.join(FEATURE_AGGREGATIONS)}")
    if name == "auto":
        return "paper" if backbone in PAPER_BACKBONES else "local_mean_equal"
    return name


def feature_width(channels: Sequence[int], aggregation: str, feature_dim: int) -> int:
    """Dimension of the patch vectors of ``aggregation`` (resolved) for layers of ``channels`` channels."""
    if aggregation == "paper":
        return feature_dim
    return sum(min(int(c), feature_dim // 2) for c in channels)


def grid_size(size: int, patch_size: int, stride: int) -> int:
    """Patches along one axis of a ``size``-long feature grid (zero padding ``(p - 1) // 2``)."""
    pad = (patch_size - 1) // 2
    return (size + 2 * pad - patch_size) // stride + 1


def unfold_patches(feature_map: torch.Tensor, patch_size: int, stride: int) -> torch.Tensor:
    """Every p x p neighbourhood at stride s, flattened.

    Args:
        feature_map: (B, C, H, W).
        patch_size: p (odd or even; padding is (p - 1) // 2).
        stride: s.

    Returns:
        (B, C * p * p, h, w) with h, w = :func:`grid_size` of H, W; channel index = c * p * p + i * p + j.
    """
    b, _, h_in, w_in = feature_map.shape
    pad = (patch_size - 1) // 2
    cols = F.unfold(feature_map, kernel_size=patch_size, padding=pad, stride=stride)  # (B, C*p*p, h*w)
    h, w = grid_size(h_in, patch_size, stride), grid_size(w_in, patch_size, stride)
    return cols.reshape(b, -1, h, w)  # (B, C*p*p, h, w)


def pool_channels(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Adaptive average pooling of the channel axis of a patch grid to ``dim`` values.

    Args:
        x: (B, D, h, w).
        dim: output channels (pools down, or repeats values up when D < dim, as adaptive pooling does).

    Returns:
        (B, dim, h, w).
    """
    b, d, h, w = x.shape
    flat = x.permute(0, 2, 3, 1).reshape(b * h * w, 1, d)  # (B*h*w, 1, D)
    pooled = F.adaptive_avg_pool1d(flat, dim)  # (B*h*w, 1, dim)
    return pooled.reshape(b, h, w, dim).permute(0, 3, 1, 2)  # (B, dim, h, w)


@lru_cache(maxsize=32)
def adaptive_pool_matrix(in_dim: int, out_dim: int) -> torch.Tensor:
    """(in_dim, out_dim) matrix M with ``x @ M == F.adaptive_avg_pool1d(x, out_dim)`` for (.., in_dim) rows.

    Bin j averages inputs floor(j * in / out) .. ceil((j + 1) * in / out) - 1, as torch's adaptive pooling.
    """
    m = torch.zeros(in_dim, out_dim, dtype=torch.float64)
    for j in range(out_dim):
        lo = (j * in_dim) // out_dim
        hi = -((-(j + 1) * in_dim) // out_dim)
        m[lo:hi, j] = 1.0 / (hi - lo)
    return m


def _pooling_kernel(channels: int, patch_size: int, feature_dim: int) -> torch.Tensor:
    """(feature_dim / 2, C, p, p) kernel: pool C * p * p patch values to feature_dim, then average pairs."""
    pool = adaptive_pool_matrix(channels * patch_size * patch_size, feature_dim)  # (C*p*p, F)
    pairs = (
        pool[:, 0::2] + pool[:, 1::2]
    ) / 2  # (C*p*p, F/2): the final 2F -> F pooling of this layer's half
    return pairs.T.reshape(feature_dim // 2, channels, patch_size, patch_size).float()  # (F/2, C, p, p)


def patch_features(
    layer_maps: list[torch.Tensor],
    patch_size: int = 3,
    stride: int = 1,
    feature_dim: int = 1024,
    aggregation: str = "paper",
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patchcore+ patch features of a batch (see the module docstring for the aggregations).

    Args:
        layer_maps: [(B, C2, H2, W2), (B, C3, H3, W3)] backbone maps, the first the finer one (layer2).
        patch_size: p, the neighbourhood size.
        stride: s, the patch stride on each layer's own grid.
        feature_dim: dimension of the pooled vectors (1024; ``local_mean``: the most); must be even.
        aggregation: ``paper``, ``local_mean`` or ``local_mean_equal`` (resolve ``auto`` first with
            :func:`resolve_aggregation`).

    Returns:
        ``(features, (h, w))``: features (B * h * w, D) float32 in (image, row, column) order, with
        D = :func:`feature_width`, and the patch grid (h, w) of the first layer.
    """
    _check(layer_maps, patch_size, stride, feature_dim)
    if aggregation in ("local_mean", "local_mean_equal"):
        return _local_mean_features(
            layer_maps, patch_size, stride, feature_dim, aggregation == "local_mean_equal"
        )
    if aggregation != "paper":
        raise ValueError(
            f"unknown feature_aggregation {aggregation!r}; valid here: paper, local_mean, local_mean_equal"
        )
    pad = (patch_size - 1) // 2
    halves = []
    for fmap in layer_maps:
        fmap = fmap.float()
        kernel = _pooling_kernel(fmap.shape[1], patch_size, feature_dim).to(fmap.device)
        halves.append(F.conv2d(fmap, kernel, stride=stride, padding=pad))  # (B, F/2, h_l, w_l)
    fine, coarse = halves
    b, _, h, w = fine.shape
    if coarse.shape[-2:] != (h, w):
        coarse = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)  # (B, F/2, h, w)
    features = torch.cat([fine, coarse], dim=1)  # (B, F, h, w)
    return features.permute(0, 2, 3, 1).reshape(b * h * w, feature_dim), (h, w)  # (B*h*w, F)


def _local_mean_features(
    layer_maps: list[torch.Tensor], patch_size: int, stride: int, feature_dim: int, equal_weights: bool
) -> tuple[torch.Tensor, tuple[int, int]]:
    """``local_mean`` aggregation: p x p average per layer, layer3 resized, channels capped at F / 2, concatenated."""
    pad = (patch_size - 1) // 2
    pooled = []
    for fmap in layer_maps:
        fmap = fmap.float()
        if patch_size > 1 or stride > 1:
            fmap = F.avg_pool2d(fmap, patch_size, stride=stride, padding=pad, count_include_pad=True)
        if fmap.shape[1] > feature_dim // 2:  # pool adjacent channels down to this layer's share
            matrix = adaptive_pool_matrix(fmap.shape[1], feature_dim // 2).float().to(fmap.device)
            fmap = torch.einsum("bchw,cd->bdhw", fmap, matrix)  # (B, F/2, h_l, w_l)
        pooled.append(fmap)
    fine, coarse = pooled
    b, _, h, w = fine.shape
    if coarse.shape[-2:] != (h, w):
        coarse = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)  # (B, C3', h, w)
    if equal_weights:
        total = fine.shape[1] + coarse.shape[1]
        fine = fine * (total / (2 * fine.shape[1])) ** 0.5
        coarse = coarse * (total / (2 * coarse.shape[1])) ** 0.5
    features = torch.cat([fine, coarse], dim=1)  # (B, D, h, w)
    return features.permute(0, 2, 3, 1).reshape(b * h * w, -1), (h, w)  # (B*h*w, D)


def patch_features_reference(
    layer_maps: list[torch.Tensor], patch_size: int = 3, stride: int = 1, feature_dim: int = 1024
) -> tuple[torch.Tensor, tuple[int, int]]:
    """The literal SPEC pipeline (slow, memory-hungry): same contract as :func:`patch_features`."""
    _check(layer_maps, patch_size, stride, feature_dim)
    fine = unfold_patches(layer_maps[0].float(), patch_size, stride)  # (B, C2*p*p, h, w)
    coarse = unfold_patches(layer_maps[1].float(), patch_size, stride)  # (B, C3*p*p, h3, w3)
    b, _, h, w = fine.shape
    coarse = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)  # (B, C3*p*p, h, w)
    stacked = torch.stack([pool_channels(fine, feature_dim), pool_channels(coarse, feature_dim)], dim=-1)
    stacked = stacked.permute(0, 2, 3, 4, 1).reshape(b * h * w, 1, 2 * feature_dim)  # (B*h*w, 1, 2F)
    return F.adaptive_avg_pool1d(stacked, feature_dim).squeeze(1), (h, w)  # (B*h*w, F)


def _check(layer_maps: list[torch.Tensor], patch_size: int, stride: int, feature_dim: int) -> None:
    if len(layer_maps) != 2:
        raise ValueError(f"expected 2 layer maps, got {len(layer_maps)}")
    if patch_size < 1 or stride < 1:
        raise ValueError(f"patch_size and stride must be >= 1, got {patch_size}, {stride}")
    if feature_dim < 2 or feature_dim % 2:
        raise ValueError(f"feature_dim must be even and >= 2, got {feature_dim}")
