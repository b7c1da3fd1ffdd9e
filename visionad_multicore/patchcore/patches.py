"""Patch features of Patchcore+ (SPEC section 3): p x p neighbourhoods at stride s over two feature maps.

Per layer: every p x p neighbourhood (zero padding (p - 1) // 2) at stride s over the layer's own grid is
flattened to a vector of C * p * p values (``F.unfold``); the layer3 patch grid is resized (bilinear) to the
layer2 patch grid; each layer's patch vectors are reduced to ``feature_dim`` values by adaptive average
pooling; the two are stacked and pooled again to ``feature_dim`` (PatchCore's aggregation, no learned weights).

Channel pooling and bilinear resizing are linear maps acting on different axes (channel vs grid), so they
commute; the layer3 vectors are pooled *before* the resize, which gives the same numbers up to float
rounding while resizing 1024 instead of C * p * p channels (9216 for WRN50 layer3 at p = 3).
"""

from __future__ import annotations

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


def patch_features(
    layer_maps: list[torch.Tensor], patch_size: int = 3, stride: int = 1, feature_dim: int = 1024
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patchcore+ patch features of a batch.

    Args:
        layer_maps: [(B, C2, H2, W2), (B, C3, H3, W3)] backbone maps, the first the finer one (layer2).
        patch_size: p, the neighbourhood size.
        stride: s, the patch stride on each layer's own grid.
        feature_dim: dimension of the pooled vectors (1024).

    Returns:
        ``(features, (h, w))``: features (B * h * w, feature_dim) float32 in (image, row, column) order, and
        the patch grid (h, w) of the first layer.
    """
    if len(layer_maps) != 2:
        raise ValueError(f"expected 2 layer maps, got {len(layer_maps)}")
    if patch_size < 1 or stride < 1:
        raise ValueError(f"patch_size and stride must be >= 1, got {patch_size}, {stride}")
    fine = pool_channels(unfold_patches(layer_maps[0].float(), patch_size, stride), feature_dim)  # (B, F, h, w)
    coarse = pool_channels(unfold_patches(layer_maps[1].float(), patch_size, stride), feature_dim)  # (B, F, h3, w3)
    b, _, h, w = fine.shape
    if coarse.shape[-2:] != (h, w):
        coarse = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)  # (B, F, h, w)
    stacked = torch.stack([fine, coarse], dim=-1)  # (B, F, h, w, 2)
    stacked = stacked.permute(0, 2, 3, 4, 1).reshape(b * h * w, 1, 2 * feature_dim)  # (B*h*w, 1, 2F)
    features = F.adaptive_avg_pool1d(stacked, feature_dim).squeeze(1)  # (B*h*w, F)
    return features.contiguous(), (h, w)
