"""Tests for visionad_multicore.visionad.metrics: scikit-learn, hand-worked cases, a slow reference loop."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from skimage import measure
from sklearn.metrics import auc, roc_auc_score

from visionad_multicore.visionad.metrics import (
    METRICS,
    aupro,
    aupro_with_info,
    comparable_thresholds,
    image_auroc,
    metric_failures,
    pixel_auroc,
    pro_curve,
    proportion_localised,
    resolve_metric_names,
    run_metrics,
)

# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------


def slow_aupro(maps: np.ndarray, masks: np.ndarray, num_th: int = 200, fpr_limit: float = 0.3) -> float:
    """AUPRO by the definition, one threshold at a time (VisionAD's definition, written plainly)."""
    masks = masks.astype(bool)
    low, high = maps.min(), maps.max()
    thresholds = np.arange(low, high, (high - low) / num_th)[1:]
    regions = []
    for i, mask in enumerate(masks):
        labels = measure.label(mask)
        regions += [(i, labels == r) for r in range(1, labels.max() + 1)]
    regular = ~masks
    pros, fprs = [], []
    for th in thresholds:
        predicted = maps >= th
        pros.append(np.mean([predicted[i][region].sum() / region.sum() for i, region in regions]))
        with np.errstate(invalid="ignore"):  # no regular pixel: NaN, as in VisionAD
            fprs.append(np.logical_and(predicted, regular).sum() / regular.sum())
    best = 0.0
    for x, y in ((np.array(fprs), np.array(pros)), (1 - np.array(fprs), 1 - np.array(pros))):
        keep = x < fpr_limit
        x, y = x[keep], y[keep]
        if len(x) >= 2 and x.max() > 0:
            best = max(best, float(auc(x / x.max(), y)))
    return best


def blob_masks(rng: np.random.Generator, n: int, size: int, max_regions: int) -> np.ndarray:
    """``(n, size, size)`` bool masks with 1..max_regions random rectangles each."""
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        for _ in range(int(rng.integers(1, max_regions + 1))):
            h, w = rng.integers(1, size // 3, size=2)
            y, x = rng.integers(0, size - 1, size=2)
            masks[i, y : y + h, x : x + w] = True
    return masks


def visionad_sets(maps_novel, maps_regular, masks, scores_novel, scores_regular, method="m"):
    """VisionAD-shaped (heatmap_set, image_score_set, targets_set, paths_set) for one method."""
    heatmap_set = {
        "heatmap_set_novel": {method: torch.as_tensor(maps_novel)[:, None]},
        "heatmap_set_regular": {method: torch.as_tensor(maps_regular)[:, None]},
    }
    image_score_set = {
        "image_score_set_novel": {method: torch.as_tensor(scores_novel)},
        "image_score_set_regular": {method: torch.as_tensor(scores_regular)},
    }
    targets_set = {"targets_novel": torch.as_tensor(masks, dtype=torch.float32)[:, None]}
    return heatmap_set, image_score_set, targets_set, {}


# ----------------------------------------------------------------------------------------------------------
# AUROC
# ----------------------------------------------------------------------------------------------------------

score_lists = st.lists(
    st.integers(-5, 5) | st.floats(-3, 3, allow_nan=False, width=32), min_size=1, max_size=40
)


@settings(max_examples=60, deadline=None)
@given(regular=score_lists, anomalous=score_lists)
def test_image_auroc_matches_sklearn_with_ties(regular, anomalous):
    regular, anomalous = np.array(regular, dtype=np.float64), np.array(anomalous, dtype=np.float64)
    labels = np.r_[np.ones(anomalous.size), np.zeros(regular.size)]
    expected = roc_auc_score(labels, np.r_[anomalous, regular])
    assert image_auroc(regular, anomalous, flip=False) == pytest.approx(expected, abs=1e-12)
    flipped = image_auroc(regular, anomalous)
    assert flipped == pytest.approx(expected if expected > 0.5 else 1 - expected, abs=1e-12)
    assert 0.5 <= flipped <= 1.0


def test_image_auroc_accepts_tensors_and_column_vectors():
    rng = np.random.default_rng(0)
    regular, anomalous = rng.normal(size=7).astype(np.float32), rng.normal(1, 1, size=5).astype(np.float32)
    expected = roc_auc_score(np.r_[np.ones(5), np.zeros(7)], np.r_[anomalous, regular])
    assert image_auroc(
        torch.from_numpy(regular), torch.from_numpy(anomalous[:, None]), flip=False
    ) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("with_regular", [True, False])
@pytest.mark.parametrize("quantise", [True, False])
def test_pixel_auroc_matches_sklearn(with_regular, quantise):
    rng = np.random.default_rng(1)
    masks = blob_masks(rng, 4, 24, 2)
    novel = rng.normal(size=masks.shape).astype(np.float32) + masks
    regular = rng.normal(size=(3, 24, 24)).astype(np.float32)
    if quantise:  # many ties, including between the classes
        novel, regular = np.round(novel * 2) / 2, np.round(regular * 2) / 2
    labels = masks.ravel().astype(int)
    values = novel.ravel()
    if with_regular:
        labels = np.r_[labels, np.zeros(regular.size)]
        values = np.r_[values, regular.ravel()]
    expected = roc_auc_score(labels, values)
    novel_before, regular_before = novel.copy(), regular.copy()
    ours = pixel_auroc(torch.from_numpy(novel)[:, None], masks[:, None], regular if with_regular else None)
    assert ours == pytest.approx(expected, abs=1e-12)
    np.testing.assert_array_equal(novel, novel_before)  # sorting happens on copies only
    np.testing.assert_array_equal(regular, regular_before)


def test_auroc_flip_below_half():
    regular = np.array([0.9, 0.8, 0.7, 0.1])
    anomalous = np.array([0.2, 0.3, 0.75])
    raw = roc_auc_score(np.r_[np.ones(3), np.zeros(4)], np.r_[anomalous, regular])
    assert raw == pytest.approx(4 / 12)  # by hand: 0.2 > 0.1, 0.3 > 0.1, 0.75 > 0.7 and 0.1: 4 of 12 pairs
    assert image_auroc(regular, anomalous, flip=False) == pytest.approx(1 / 3)
    assert image_auroc(regular, anomalous) == pytest.approx(2 / 3)
    assert image_auroc(-regular, -anomalous, flip=False) == pytest.approx(
        2 / 3
    )  # negating both flips the order
    # The pixel version flips too: anomalous pixels scored lower than regular ones.
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, :2, :2] = True
    maps = np.where(masks, 0.0, 1.0)
    maps[0, 0, 0] = 2.0  # one anomalous pixel above every regular one: raw AUC = 3/4 * 0 + 1/4 * 1
    assert pixel_auroc(maps, masks, flip=False) == pytest.approx(0.25)
    assert pixel_auroc(maps, masks) == pytest.approx(0.75)


def test_imagewise_auc_wrapper_logs_flip(caplog):
    rng = np.random.default_rng(2)
    masks = blob_masks(rng, 3, 16, 1)
    sets = visionad_sets(
        rng.random((3, 16, 16)),
        rng.random((2, 16, 16)),
        masks,
        np.array([0.1, 0.2, 0.3]),
        np.array([0.5, 0.6]),
        method="backwards",
    )
    with caplog.at_level(logging.WARNING, logger="visionad_multicore.visionad.metrics"):
        results, info = METRICS["Imagewise_AUC"](*sets)
    assert results == {"backwards": 1.0}
    assert info["backwards"]["flipped"] and info["backwards"]["auroc_unflipped"] == 0.0
    assert any("Imagewise_AUC" in r.message and "backwards" in r.message for r in caplog.records)


# ----------------------------------------------------------------------------------------------------------
# AUPRO
# ----------------------------------------------------------------------------------------------------------


def pro_case_10x5() -> tuple[np.ndarray, np.ndarray]:
    """A 10x5 image: region of 10 pixels (rows 0-1) and region of 5 pixels (row 9); 35 regular pixels.

    With num_thresholds=4 the thresholds are arange(0, 1, 0.25)[1:] = [0.25, 0.5, 0.75].
    Region 1 is all 1.0: overlap 1, 1, 1. Region 2 = [1, .6, .6, .3, .3]: overlap 5/5, 3/5, 1/5.
    PRO = mean over the two regions = 1, 0.8, 0.6. Regular pixels: 3 at exactly 0.5, 7 at 0.3, 25 at 0:
    false positives (>=) 10, 3, 0 -> fpr 10/35 = 0.286, 3/35, 0, all below 0.3. Normalised fpr 1, 0.3, 0.
    AUPRO = 0.7 * (1 + 0.8) / 2 + 0.3 * (0.8 + 0.6) / 2 = 0.63 + 0.21 = 0.84; the reversed curve has
    1 - fpr >= 0.71 everywhere, so it counts 0.
    """
    mask = np.zeros((10, 5), dtype=bool)
    mask[:2] = True
    mask[9] = True
    amap = np.zeros((10, 5), dtype=np.float32)
    amap[:2] = 1.0
    amap[9] = [1.0, 0.6, 0.6, 0.3, 0.3]
    amap[2, :3] = 0.5  # exactly on a threshold: counts as predicted (>=)
    amap[3, :5] = 0.3
    amap[4, :2] = 0.3
    return amap[None], mask[None]


def test_aupro_hand_worked_10x5():
    maps, masks = pro_case_10x5()
    thresholds, pro, fpr = pro_curve(maps, masks, num_thresholds=4)
    np.testing.assert_allclose(thresholds, [0.25, 0.5, 0.75])
    np.testing.assert_allclose(pro, [1.0, 0.8, 0.6])
    np.testing.assert_allclose(fpr, [10 / 35, 3 / 35, 0.0])
    assert aupro(maps, masks, num_thresholds=4) == pytest.approx(0.84, abs=1e-12)
    # Tighter fpr limit: the first row (fpr 0.286) drops out; normalised fpr [1, 0], PRO [0.8, 0.6].
    assert aupro(maps, masks, num_thresholds=4, fpr_limit=0.2) == pytest.approx(0.7, abs=1e-12)


def test_aupro_regions_are_8_connected():
    # Three pixels in a row plus one touching diagonally: one region of 4 pixels under 8-connectivity.
    mask = np.zeros((1, 6, 6), dtype=bool)
    mask[0, 1, 1:4] = True
    mask[0, 2, 4] = True
    amap = np.zeros((1, 6, 6))
    amap[0, 2, 4] = 1.0
    _, pro, _ = pro_curve(amap, mask, num_thresholds=4)
    np.testing.assert_allclose(pro, [0.25, 0.25, 0.25])  # 4-connectivity would give mean(0/3, 1/1) = 0.5


def test_aupro_all_zero_fpr_counts_zero():
    # A binary map equal to the mask: fpr is 0 at every threshold, 0/0 on normalising -> VisionAD reports 0.
    rng = np.random.default_rng(3)
    masks = blob_masks(rng, 3, 20, 2)
    assert aupro(masks.astype(np.float32), masks) == 0.0


def test_aupro_reversed_curve_and_tensor_input():
    rng = np.random.default_rng(4)
    masks = blob_masks(rng, 4, 32, 3)
    maps = rng.normal(size=masks.shape).astype(np.float32) + 2 * masks
    forward, info = aupro_with_info(maps, masks)
    assert not info["reversed"] and 0.5 < forward <= 1.0
    backward, info = aupro_with_info(-maps, masks)
    assert info["reversed"]
    assert backward == pytest.approx(slow_aupro(-maps, masks), abs=1e-9)
    assert aupro(torch.from_numpy(maps)[:, None], torch.from_numpy(masks)[:, None].float()) == forward


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["random", "correlated", "inverted", "ties", "float64", "integer"])
def test_aupro_matches_slow_loop(seed, kind):
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, 5, 32, 4)
    maps = rng.random(masks.shape)
    if kind in ("correlated", "inverted", "ties"):
        maps = maps + 1.5 * masks
    if kind == "inverted":
        maps = -maps
    if kind == "ties":  # values land exactly on thresholds
        maps = np.round(maps * 40) / 40
    if kind == "integer":
        maps = rng.integers(0, 400, size=masks.shape) + 300 * masks
    elif kind != "float64":
        maps = maps.astype(np.float32)
    assert aupro(maps, masks) == pytest.approx(slow_aupro(maps, masks), abs=1e-9)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    maps=hnp.arrays(np.int64, (2, 8, 8), elements=st.integers(0, 10)),
    masks=hnp.arrays(bool, (2, 8, 8)),
    num_th=st.sampled_from([2, 5, 10, 20]),
)
def test_aupro_matches_slow_loop_property(maps, masks, num_th):
    # Small integer maps: many pixels exactly on a threshold, exercising the >= comparison.
    if maps.min() == maps.max() or not masks.any():
        with pytest.raises(ValueError):
            aupro(maps, masks, num_thresholds=num_th)
        return
    maps = maps.astype(np.float32)
    expected = slow_aupro(maps, masks, num_th=num_th)
    assert aupro(maps, masks, num_thresholds=num_th) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("legacy", [False, True])
