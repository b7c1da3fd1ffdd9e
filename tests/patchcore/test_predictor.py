"""PatchCorePlus estimator: smoothing, fit/predict on the tiny fixture, errors, save/load, re-weighting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from visionad_multicore.patchcore import predictor as predictor_module
from visionad_multicore.patchcore.backbone import IMAGENET_MEAN, IMAGENET_STD
from visionad_multicore.patchcore.predictor import PatchCorePlus, Prediction, gaussian_smooth

SIZE = 64


def _load(folder: Path) -> torch.Tensor:
    """(N, 3, 64, 64) ImageNet-normalised images of a folder, sorted by name."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    imgs = [
        torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1).float() / 255
        for p in sorted(folder.glob("*.png"))
    ]
    return (torch.stack(imgs) - mean) / std


@pytest.fixture(scope="module")
def fitted(tiny_mvtec: Path) -> tuple[PatchCorePlus, torch.Tensor, torch.Tensor]:
    train = _load(tiny_mvtec / "train/good")
    test = torch.cat([_load(tiny_mvtec / "test/good"), _load(tiny_mvtec / "test/defect")])
    model = PatchCorePlus(coreset_size=200, progress=False).fit(train.split(4))
    return model, test, train


@pytest.mark.parametrize("path", ["matrix", "convolution"])
@pytest.mark.parametrize("shape", [(2, 40, 40), (1, 64, 48), (1, 10, 12)])
def test_smoothing_matches_scipy(
    shape: tuple[int, int, int], path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path == "convolution":
        monkeypatch.setattr(predictor_module, "MATRIX_SMOOTH_MAX", 0)
    maps = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    ours = gaussian_smooth(maps, 4.0)
    ref = np.stack([ndimage.gaussian_filter(m, sigma=4) for m in maps.numpy()])
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-5)


def test_fit_predict_shapes_and_detection(fitted: tuple[PatchCorePlus, torch.Tensor, torch.Tensor]) -> None:
    model, test, _ = fitted
    assert model.memory_bank_.shape == (200, 152)
    assert model.n_patches_seen_ == 8 * 8 * 8  # 64 px -> 8 x 8 patch grid at stride 1
    pred = model.predict(test.split(3))
    assert isinstance(pred, Prediction)
    assert pred.heatmaps.shape == (8, SIZE, SIZE)
    assert pred.heatmaps.dtype == torch.float32
    assert pred.scores.shape == (8,) and pred.scores_reweighted.shape == (8,)
    assert torch.allclose(pred.scores, pred.heatmaps.flatten(1).amax(1))
    # the bright square defects score above every good image
    assert pred.scores[4:].min() > pred.scores[:4].max()


