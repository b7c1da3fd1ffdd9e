"""The ``multicore`` VisionAD algorithm: hooks, method keys, hook guard, save / load in a fresh instance."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from visionad_multicore.algorithms.multicore import WrapperMultiCore
from visionad_multicore.visionad.loaders import create_dataloaders

TINY_PARAMS: dict[str, Any] = {
    "preset": "mc2",
    "coreset_size": 64,
    "synthetic_size": 12,
    "ssa": {
        "size": 64,
        "buckets": [1, 2, 4, 8],
        "masks_per_bucket": 4,
        "multi_counts": [2],
        "masks_per_multi": 2,
        "n_empty": 4,
    },
    "lr": 1e-3,
    "hfm_batch_size": 4,
    "unet_depth": 2,
    "unet_width": 4,
    "validation_fraction": 0.25,
    "progress": False,
}
METHODS = ["multicore", "multicore_hfm", "ensemble_mean", "p1_euclidean_p3_s1", "p2_minkowski3_p1_s1"]


def tiny_loaders(root: Path) -> tuple[Any, Any, Any]:
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
    )


def evaluate(algo: WrapperMultiCore, loaders: tuple[Any, Any, Any]) -> tuple[dict, dict]:
    """``eval_outputs_dataloader`` on the anomalous test set, through the base class's target-hiding generator."""
    holder: dict[str, Any] = {}
    generator = algo.create_no_target_dataloader(loaders[2], holder, regular=False)
    return algo.eval_outputs_dataloader(generator, len(loaders[2]))


@pytest.fixture(scope="module")
def trained(
    tiny_mvtec: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[WrapperMultiCore, Path, tuple]:
    loaders = tiny_loaders(tiny_mvtec)
    algo = WrapperMultiCore(**TINY_PARAMS)
    algo.enter_dataloaders(*loaders)
    algo.train_one_epoch()  # prepares, then one HFM epoch
    algo.pre_eval_processing()
    location = tmp_path_factory.mktemp("mc_model") / "model"
    algo.save_model(location)
    return algo, location, loaders


def test_hooks_and_method_keys(trained: tuple[WrapperMultiCore, Path, tuple]) -> None:
    algo, _, loaders = trained
    assert algo.model.hfm_epochs_ == 1 and algo.model.is_prepared
    assert algo.model.hfm_ is not None and not algo.model.hfm_.training
    heatmaps, scores = evaluate(algo, loaders)
    if algo.model.fusion_ is not None:
        assert torch.equal(heatmaps["multicore"], heatmaps["multicore_hfm"])
    elif algo.model.selected_subset_ is None:
        assert torch.equal(heatmaps["multicore"], heatmaps["ensemble_mean"])
    assert list(heatmaps) == METHODS and list(scores) == METHODS
    for method in METHODS:
        assert heatmaps[method].shape == (4, 256, 256)
        assert scores[method].shape == (4,)
        assert torch.isfinite(heatmaps[method]).all()


def test_bank_loader_has_no_hook_and_split_is_disjoint(trained: tuple[WrapperMultiCore, Path, tuple]) -> None:
    algo, _, loaders = trained
    assert loaders[0].dataset.pre_normalisation_transform is None
    bank, fusion = set(algo.model.bank_idx_.tolist()), set(algo.model.fusion_idx_.tolist())
    assert not bank & fusion and len(bank | fusion) == len(loaders[0].dataset)


def test_refuses_a_hooked_training_loader(tiny_mvtec: Path) -> None:
    loaders = tiny_loaders(tiny_mvtec)
    loaders[0].dataset.pre_normalisation_transform = lambda pil: (pil, 1)
    algo = WrapperMultiCore(**TINY_PARAMS)
    algo.enter_dataloaders(*loaders)
    with pytest.raises(RuntimeError, match="pre_normalisation_transform"):
        algo.train_one_epoch()


def test_save_load_fresh_instance_identical(trained: tuple[WrapperMultiCore, Path, tuple]) -> None:
    algo, location, loaders = trained
    assert {p.name for p in location.iterdir()} >= {"model_params.json", "multicore.pt", "hfm_history.json"}
    history = json.loads((location / "hfm_history.json").read_text())
    assert len(history["epochs"]) == 1 and history["epochs"][0]["is_best_trained"]
    assert history["multicore_is"] in ("ensemble_mean", "hfm_epoch_0") or history["multicore_is"].startswith(
        "mean_of:"
    )
    assert history["multicore_is"] == history["epochs"][-1]["multicore_is"]
    assert set(history["validation_before_training"]["members"]) == set(METHODS[3:])
    assert history["output_calibration"] is None  # calibration_steps defaults to 0
    before = evaluate(algo, loaders)
    fresh = WrapperMultiCore()
    fresh.load_model(location)  # no training loader attached
    assert not hasattr(fresh, "dataloader_train")
    after = evaluate(fresh, loaders)
    for method in METHODS:
        assert torch.equal(before[0][method], after[0][method]), method
        assert torch.equal(before[1][method], after[1][method]), method
    with pytest.raises(RuntimeError, match="cannot be trained"):
        fresh.train_one_epoch()


def test_selection_confidences_reach_the_trainer() -> None:
    algo = WrapperMultiCore(**{**TINY_PARAMS, "selection_confidence": 0.8, "epoch_confidence": 0.95})
    assert (algo.model.hfm.selection_confidence, algo.model.hfm.epoch_confidence) == (0.8, 0.95)
    assert algo.params["epoch_confidence"] == 0.95
    default = WrapperMultiCore(**TINY_PARAMS)
    assert (default.model.hfm.selection_confidence, default.model.hfm.epoch_confidence) == (0.9, 0.99)
    assert default.model.hfm.calibration_steps == 0 and default.params["calibration_steps"] == 0
    calibrated = WrapperMultiCore(**{**TINY_PARAMS, "calibration_steps": 50})
    assert calibrated.model.hfm.calibration_steps == 50 and calibrated.params["calibration_steps"] == 50
    with pytest.raises(ValueError, match="calibration_steps"):
        WrapperMultiCore(**{**TINY_PARAMS, "calibration_steps": -1})
    with pytest.raises(ValueError, match="epoch_confidence"):
        WrapperMultiCore(**{**TINY_PARAMS, "epoch_confidence": 1.0})


def test_unknown_model_param_is_an_error() -> None:
    with pytest.raises(TypeError, match="lrr"):
        WrapperMultiCore(lrr=0.1)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="unknown SSAConfig keys"):
        WrapperMultiCore(ssa={"sizes": 3})