def test_comparable_thresholds_reproduce_float64_comparisons(legacy):
    rng = np.random.default_rng(5)
    values = rng.normal(size=5000).astype(np.float32)
    # Thresholds at, just above and just below float32 values, and in between.
    thresholds = np.sort(
        np.r_[
            values[:50].astype(np.float64),
            np.nextafter(values[50:100].astype(np.float64), 9),
            np.nextafter(values[100:150].astype(np.float64), -9),
            rng.normal(size=50),
        ]
    )
    work, dtype = comparable_thresholds(thresholds, np.dtype(np.float32), legacy_promotion=legacy)
    assert dtype == np.float32 and np.all(np.diff(work) >= 0)
    reference = thresholds.astype(np.float32) if legacy else thresholds  # numpy 1.x rounds the scalar
    expected = values[:, None].astype(np.float64) >= reference[None, :].astype(np.float64)
    np.testing.assert_array_equal(values[:, None] >= work[None, :], expected)


# ----------------------------------------------------------------------------------------------------------
# PL
# ----------------------------------------------------------------------------------------------------------


def test_proportion_localised_hand_case():
    # Image 0: the heatmap is exactly its 40x40 square defect; image 1: the heatmap lights up a far corner.
    # Most percentile thresholds are 0, where image 0's defect is found (IoU ~1) and image 1's is not
    # (IoU 0); the negated heatmap finds neither. PL = 1 of 2 anomalies = 0.5.
    masks = np.zeros((2, 256, 256), dtype=np.float32)
    masks[0, 100:140, 100:140] = 1
    masks[1, 20:60, 20:60] = 1
    maps = np.zeros_like(masks)
    maps[0] = masks[0]
    maps[1, 200:240, 200:240] = 1
    assert proportion_localised(maps, masks) == pytest.approx(0.5)
    assert proportion_localised(torch.from_numpy(masks)[:, None], masks[:, None]) == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------------


