"""MultiCore core: presets, preparation (split, banks, statistics, cache), HFM epochs, prediction, state."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from visionad_multicore.ensemble import MultiCore, PredictorSpec, Preset, load_preset
from visionad_multicore.fusion.train import HFMTrainConfig
from visionad_multicore.patchcore.predictor import PatchCorePlus
from visionad_multicore.synthetic.dataset import split_bank_fusion
from visionad_multicore.synthetic.masks import SSAConfig

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SPEC_TABLE = [
    ("euclidean", 3, 1),
    ("minkowski3", 1, 1),
    ("euclidean", 7, 3),
    ("euclidean", 3, 3),
    ("euclidean", 7, 1),
    ("euclidean", 1, 3),
    ("euclidean", 1, 1),
    ("euclidean", 3, 5),
]
TINY_SSA = SSAConfig(
    size=64, buckets=(1, 2, 4, 8), masks_per_bucket=4, multi_counts=(2,), masks_per_multi=2, n_empty=4
)
TINY_HFM = HFMTrainConfig(
    synthetic_size=12, validation_fraction=0.25, batch_size=4, unet_depth=2, unet_width=4, lr=1e-3
)


def load_folder(folder: Path) -> torch.Tensor:
    """Normalised images ``(N, 3, H, W)`` of a folder, sorted by name."""
    images = [
        torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1).float() / 255
        for p in sorted(folder.glob("*.png"))
    ]
    x = torch.stack(images)
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def tiny_multicore(**overrides: object) -> MultiCore:
    params: dict[str, object] = {"coreset_size": 64, "ssa": TINY_SSA, "hfm": TINY_HFM, "progress": False}
    params.update(overrides)
    return MultiCore("mc2", **params)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def prepared(tiny_mvtec: Path) -> tuple[MultiCore, torch.Tensor, torch.Tensor]:
    train = load_folder(tiny_mvtec / "train/good")
    model = tiny_multicore().prepare(train, MEAN, STD)
    return model, train, load_folder(tiny_mvtec / "test/defect")


# ------------------------------------------------------------------------------------------- presets
@pytest.mark.parametrize(("name", "n"), [("mc2", 2), ("mc4", 4), ("mc8", 8)])
def test_builtin_presets_follow_the_spec_table(name: str, n: int) -> None:
    preset = load_preset(name)
    assert preset.name == name
    assert [(p.distance, p.patch_size, p.stride) for p in preset.predictors] == SPEC_TABLE[:n]
    assert preset.member_keys[:2] == ["p1_euclidean_p3_s1", "p2_minkowski3_p1_s1"][:n]


def test_preset_yaml_round_trip_and_errors(tmp_path: Path) -> None:
    preset = Preset("mine", (PredictorSpec("cosine", 5, 3), PredictorSpec("manhattan", 1, 1)))
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(preset.to_dict()))
    assert load_preset(path) == preset
    assert load_preset(str(path)).member_keys == ["p1_cosine_p5_s3", "p2_manhattan_p1_s1"]
    with pytest.raises(ValueError, match="unknown preset 'mc3'.*mc2"):
        load_preset("mc3")
    path.write_text("name: x\npredictors:\n  - {distance: euclidean, patch_size: 3, stride: 1, k: 2}\n")
    with pytest.raises(ValueError, match=r"mine.yaml: predictor 1 must have exactly the keys"):
        load_preset(path)
    path.write_text("name: x\npredictors:\n  - {distance: chebyshev, patch_size: 3, stride: 1}\n")
    with pytest.raises(ValueError, match="chebyshev"):
        load_preset(path)


# ------------------------------------------------------------------------------------------- preparation
def test_bank_and_fusion_shares_are_disjoint(prepared: tuple[MultiCore, torch.Tensor, torch.Tensor]) -> None:
    model, train, _ = prepared
    assert model.bank_idx_ is not None and model.fusion_idx_ is not None
    assert not set(model.bank_idx_.tolist()) & set(model.fusion_idx_.tolist())
    assert sorted(model.bank_idx_.tolist() + model.fusion_idx_.tolist()) == list(range(len(train)))
    expected = split_bank_fusion(len(train), 0.8, 0)
    assert np.array_equal(model.bank_idx_, expected[0]) and np.array_equal(model.fusion_idx_, expected[1])


def test_banks_come_from_clean_bank_images_only(
    prepared: tuple[MultiCore, torch.Tensor, torch.Tensor],
) -> None:
    """Rebuild member 1's bank from the clean bank-share images alone: it must be identical."""
    model, train, _ = prepared
    reference = PatchCorePlus(
        patch_size=3, stride=1, distance="euclidean", coreset_size=64, seed=0, progress=False
    )
    reference.fit_features([model._features(train[model.bank_idx_])])
    member = model.members[0]
    assert member.n_patches_seen_ == reference.n_patches_seen_
    torch.testing.assert_close(member.memory_bank_, reference.memory_bank_)


