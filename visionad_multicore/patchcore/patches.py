"""Patch features of Patchcore+ (SPEC section 3): p x p neighbourhoods at stride s over two feature maps.

Per layer: every p x p neighbourhood (zero padding (p - 1) // 2) at stride s over the layer's own grid is
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
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


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
    layer_maps: list[torch.Tensor], patch_size: int = 3, stride: int = 1, feature_dim: int = 1024
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patchcore+ patch features of a batch (the SPEC pipeline computed as two convolutions, see module doc).

    Args:
        layer_maps: [(B, C2, H2, W2), (B, C3, H3, W3)] backbone maps, the first the finer one (layer2).
        patch_size: p, the neighbourhood size.
        stride: s, the patch stride on each layer's own grid.
        feature_dim: dimension of the pooled vectors (1024); must be even.

    Returns:
        ``(features, (h, w))``: features (B * h * w, feature_dim) float32 in (image, row, column) order, and
        the patch grid (h, w) of the first layer.
    """
    _check(layer_maps, patch_size, stride, feature_dim)
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
