"""Patch grids and feature shapes (fake feature maps, no network)."""

from __future__ import annotations

import pytest
import torch

from visionad_multicore.patchcore.patches import (
    adaptive_pool_matrix,
    feature_width,
    grid_size,
    patch_features,
    patch_features_reference,
    pool_channels,
    resolve_aggregation,
    unfold_patches,
)


@pytest.mark.parametrize(("stride", "side"), [(1, 32), (3, 11), (5, 7)])
@pytest.mark.parametrize("patch_size", [1, 3, 5, 7])
def test_grid_at_256px(patch_size: int, stride: int, side: int) -> None:
    # layer2 of a 256 px input is 32 x 32 (stride 8), layer3 16 x 16 (stride 16)
    maps = [torch.randn(2, 4, 32, 32), torch.randn(2, 6, 16, 16)]
    feats, grid = patch_features(maps, patch_size, stride, feature_dim=16)
    assert grid == (side, side)
    assert grid_size(32, patch_size, stride) == side
    assert feats.shape == (2 * side * side, 16)


def test_unfold_layout_and_zero_padding() -> None:
    fmap = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    cols = unfold_patches(fmap, 3, 1)  # (1, 2*9, 4, 4)
    assert cols.shape == (1, 18, 4, 4)
    # centre element of channel c at grid (i, j) is the map value there
    assert torch.equal(cols[0, 4], fmap[0, 0])
    assert torch.equal(cols[0, 9 + 4], fmap[0, 1])
    # top-left neighbour of location (0, 0) is zero padding
    assert cols[0, 0, 0, 0] == 0
    assert cols[0, 0, 1, 1] == fmap[0, 0, 0, 0]


def test_pool_channels_is_adaptive_average() -> None:
    x = torch.arange(8, dtype=torch.float32).reshape(1, 8, 1, 1)
    assert torch.equal(pool_channels(x, 4).flatten(), torch.tensor([0.5, 2.5, 4.5, 6.5]))


@pytest.mark.parametrize(("patch_size", "stride"), [(1, 1), (3, 1), (3, 3), (7, 3), (3, 5), (4, 2)])
def test_conv_pipeline_equals_spec_pipeline(patch_size: int, stride: int) -> None:
    """The two-convolution computation equals unfold -> resize -> pool -> stack -> pool (SPEC section 3)."""
    gen = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, 5, 12, 12, generator=gen), torch.randn(2, 7, 6, 6, generator=gen)]
    feats, grid = patch_features(maps, patch_size, stride, feature_dim=64)
    ref, ref_grid = patch_features_reference(maps, patch_size, stride, feature_dim=64)
    assert grid == ref_grid
    torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-5)


def test_features_literal_spec_order() -> None:
    """The reference itself: resize the layer3 patch grid, pool each layer to F, stack, pool to F."""
    gen = torch.Generator().manual_seed(0)
    maps = [torch.randn(1, 5, 8, 8, generator=gen), torch.randn(1, 7, 4, 4, generator=gen)]
    feats, grid = patch_features_reference(maps, 3, 1, feature_dim=32)
    f2 = unfold_patches(maps[0], 3, 1)
    f3 = torch.nn.functional.interpolate(unfold_patches(maps[1], 3, 1), size=grid, mode="bilinear")
    a, b = pool_channels(f2, 32), pool_channels(f3, 32)  # (1, 32, 8, 8)
    stacked = torch.stack([a, b], 1).permute(0, 3, 4, 1, 2).reshape(-1, 1, 64)
    ref = torch.nn.functional.adaptive_avg_pool1d(stacked, 32).squeeze(1)
    torch.testing.assert_close(feats, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("d_in", "d_out"), [(360, 1024), (4608, 1024), (7, 3), (10, 10)])
def test_pool_matrix_matches_adaptive_pooling(d_in: int, d_out: int) -> None:
    x = torch.randn(3, d_in, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = torch.nn.functional.adaptive_avg_pool1d(x.unsqueeze(1), d_out).squeeze(1)
    torch.testing.assert_close(x @ adaptive_pool_matrix(d_in, d_out), ref)


def test_odd_feature_dim_rejected() -> None:
    with pytest.raises(ValueError, match="even"):
        patch_features([torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)], feature_dim=15)