def test_argument_errors():
    maps = np.random.default_rng(6).random((2, 8, 8)).astype(np.float32)
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[:, 2:4, 2:4] = True
    nan_maps = maps.copy()
    nan_maps[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pixel_auroc(nan_maps, masks)
    with pytest.raises(ValueError, match="NaN"):
        aupro(nan_maps, masks)
    with pytest.raises(ValueError, match="infinite"):
        image_auroc(np.array([0.0, np.inf]), np.array([1.0]))
    with pytest.raises(ValueError, match="binary"):
        aupro(maps, masks * 0.5)
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc(maps, masks[:1])
    with pytest.raises(ValueError, match="shape"):
        image_auroc(np.zeros((3, 2)), np.ones(3))
    with pytest.raises(ValueError, match="one class"):
        pixel_auroc(maps, np.zeros_like(masks))
    with pytest.raises(ValueError, match="non-empty"):
        image_auroc(np.array([]), np.array([1.0]))
    with pytest.raises(TypeError, match="real"):
        image_auroc(np.array([True, False]), np.array([1.0]))
    with pytest.raises(ValueError, match="all values equal"):
        aupro(np.ones_like(maps), masks)
    with pytest.raises(ValueError, match="no anomalous region"):
        aupro(maps, np.zeros_like(masks))
    with pytest.raises(ValueError, match="num_thresholds"):
        aupro(maps, masks, num_thresholds=1)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(maps, masks, fpr_limit=0.0)
    with pytest.raises(ValueError, match="256x256"):
        proportion_localised(maps, masks)
    big_masks = np.zeros((1, 256, 256), dtype=bool)
    with pytest.raises(ValueError, match=r"images \[0\] have no anomalous pixel"):
        proportion_localised(np.random.default_rng(0).random((1, 256, 256)), big_masks)


# ----------------------------------------------------------------------------------------------------------
# run_metrics
# ----------------------------------------------------------------------------------------------------------


def test_run_metrics_all_and_skipping(caplog):
    rng = np.random.default_rng(7)
    masks = blob_masks(rng, 3, 32, 2)
    novel = rng.random(masks.shape).astype(np.float32) + masks
    regular = rng.random((2, 32, 32)).astype(np.float32)
    heatmap_set, image_score_set, targets_set, paths_set = visionad_sets(
        novel, regular, masks, novel.reshape(3, -1).max(1), regular.reshape(2, -1).max(1), method="good"
    )
    bad = novel.copy()
    bad[0, 0, 0] = np.nan
    heatmap_set["heatmap_set_novel"]["bad"] = torch.from_numpy(bad)[:, None]
    heatmap_set["heatmap_set_regular"]["bad"] = torch.from_numpy(regular)[:, None]
    with caplog.at_level(logging.WARNING, logger="visionad_multicore.visionad.metrics"):
        out = run_metrics(["all"], heatmap_set, image_score_set, targets_set, paths_set, progress=False)
    assert list(out) == list(METRICS)
    for name in ("Pixelwise_AUC", "Pixelwise_AUC_anom_only", "Pixelwise_AUPRO"):
        # "bad" (one NaN pixel in one map): not scored, a failure in the results, not a crash or a silent drop
        assert out[name]["metric_results"]["bad"] == "failed: non-finite values in 1 maps"
    assert metric_failures(out) == [
        f"{name}/bad: failed: non-finite values in 1 maps"
        for name in ("Pixelwise_AUC", "Pixelwise_AUC_anom_only", "Pixelwise_AUPRO", "PL")
    ]
    # independent references: scikit-learn over every pixel (regular maps all label 0) and the slow loop
    labels = np.r_[masks.ravel(), np.zeros(regular.size, dtype=bool)]
    expected_pauc = roc_auc_score(labels, np.r_[novel.ravel(), regular.ravel()])
    assert out["Pixelwise_AUC"]["metric_results"]["good"] == pytest.approx(expected_pauc, abs=1e-12)
    expected_anom = roc_auc_score(masks.ravel(), novel.ravel())
    assert out["Pixelwise_AUC_anom_only"]["metric_results"]["good"] == pytest.approx(expected_anom, abs=1e-12)
    assert out["Pixelwise_AUPRO"]["metric_results"]["good"] == pytest.approx(
        slow_aupro(novel, masks), abs=1e-9
    )
    assert out["Imagewise_AUC"]["metric_results"] == {"good": 1.0}
    # 32x32 images: PL needs 256x256, skipped (VisionAD's way) for every method that could be tried
    assert out["PL"]["metric_results"] == {"bad": "failed: non-finite values in 1 maps"}
    messages = [r.message for r in caplog.records]
    assert any("'bad'" in m and "non-finite values (NaN or inf) in 1 heatmaps" in m for m in messages)
    assert any("PL" in m and "'good'" in m and "256" in m for m in messages)


def test_run_metrics_names():
    assert resolve_metric_names(["all"]) == list(METRICS)
    assert resolve_metric_names("PL") == ["PL"]
    assert resolve_metric_names(["PL", "Imagewise_AUC", "PL"]) == ["PL", "Imagewise_AUC"]
    with pytest.raises(ValueError, match="Imagewise_AUC"):
        run_metrics(["Imagewise_AUROC"], {}, {}, {}, {})
    out = run_metrics(
        ["Imagewise_AUC"],
        {},
        {
            "image_score_set_regular": {"m": torch.tensor([0.0, 1.0])},
            "image_score_set_novel": {"m": torch.tensor([2.0])},
        },
        {},
        {},
        include_metric_data=True,
        progress=False,
    )
    assert out == {
        "Imagewise_AUC": {
            "metric_results": {"m": 1.0},
            "metric_data": {"m": {"auroc_unflipped": 1.0, "flipped": False}},
        }
    }


def test_visionad_wrappers_truncate_fractional_targets_like_visionad() -> None:
    """VisionAD casts targets with ``.int()``: a bilinear-resized border value of 0.5 counts as normal."""
    from visionad_multicore.visionad.metrics import pixelwise_auc_anom_only

    rng = np.random.default_rng(3)
    maps = rng.random((2, 1, 16, 16)).astype(np.float32)
    targets = np.zeros((2, 1, 16, 16), dtype=np.float32)
    targets[:, :, 4:8, 4:8] = 1.0
    fractional = targets.copy()
    fractional[:, :, 8, 4:8] = 0.5  # would be rejected by the strict pure function
    heatmaps = {"heatmap_set_novel": {"m": maps}, "heatmap_set_regular": {"m": maps}}
    exact, _ = pixelwise_auc_anom_only(heatmaps, {}, {"targets_novel": targets}, None)
    truncated, _ = pixelwise_auc_anom_only(heatmaps, {}, {"targets_novel": fractional}, None)
    expected = roc_auc_score(targets.ravel().astype(int), maps.ravel())  # the 0.5 row counts as normal
    assert exact["m"] == pytest.approx(max(expected, 1 - expected), abs=1e-12)
    assert truncated["m"] == exact["m"]


def test_pl_leaves_out_images_with_empty_masks(caplog: pytest.LogCaptureFixture) -> None:
    from visionad_multicore.visionad.metrics import pl_metric

    rng = np.random.default_rng(4)
    maps = rng.random((3, 1, 256, 256)).astype(np.float32)
    targets = np.zeros((3, 1, 256, 256), dtype=np.float32)
    targets[0, 0, 10:60, 10:60] = 1
    targets[2, 0, 100:140, 30:90] = 1
    maps[0, 0, 10:60, 10:60] += 2.0
    maps[2, 0, 100:140, 30:90] += 2.0
    with caplog.at_level("WARNING"):
        results, info = pl_metric({"heatmap_set_novel": {"m": maps}}, {}, {"targets_novel": targets}, None)
    assert "1 of 3 anomalous test images have an empty mask" in caplog.text
    import proportion_localised as pl_package

    # the package VisionAD calls, on the two images with a defect, with VisionAD's arguments
    expected, _ = pl_package.calculate(
        maps[[0, 2], 0], targets[[0, 2], 0], 0.3, min_target_scale=1 / 8, n_thresholds=25, overlap_limit=1 / 3
    )
    assert results["m"] == expected == 1.0  # both defects stand out from the noise: localised
    assert info["m"]["n_images_scored"] == 2
