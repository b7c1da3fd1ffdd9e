"""Tests of the SSA mask schema: counts, scale, stretch, positions, multi masks, seeding."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from visionad_multicore.synthetic.masks import (
    STRETCH_NONE,
    STRETCH_X,
    STRETCH_Y,
    MaskSet,
    SSAConfig,
    generate_masks,
)

SIZE = 128


@pytest.fixture(scope="module")
def default_128() -> MaskSet:
    """The default schema (2060 masks) at 128 px: the full stratification, cheap enough for a test."""
    return generate_masks(SSAConfig(size=SIZE), seed=3)


def _areas(ms: MaskSet) -> np.ndarray:
    return ms.masks.reshape(len(ms), -1).sum(axis=1)


def test_counts_per_bucket_and_per_a(default_128: MaskSet) -> None:
    ms = default_128
    cfg = ms.config
    assert len(ms) == cfg.n_masks == 29 * 60 + 6 * 20 + 200 == 2060
    assert ms.masks.shape == (2060, SIZE, SIZE) and ms.masks.dtype == bool
    counts = ms.counts()
    assert all(counts[f"n={n}"] == 60 for n in range(1, 30))
    assert all(counts[f"a={a}"] == 20 for a in range(2, 8))
    assert counts["empty"] == 200
    assert sum(counts.values()) == len(ms)
    singles = ms.n_anomalies == 1
    assert np.array_equal(np.unique(ms.bucket[singles]), np.arange(1, 30))
    assert np.all(ms.bucket[~singles] == 0)


def test_singles_non_empty_one_component_and_empties_empty(default_128: MaskSet) -> None:
    ms = default_128
    areas = _areas(ms)
    singles = ms.n_anomalies == 1
    assert np.all(areas[singles] >= 1)
    assert np.all(ms.n_components[singles] == 1)
    empty = ms.n_anomalies == 0
    assert np.all(areas[empty] == 0) and np.all(ms.n_components[empty] == 0)
    # the recorded component counts are the real ones (8-connectivity)
    for i in np.flatnonzero(singles)[::97]:
        assert ndimage.label(ms.masks[i], structure=np.ones((3, 3)))[1] == 1


def test_median_area_decreases_with_n_within_scale_band(default_128: MaskSet) -> None:
    ms = default_128
    areas = _areas(ms)
    medians = np.array([np.median(areas[ms.bucket == n]) for n in range(1, 30)])
    scale2 = (SIZE / np.arange(1, 30)) ** 2  # bounding box area of an unstretched shape
    # a shape fills its s x s box partly: the median fill lies in a fixed band whatever n
    ratio = medians / scale2
    assert np.all((ratio > 0.08) & (ratio < 0.5)), ratio
    # decreasing with n: strictly across well-separated buckets, and a rank correlation close to -1
    assert np.all(np.diff(medians[[0, 1, 3, 7, 15, 28]]) < 0)
    ranks = np.argsort(np.argsort(medians))
    assert np.corrcoef(ranks, -np.arange(29))[0, 1] > 0.95
    # no single shape exceeds its bucket's box (one pixel of slack for rasterisation)
    for n in range(1, 30):
        assert areas[ms.bucket == n].max() <= (SIZE / n + 1) ** 2


def test_stretch_frequencies_and_aspect_ratio(default_128: MaskSet) -> None:
    ms = default_128
    singles = ms.n_anomalies == 1
    axis = ms.stretch_axis[singles]
    n = axis.size  # 1740
    freq = np.bincount(axis, minlength=3) / n
    # binomial std of a 0.5 frequency over 1740 draws is 0.012, of 0.25 is 0.010: 4 sigma bands
    assert abs(freq[STRETCH_NONE] - 0.5) < 0.05
    assert abs(freq[STRETCH_Y] - 0.25) < 0.045 and abs(freq[STRETCH_X] - 0.25) < 0.045
    u = ms.stretch_u[singles]
    assert np.all(u[axis == STRETCH_NONE] == 1.0)
    stretched = u[axis != STRETCH_NONE]
    assert stretched.min() >= 0.05 and stretched.max() <= 1.0
    # uniform on [0.05, 1]: mean 0.525, quartiles near 0.2875 / 0.7625
    assert abs(stretched.mean() - 0.525) < 0.04
    assert abs(np.quantile(stretched, 0.25) - 0.2875) < 0.06
    assert np.all(np.isnan(ms.stretch_u[~singles])) and np.all(ms.stretch_axis[~singles] == -1)


def test_measured_aspect_ratio_follows_stretch() -> None:
    # large shapes (n = 2 at 256 px) so rasterisation hardly blurs the geometry; skip any clipped by the border
    cfg = SSAConfig(size=256, buckets=(2,), masks_per_bucket=300, multi_counts=(), n_empty=0)
    ms = generate_masks(cfg, seed=1)
    s = 128.0
    errors, long_sides = [], []
    for i in range(len(ms)):
        rows, cols = np.nonzero(ms.masks[i])
        cy, cx = ms.centre[i]
        if min(cy, cx) < s / 2 + 1 or max(cy, cx) > 256 - s / 2 - 1:
            continue  # touches the border: the clipped box says nothing about the aspect ratio
        height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
        u, axis = ms.stretch_u[i], ms.stretch_axis[i]
        if axis == STRETCH_Y:  # tall: height s, width u * s
            long_side, short_side = height, width
            if u < 0.8:
                assert height > width
        elif axis == STRETCH_X:  # wide: width s, height u * s
            long_side, short_side = width, height
            if u < 0.8:
                assert width > height
        else:
            long_side, short_side = max(height, width), min(height, width)
        long_sides.append(long_side)
        errors.append(short_side / long_side - u)  # measured 1 / aspect ratio vs the drawn u
    assert len(errors) > 30
    errors = np.abs(np.array(errors))
    # pixel-thin spikes at vertices can lose a few pixels of extent; the bulk follows the stretch closely
    assert np.median(errors) < 0.03 and np.quantile(errors, 0.9) < 0.1
    assert np.median(long_sides) >= s - 3 and max(long_sides) <= s + 1


def test_centres_cover_the_grid(default_128: MaskSet) -> None:
    ms = default_128
    for n in range(1, 30):
        sel = ms.bucket == n
        cells = ms.grid_cell[sel]
        assert cells.min() >= 0 and cells.max() <= n - 1
        s = SIZE / n
        # centre = grid point + offset within half a cell
        grid_pts = (cells + 0.5) * s
        assert np.all(np.abs(ms.centre[sel] - grid_pts) <= 0.5 * s + 1e-9)
        if n * n <= 60:  # stratified: every grid point used, as evenly as possible
            flat = cells[:, 0] * n + cells[:, 1]
            uses = np.bincount(flat, minlength=n * n)
            assert uses.min() >= 60 // (n * n) and uses.max() <= 60 // (n * n) + 1
    # over all large buckets together the chosen cells spread over the whole image (each quarter ~ 1/4)
    big = ms.bucket >= 8
    rel = (ms.grid_cell[big] + 0.5) / ms.bucket[big][:, None]  # (K, 2) in (0, 1)
    quarter = (rel[:, 0] > 0.5) * 2 + (rel[:, 1] > 0.5)
    freq = np.bincount(quarter, minlength=4) / quarter.size
    assert np.all(np.abs(freq - 0.25) < 0.05), freq


def test_multi_masks_have_exactly_a_separate_components(default_128: MaskSet) -> None:
    ms = default_128
    for a in range(2, 8):
        idx = np.flatnonzero((ms.bucket == 0) & (ms.n_anomalies == a))
        assert idx.size == 20
        for i in idx:
            mask = ms.masks[i]
            assert ndimage.label(mask, structure=np.ones((3, 3)))[1] == a  # not even touching diagonally
            assert ndimage.label(mask)[1] == a  # and one piece each under 4-connectivity
            assert ms.n_components[i] == a


def test_same_seed_same_masks_and_different_seed_different() -> None:
    cfg = SSAConfig(
        size=48, buckets=(1, 3, 7), masks_per_bucket=5, multi_counts=(2, 3), masks_per_multi=2, n_empty=2
    )
    a, b = generate_masks(cfg, seed=11), generate_masks(cfg, seed=11)
    assert np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.stretch_u, b.stretch_u, equal_nan=True)
    assert np.array_equal(a.grid_cell, b.grid_cell)
    c = generate_masks(cfg, seed=12)
    assert not np.array_equal(a.masks, c.masks)


def test_global_random_untouched_and_irrelevant() -> None:
    cfg = SSAConfig(
        size=48, buckets=(2, 5), masks_per_bucket=6, multi_counts=(3,), masks_per_multi=2, n_empty=1
    )
    random.seed(1234)
    expected_next = random.Random(1234).random()
    first = generate_masks(cfg, seed=5)
    assert random.random() == expected_next  # the caller's stream continues as if nothing happened
    random.seed(999)
    state = random.getstate()
    second = generate_masks(cfg, seed=5)
    assert random.getstate() == state
    assert np.array_equal(first.masks, second.masks)  # output does not depend on the global state


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="stretch_probs"):
        SSAConfig(stretch_probs=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="min_vertices"):
        SSAConfig(min_vertices=2)
    with pytest.raises(ValueError, match="polygon_kind"):
        SSAConfig(polygon_kind="hexagon")
    with pytest.raises(ValueError, match="valid keys"):
        SSAConfig.from_dict({"size": 64, "bucket": (1, 2)})
    assert SSAConfig.from_dict({"size": 64, "buckets": [1, 2]}).buckets == (1, 2)


@settings(max_examples=15, deadline=None)
@given(
    size=st.integers(16, 80),
    buckets=st.lists(st.integers(1, 12), min_size=1, max_size=3, unique=True),
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(["random", "star", "convex"]),
)
def test_property_masks_binary_non_empty_within_box(
    size: int, buckets: list[int], seed: int, kind: str
) -> None:
    cfg = SSAConfig(
        size=size,
        buckets=tuple(buckets),
        masks_per_bucket=4,
        multi_counts=(2,),
        masks_per_multi=1,
        n_empty=1,
        polygon_kind=kind,
    )
    ms = generate_masks(cfg, seed=seed)
    assert ms.masks.dtype == bool and ms.masks.shape == (cfg.n_masks, size, size)
    areas = _areas(ms)
    singles = ms.n_anomalies == 1
    assert np.all(areas[singles] >= 1)
    for i in np.flatnonzero(singles):
        rows, cols = np.nonzero(ms.masks[i])
        s = size / ms.bucket[i]
        assert np.ptp(rows) + 1 <= s + 2 and np.ptp(cols) + 1 <= s + 2
    assert ms.n_components[-2] == 2 and areas[-1] == 0
