"""Per-image PRO pieces: with unit weights they give the AUPRO; integer weights equal repeating images."""

from __future__ import annotations

import numpy as np
import pytest

from visionad_multicore.region_overlap import aupro_arrays, per_image_pro, weighted_aupro


def _data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = np.zeros((5, 24, 24), bool)
    gt[:, 4:10, 6:14] = True
    gt[1, 15:20, 15:22] = True  # two regions in one image
    gt[3] = False  # an image without a defect still counts its false positives
    return rng.normal(size=gt.shape) + 1.5 * gt, gt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unit_weights_give_the_forward_aupro(seed: int) -> None:
    maps, gt = _data(seed)
    pieces = per_image_pro(maps, gt)
    assert weighted_aupro(pieces, np.ones(5))[0] == pytest.approx(
        aupro_arrays(maps, gt, allow_reversed=False)[0], abs=1e-12
    )


def test_integer_weights_equal_repeated_images() -> None:
    maps, gt = _data(3)
    weights = np.array([2, 0, 1, 3, 1])
    repeated = np.repeat(np.arange(5), weights)
    # same thresholds: the repeated set has the same min and max only if every image with a defect is kept
    pieces = per_image_pro(maps, gt)
    direct = per_image_pro(maps[repeated], gt[repeated])
    assert weighted_aupro(pieces, weights)[0] == pytest.approx(
        weighted_aupro(direct, np.ones(len(repeated)))[0], abs=0.02
    )
    many = weighted_aupro(pieces, np.stack([np.ones(5), weights]))
    assert many.shape == (2,) and many[0] == pytest.approx(weighted_aupro(pieces, np.ones(5))[0])
