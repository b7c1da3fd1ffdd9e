"""The ``patchcore_plus`` VisionAD algorithm through the ModelWrapper hooks; save / load on a fresh instance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from visionad_multicore.algorithms.patchcore_plus import METHOD, WrapperPatchCorePlus
from visionad_multicore.visionad.loaders import create_dataloaders
from visionad_multicore.visionad.metrics import image_auroc

METHOD_MAX = f"{METHOD}_max"


def tiny_loaders(
    root: Path, mean: list[float] | None = None, std: list[float] | None = None
) -> tuple[Any, Any, Any]:
    return create_dataloaders(
        None,
        None,
        None,
        batch_size=3,
        test_batch_size=3,
        folder_path_regular_train=str(root / "train/good"),
        folder_path_regular_test=str(root / "test/good"),
        folder_path_novel_test=[str(root / "test/defect")],
        folder_path_novel_masks=[str(root / "ground_truth/defect")],
        mean=mean or [0.485, 0.456, 0.406],
        std=std or [0.229, 0.224, 0.225],
    )


@pytest.fixture(scope="module")
def trained(tiny_mvtec: Path) -> tuple[WrapperPatchCorePlus, tuple[Any, Any, Any]]:
    loaders = tiny_loaders(tiny_mvtec)
    algo = WrapperPatchCorePlus(coreset_size=100, progress=False)
    algo.enter_dataloaders(*loaders)
    algo.train_one_epoch()
    algo.pre_eval_processing()
    return algo, loaders


def test_hooks_and_outputs(trained: tuple[WrapperPatchCorePlus, tuple[Any, Any, Any]]) -> None:
    algo, _ = trained
    assert algo.predictor.memory_bank_.shape == (100, 152)
    heatmap_set, score_set, targets_set, paths_set = algo.test()
    for split, n in (("regular", 4), ("novel", 4)):
        heatmaps = heatmap_set[f"heatmap_set_{split}"]
        scores = score_set[f"image_score_set_{split}"]
        assert set(heatmaps) == set(scores) == {METHOD, METHOD_MAX}
        assert heatmaps[METHOD].shape == (n, 1, 256, 256)
        assert scores[METHOD].shape == (n,)
        # the default score is PatchCore's re-weighted one; the heatmap maximum comes as patchcore_plus_max
        torch.testing.assert_close(scores[METHOD_MAX], heatmaps[METHOD].flatten(1).amax(1))
        assert not torch.equal(scores[METHOD], scores[METHOD_MAX])
    reg, nov = score_set["image_score_set_regular"], score_set["image_score_set_novel"]
    assert image_auroc(reg[METHOD].numpy(), nov[METHOD].numpy()) == 1.0


def test_hook_attached_is_refused(tiny_mvtec: Path) -> None:
    loaders = tiny_loaders(tiny_mvtec)
    algo = WrapperPatchCorePlus(coreset_size=10, progress=False)
    algo.enter_dataloaders(*loaders)
    loaders[0].dataset.pre_normalisation_transform = lambda pil: (pil, 0)
    with pytest.raises(RuntimeError, match="pre_normalisation_transform"):
        algo.pre_eval_processing()


def test_mean_std_from_the_loaders_normalisation(tiny_mvtec: Path) -> None:
    loaders = tiny_loaders(tiny_mvtec, mean=[0.5, 0.4, 0.3], std=[0.25, 0.2, 0.1])
    algo = WrapperPatchCorePlus(coreset_size=10, progress=False)
    algo.enter_dataloaders(*loaders)
    algo.pre_eval_processing()
    assert algo.predictor.input_mean == (0.5, 0.4, 0.3)
    assert algo.predictor.input_std == (0.25, 0.2, 0.1)


def test_save_load_fresh_instance_bit_identical(
    trained: tuple[WrapperPatchCorePlus, tuple[Any, Any, Any]], tmp_path: Path
) -> None:
    algo, loaders = trained
    images = torch.cat([batch[0] for batch in loaders[2]])
    before = algo.eval_outputs_dataloader(((images, None) for _ in range(1)), 1)
    algo.save_model(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "model_params.json").read_text())["coreset_size"] == 100
    fresh = WrapperPatchCorePlus()  # default params, no loaders: everything comes from the files
    fresh.load_model(tmp_path / "model")
    after = fresh.eval_outputs_dataloader(((images, None) for _ in range(1)), 1)
    for method in (METHOD, METHOD_MAX):
        assert torch.equal(before[0][method], after[0][method])
        assert torch.equal(before[1][method], after[1][method])


def test_unfitted_eval_raises() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        WrapperPatchCorePlus().eval_outputs_dataloader(iter([]), 0)


def test_unknown_distance_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="known distances"):
        WrapperPatchCorePlus(distance="hamming")