def test_statistics_come_from_clean_fusion_images(
    prepared: tuple[MultiCore, torch.Tensor, torch.Tensor],
) -> None:
    model, train, _ = prepared
    maps, _ = model.member_maps(train[model.fusion_idx_])  # (F, M, H, W)
    torch.testing.assert_close(model.stats_mean_, maps.double().mean(dim=(0, 2, 3)).float())
    torch.testing.assert_close(model.stats_std_, maps.double().std(dim=(0, 2, 3)).float())


def test_synthetic_sets(prepared: tuple[MultiCore, torch.Tensor, torch.Tensor]) -> None:
    """Training maps at the work size, a separate validation set at full size, clean maps as negatives."""
    model, train, _ = prepared
    data = model._data
    assert data is not None
    assert data.train_maps.shape == (9, 2, 64, 64) and data.train_maps.dtype == torch.float16
    assert data.train_targets.shape == (9, 1, 64, 64)
    targets = data.train_targets
    assert ((targets == 0) | (targets == 1)).all()  # no work_size: binary targets at full size
    assert targets.any() and not targets.all()
    v = data.validation
    assert v.maps.shape == (3, 2, 64, 64) and v.masks.dtype == torch.bool
    assert v.nominal.shape == (len(model.fusion_idx_), 2, 64, 64)
    # the clean maps are the fusion-share images' normalised maps
    raw, _ = model.member_maps(train[model.fusion_idx_])
    # (h - mean) / std with the statistics of these same clean maps, written out (float16 cache: loose tolerance)
    expected = (raw - raw.mean(dim=(0, 2, 3))[None, :, None, None]) / raw.std(dim=(0, 2, 3))[
        None, :, None, None
    ]
    torch.testing.assert_close(v.nominal.float(), expected, atol=1e-2, rtol=1e-3)
    # the validation set has its own masks and seed: none of its items repeats a training item
    for i in range(len(v.maps)):
        assert not any(torch.equal(v.maps[i], t) for t in data.train_maps)


def test_untrained_fusion_is_the_ensemble_mean(
    prepared: tuple[MultiCore, torch.Tensor, torch.Tensor],
) -> None:
    model, _, test_images = prepared
    assert model.hfm_epochs_ == 0  # no test trains the shared fixture (they train copies)
    out = model.predict(test_images)
    torch.testing.assert_close(out.fused, out.mean)


# ------------------------------------------------------------------------------------------- training, prediction
def test_train_predict_save_load(prepared: tuple[MultiCore, torch.Tensor, torch.Tensor]) -> None:
    shared, _, test_images = prepared
    model = copy.deepcopy(shared)  # train a copy: the module fixture stays untrained for the other tests
    record = model.train_epoch()
    assert record.epoch == 0 and np.isfinite(record.train_loss) and np.isfinite(record.validation.loss)
    assert model.hfm_epochs_ == 1

    out = model.predict(test_images)
    heatmaps, scores = out.methods()
    assert list(heatmaps) == [
        "multicore",
        "multicore_hfm",
        "ensemble_mean",
        "p1_euclidean_p3_s1",
        "p2_minkowski3_p1_s1",
    ]
    assert list(scores) == list(heatmaps)
    for method in heatmaps:
        assert heatmaps[method].shape == (4, 64, 64) and heatmaps[method].dtype == torch.float32
        assert scores[method].shape == (4,)
    raw = torch.stack([heatmaps["p1_euclidean_p3_s1"], heatmaps["p2_minkowski3_p1_s1"]], dim=1)
    normalised = (raw - model.stats_mean_[None, :, None, None]) / model.stats_std_[None, :, None, None]
    torch.testing.assert_close(heatmaps["ensemble_mean"], normalised.mean(dim=1))
    for method in ("multicore", "multicore_hfm", "ensemble_mean"):
        top = heatmaps[method].flatten(1).topk(round(0.001 * 64 * 64), dim=1).values.mean(dim=1)  # top 0.1 %
        torch.testing.assert_close(scores[method], top)
    assert model.hfm_ is not None and not model.hfm_.training
    assert model.hfm_best_epoch_ == 0
    # multicore is the mean unless the epoch beat it on validation; either way the record says which
    if model.fusion_ is None:
        assert record.selected == -1 and torch.equal(heatmaps["multicore"], heatmaps["ensemble_mean"])
    else:
        assert record.selected == 0 and torch.equal(heatmaps["multicore"], heatmaps["multicore_hfm"])

    # a fresh instance from the state predicts bit for bit the same
    state = model.state_dict()
    fresh = MultiCore.from_state_dict(state, progress=False)
    again = fresh.predict(test_images).methods()
    for method in heatmaps:
        assert torch.equal(heatmaps[method], again[0][method]), method
        assert torch.equal(scores[method], again[1][method]), method
    with pytest.raises(RuntimeError, match="call prepare"):
        fresh.train_epoch()