@pytest.mark.slow
def test_load_in_a_new_process_gives_identical_outputs(
    trained: tuple[WrapperMultiCore, Path, tuple], tiny_mvtec: Path, tmp_path: Path
) -> None:
    algo, location, loaders = trained
    heatmaps, _ = evaluate(algo, loaders)
    out = tmp_path / "out.pt"
    script = (
        "import sys, torch\n"
        "sys.path.insert(0, sys.argv[4])\n"
        "from test_algorithm_multicore import tiny_loaders, evaluate\n"
        "from pathlib import Path\n"
        "from visionad_multicore.algorithms.multicore import WrapperMultiCore\n"
        "algo = WrapperMultiCore(); algo.load_model(sys.argv[1])\n"
        "torch.save(evaluate(algo, tiny_loaders(Path(sys.argv[2])))[0], sys.argv[3])\n"
    )
    tests_dir = str(Path(__file__).resolve().parent)
    subprocess.run(
        [sys.executable, "-c", script, str(location), str(tiny_mvtec), str(out), tests_dir], check=True
    )
    other = torch.load(out, weights_only=True)
    for method in METHODS:
        assert torch.equal(heatmaps[method], other[method]), method


def test_zero_epochs_through_the_runner_is_the_ensemble_mean(tiny_mvtec: Path, tmp_path: Path) -> None:
    """``epochs: 0`` evaluates the untrained module: multicore and multicore_hfm equal ensemble_mean exactly."""
    from tests.fake_visionad import write_visionad_config
    from visionad_multicore.algorithms import get_algorithm
    from visionad_multicore.visionad.runner import run_config

    registry = tmp_path / "datasets.yaml"
    registry.write_text(f"datasets:\n  tiny:\n    path: {tiny_mvtec}\n")
    config = write_visionad_config(
        tmp_path / "cfg.py",
        models=[
            {
                "algo_class_name": "multicore",
                "model_params": TINY_PARAMS,
                "epochs": 0,
                "save_model_every_n_epochs": 1,
            }
        ],
        dataset_list=["tiny"],
        metrics=["Imagewise_AUC", "Pixelwise_AUC", "Pixelwise_AUPRO"],
        size=64,
    )
    summary = run_config(
        config, registry_path=registry, results_dir=tmp_path / "res", resolve_algorithm=get_algorithm
    )
    assert summary.ok
    (pair,) = summary.results
    assert pair.evaluated_epochs == [0]
    for metric, values in pair.metrics.items():
        assert values["multicore"] == values["ensemble_mean"] == values["multicore_hfm"], metric
    history = json.loads((pair.path / "0" / "model" / "hfm_history.json").read_text())
    assert history["multicore_is"] == "ensemble_mean" and history["epochs_trained"] == 0


def test_output_calibration_is_recorded_in_the_history(tiny_mvtec: Path) -> None:
    """With ``calibration_steps`` the fitted scale and offset reach ``hfm_history.json``'s summary."""
    algo = WrapperMultiCore(**{**TINY_PARAMS, "calibration_steps": 20})
    algo.enter_dataloaders(*tiny_loaders(tiny_mvtec))
    algo.train_one_epoch()
    calibration = algo.model.history_summary()["output_calibration"]
    assert calibration["steps"] == 20 and calibration["scale"] > 0
    assert math.isfinite(calibration["offset"])