def _pairwise(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
    """(n, m) true distances, float64, by their definitions."""
    if distance == "euclidean":
        return torch.cdist(a, b)
    if distance == "cosine":
        return 1 - (a / a.norm(dim=1, keepdim=True)) @ (b / b.norm(dim=1, keepdim=True)).T
    raise ValueError(distance)


def naive_reweighted_scores(
    model: PatchCorePlus, images: torch.Tensor, b: int = 9
) -> tuple[torch.Tensor, torch.Tensor]:
    """PatchCore eq. 7 (Roth et al. 2022) written plainly in float64 with brute-force distances.

    s* = max over test patches of the distance to the nearest bank patch m*; N_b(m*) = the b bank patches
    nearest m* (m* included); s = (1 - exp(d(m_test*, m*)) / sum_{m in N_b(m*)} exp(d(m_test*, m))) s*.

    Returns:
        (scores s (B,), weights (B,)).
    """
    feats, (h, w) = model.embed(model.extractor(images))  # (B*h*w, F)
    feats = feats.double().reshape(images.shape[0], h * w, -1)
    bank = model.memory_bank_.double()
    out, weights = [], []
    for patches in feats:
        to_bank = _pairwise(patches, bank, model.distance)  # (P, M)
        nearest, which = to_bank.min(dim=1)
        star = int(nearest.argmax())
        m_star = int(which[star])
        neighbourhood = _pairwise(bank[m_star][None], bank, model.distance)[0].argsort()[:b]
        assert m_star in neighbourhood.tolist()
        weight = 1 - torch.exp(to_bank[star, m_star]) / torch.exp(to_bank[star, neighbourhood]).sum()
        out.append(weight * nearest[star])
        weights.append(weight)
    return torch.stack(out), torch.stack(weights)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_reweighted_scores_follow_patchcore_eq7(
    fitted: tuple[PatchCorePlus, torch.Tensor, torch.Tensor], distance: str
) -> None:
    # Euclidean distances between these features are far apart, so the weight is ~1; cosine distances lie
    # in [0, 2], where the weights (~0.9) show whether the neighbourhood and the softmax are right.
    model, test, train = fitted
    if distance != model.distance:
        model = PatchCorePlus(distance=distance, coreset_size=200, progress=False).fit(train.split(4))
    pred = model.predict(test.split(3))
    expected, weights = naive_reweighted_scores(model, test)
    torch.testing.assert_close(pred.scores_reweighted.double(), expected, rtol=1e-4, atol=1e-6)
    if distance == "cosine":
        assert weights.max() < 0.99  # the weight really acts here


def test_small_bank_kept_whole(fitted: tuple[PatchCorePlus, torch.Tensor, torch.Tensor]) -> None:
    _, _, train = fitted
    model = PatchCorePlus(coreset_size=10_000, progress=False).fit([train])
    assert model.memory_bank_.shape[0] == 512
    assert len(set(model.coreset_indices_.tolist())) == 512


def test_training_image_scores_near_zero(fitted: tuple[PatchCorePlus, torch.Tensor, torch.Tensor]) -> None:
    _, _, train = fitted
    model = PatchCorePlus(coreset_size=10_000, sigma=0, progress=False).fit([train])
    assert model.predict([train[:2]]).scores.max() < 1e-3  # every patch is in the bank


def test_not_fitted_error() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        PatchCorePlus().predict([torch.zeros(1, 3, 32, 32)])


def test_parameter_validation() -> None:
    with pytest.raises(ValueError, match="known distances: euclidean, cosine, minkowski3, manhattan"):
        PatchCorePlus(distance="l2")
    with pytest.raises(ValueError, match="stride"):
        PatchCorePlus(stride=0)
    with pytest.raises(ValueError, match="known backends: auto, faiss, torch"):
        PatchCorePlus(knn_backend="annoy")


def test_save_load_bit_identical(
    fitted: tuple[PatchCorePlus, torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    model, test, _ = fitted
    before = model.predict([test])
    model.save(tmp_path / "pc.pt")
    loaded = PatchCorePlus.load(tmp_path / "pc.pt")
    after = loaded.predict([test])
    assert torch.equal(before.heatmaps, after.heatmaps)
    assert torch.equal(before.scores, after.scores)
    assert torch.equal(before.scores_reweighted, after.scores_reweighted)
    with pytest.raises(ValueError, match="different parameters"):
        PatchCorePlus(patch_size=5).load_state_dict(model.state_dict())


def test_shared_backbone_api(fitted: tuple[PatchCorePlus, torch.Tensor, torch.Tensor]) -> None:
    model, test, train = fitted
    other = PatchCorePlus(patch_size=1, stride=3, distance="minkowski3", coreset_size=20, progress=False)
    maps = model.extractor(train)
    other.fit_features([maps])
    assert other.memory_bank_.shape == (20, 152)
    pred = other.predict_features(model.extractor(test), (SIZE, SIZE))
    assert pred.heatmaps.shape == (8, SIZE, SIZE)
    torch.testing.assert_close(pred.scores, other.predict([test]).scores)


def test_wideresnet50_keeps_the_papers_patch_pipeline() -> None:
    """With the paper's backbone the default aggregation is the literal SPEC pipeline (pinned)."""
    from visionad_multicore.patchcore.patches import patch_features_reference

    model = PatchCorePlus(
        backbone="wideresnet50", patch_size=3, stride=1, progress=False
    )  # no weights needed
    assert model.aggregation == "paper"
    gen = torch.Generator().manual_seed(0)
    maps = [torch.randn(1, 512, 8, 8, generator=gen), torch.randn(1, 1024, 4, 4, generator=gen)]
    feats, grid = model.embed(maps)
    ref, ref_grid = patch_features_reference(maps, 3, 1, 1024)
    assert grid == ref_grid and feats.shape == (64, 1024)
    torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-5)


def test_small_backbone_defaults_to_local_mean_equal(
    fitted: tuple[PatchCorePlus, torch.Tensor, torch.Tensor],
) -> None:
    model = fitted[0]
    assert model.feature_aggregation == "auto" and model.aggregation == "local_mean_equal"
    assert model.memory_bank_.shape[1] == 40 + 112  # Lite0's channels, nothing repeated