def test_load_state_rejects_other_params(prepared: tuple[MultiCore, torch.Tensor, torch.Tensor]) -> None:
    model, _, _ = prepared
    with pytest.raises(ValueError, match="coreset_size"):
        tiny_multicore(coreset_size=32).load_state_dict(model.state_dict())


def test_predict_before_fit_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="not fitted|prepare"):
        tiny_multicore().predict(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="bank_share"):
        tiny_multicore(bank_share=1.0)


def test_fuse_equals_predict_and_subset(prepared: tuple[MultiCore, torch.Tensor, torch.Tensor]) -> None:
    model, _, test_images = prepared
    raw, scores = model.member_maps(test_images)
    direct, via_fuse = model.predict(test_images).methods(), model.fuse(raw, scores).methods()
    for method in direct[0]:
        assert torch.equal(direct[0][method], via_fuse[0][method]), method
    sub = model.subset(1, "first")
    assert sub.member_keys == ["p1_euclidean_p3_s1"] and sub.members[0] is model.members[0]
    assert sub.stats_mean_ is not None and torch.equal(sub.stats_mean_, model.stats_mean_[:1])
    record = sub.train_epoch()
    assert record.epoch == 0 and sub.hfm_epochs_ == 1
    out = sub.predict(test_images)
    assert set(out.methods()[0]) == {"multicore", "multicore_hfm", "ensemble_mean", "p1_euclidean_p3_s1"}
    first = raw[:, 0]  # one member: the "mean" is its own map standardised with its clean-image statistics
    torch.testing.assert_close(out.mean, (first - model.stats_mean_[0]) / model.stats_std_[0])
    with pytest.raises(ValueError, match="n_members"):
        model.subset(3)


@pytest.mark.slow
def test_subset_of_mc4_matches_mc2(prepared: tuple[MultiCore, torch.Tensor, torch.Tensor]) -> None:
    """Members are seeded by position: MC4's first two members, statistics and cache are MC2's."""
    mc2, train, _ = prepared
    mc4 = MultiCore("mc4", coreset_size=64, ssa=TINY_SSA, hfm=TINY_HFM, progress=False).prepare(
        train, MEAN, STD
    )
    sub = mc4.subset(2, "mc2")
    for a, b in zip(sub.members, mc2.members):
        assert torch.equal(a.memory_bank_, b.memory_bank_)
    assert torch.equal(sub.stats_mean_, mc2.stats_mean_) and torch.equal(sub.stats_std_, mc2.stats_std_)
    assert sub._data is not None and mc2._data is not None
    assert torch.equal(sub._data.train_maps, mc2._data.train_maps)
    assert torch.equal(sub._data.validation.maps, mc2._data.validation.maps)


def test_every_member_bank_equals_its_own_fit(prepared: tuple[MultiCore, torch.Tensor, torch.Tensor]) -> None:
    """One shared, streamed backbone pass gives each member the bank it would build alone."""
    model, train, _ = prepared
    for member in model.members:
        alone = PatchCorePlus(**{**member.get_params(), "progress": False})
        alone.fit_features([model._features(b) for b in train[model.bank_idx_].split(3)])
        assert torch.equal(member.coreset_indices_, alone.coreset_indices_)
        assert torch.equal(member.memory_bank_, alone.memory_bank_)


def test_knn_backend_is_exposed_and_not_part_of_the_state(
    prepared: tuple[MultiCore, torch.Tensor, torch.Tensor],
) -> None:
    model, _, test = prepared
    with pytest.raises(ValueError, match="known backends"):
        tiny_multicore(knn_backend="annoy")
    other = MultiCore.from_state_dict({**model.state_dict()}, progress=False)
    torch_search = tiny_multicore(knn_backend="torch").load_state_dict(model.state_dict())
    assert [m.knn_backend for m in torch_search.members] == ["torch", "torch"]
    assert torch_search.get_params()["knn_backend"] == "torch"
    torch.testing.assert_close(torch_search.predict(test[:2]).mean, other.predict(test[:2]).mean)