# ---------------------------------------------------------------------------------------------- local_mean
def _naive_local_mean(fmap: torch.Tensor, p: int, s: int) -> torch.Tensor:
    """Mean over each p x p zero-padded neighbourhood at stride s, by explicit loops: (C, h, w)."""
    c, h_in, w_in = fmap.shape
    pad = (p - 1) // 2
    h, w = grid_size(h_in, p, s), grid_size(w_in, p, s)
    out = torch.zeros(c, h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            total = torch.zeros(c, dtype=torch.float64)
            for di in range(p):
                for dj in range(p):
                    y, x = i * s - pad + di, j * s - pad + dj
                    if 0 <= y < h_in and 0 <= x < w_in:
                        total += fmap[:, y, x].double()
            out[:, i, j] = total / (p * p)  # zero padding counts in the average
    return out


@pytest.mark.parametrize(("patch_size", "stride"), [(1, 1), (3, 1), (3, 3), (5, 3), (7, 5), (4, 2)])
def test_local_mean_equals_naive_neighbourhood_average(patch_size: int, stride: int) -> None:
    gen = torch.Generator().manual_seed(3)
    maps = [torch.randn(1, 5, 12, 12, generator=gen), torch.randn(1, 7, 6, 6, generator=gen)]
    feats, (h, w) = patch_features(maps, patch_size, stride, feature_dim=64, aggregation="local_mean")
    fine = _naive_local_mean(maps[0][0], patch_size, stride)  # (5, h, w)
    coarse = _naive_local_mean(maps[1][0], patch_size, stride)[None].float()  # (1, 7, h3, w3)
    coarse = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    expected = torch.cat([fine.float(), coarse]).permute(1, 2, 0).reshape(h * w, 12)
    assert feats.shape == (h * w, 12) == (h * w, feature_width([5, 7], "local_mean", 64))
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-5)


def test_local_mean_p1_is_the_raw_features_and_nothing_is_repeated() -> None:
    gen = torch.Generator().manual_seed(4)
    maps = [torch.randn(2, 40, 8, 8, generator=gen), torch.randn(2, 112, 8, 8, generator=gen)]
    feats, _ = patch_features(maps, 1, 1, feature_dim=1024, aggregation="local_mean")
    expected = torch.cat(maps, dim=1).permute(0, 2, 3, 1).reshape(-1, 152)
    torch.testing.assert_close(feats, expected)


def test_local_mean_pools_wide_layers_down_to_half_the_feature_dim() -> None:
    gen = torch.Generator().manual_seed(5)
    maps = [torch.randn(1, 6, 4, 4, generator=gen), torch.randn(1, 20, 4, 4, generator=gen)]
    feats, _ = patch_features(maps, 1, 1, feature_dim=16, aggregation="local_mean")  # layer shares: 8 each
    assert feats.shape == (16, 6 + 8)
    flat = maps[1][0].permute(1, 2, 0).reshape(16, 1, 20)
    torch.testing.assert_close(feats[:, 6:], torch.nn.functional.adaptive_avg_pool1d(flat, 8).squeeze(1))


def test_local_mean_equal_gives_both_layers_the_same_total_weight() -> None:
    gen = torch.Generator().manual_seed(6)
    maps = [torch.randn(1, 40, 8, 8, generator=gen), torch.randn(1, 112, 8, 8, generator=gen)]
    plain, _ = patch_features(maps, 3, 1, aggregation="local_mean")
    equal, _ = patch_features(maps, 3, 1, aggregation="local_mean_equal")
    # squared distance = w2^2 * |d2|^2 + w3^2 * |d3|^2 with w_l^2 * C_l equal for both layers
    torch.testing.assert_close(equal[:, :40], plain[:, :40] * (152 / 80) ** 0.5)
    torch.testing.assert_close(equal[:, 40:], plain[:, 40:] * (152 / 224) ** 0.5)
    assert (152 / 80) * 40 == pytest.approx((152 / 224) * 112)


def test_aggregation_names() -> None:
    assert resolve_aggregation("auto", "wideresnet50") == "paper"
    assert resolve_aggregation("auto", "efficientnet_lite0") == "local_mean_equal"
    assert resolve_aggregation("local_mean_equal", "wideresnet50") == "local_mean_equal"
    with pytest.raises(ValueError, match="local_mean"):
        resolve_aggregation("mean", "efficientnet_lite0")
    with pytest.raises(ValueError, match="unknown feature_aggregation"):
        patch_features([torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)], aggregation="auto")
