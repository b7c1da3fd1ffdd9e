"""anomalib's baselines as VisionAD algorithms: end-to-end runs offline, shapes, metrics, save / load, seeding."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("anomalib", reason="anomalib is not installed (pip install -e '.[baselines]')")

from visionad_multicore.algorithms import ALGORITHMS, get_algorithm  # noqa: E402
from visionad_multicore.algorithms import anomalib_baselines as ab  # noqa: E402
from visionad_multicore.patchcore.backbone import build_efficientnet_lite0_classifier  # noqa: E402
from visionad_multicore.visionad.loaders import create_dataloaders  # noqa: E402
from visionad_multicore.visionad.metrics import run_metrics  # noqa: E402
from visionad_multicore.visionad.runner import run_config  # noqa: E402

# tiny settings per model: 64 px inputs (DRAEM 32, SuperSimpleNet 128), small options where anomalib's defaults
# need more data
TINY: dict[str, dict[str, Any]] = {
    "patchcore": {"options": {"coreset_sampling_ratio": 0.05}},
    "padim": {},
    "dfm": {},
    "dfkde": {"options": {"n_pca_components": 4}},
    "stfpm": {},
    "fastflow": {"options": {"flow_steps": 2}},
    "cflow": {"options": {"fiber_batch_size": 16, "coupling_blocks": 2}},
    "reverse_distillation": {},
    "fre": {},
    "supersimplenet": {"image_size": 128},  # its Perlin masks need a feature map of 32 x 32 or more
    "ganomaly": {"options": {"n_features": 16}},
    "draem": {"image_size": 32, "options": {"enable_sspcab": True}},
}
IMAGE_ONLY = {"dfkde", "ganomaly"}


def tiny_loaders(root: Path) -> tuple[Any, Any, Any]:
    return create_dataloaders(
        None,
        None,
        None,
        batch_size=4,
        test_batch_size=4,
        folder_path_regular_train=str(root / "train/good"),
        folder_path_regular_test=str(root / "test/good"),
        folder_path_novel_test=[str(root / "test/defect")],
        folder_path_novel_masks=[str(root / "ground_truth/defect")],
    )


def make(model: str, **extra: Any) -> ab.WrapperAnomalib:
    params = {"image_size": 64, "progress": False, **TINY[model], **extra}
    return get_algorithm(f"anomalib_{model}")(**params)


def test_every_recipe_is_registered() -> None:
    for model in ab.RECIPES:
        cls = get_algorithm(f"anomalib_{model}")
        assert issubclass(cls, ab.WrapperAnomalib) and cls.model_name == model
    assert {n for n in ALGORITHMS if n.startswith("anomalib_")} == {f"anomalib_{m}" for m in ab.RECIPES}


CONFIG = """
from torchvision import transforms
from PIL import Image
TINY = {tiny!r}
def entry(model, params):
    return {{
        "algo_class_name": "anomalib_" + model,
        "model_params": {{"image_size": 64, "progress": False, **params}},
        "epochs": 1,
        "training_transformations": transforms.Compose([]),
        "training_transformation_string": "transforms.Compose([])",
        "identical_transforms": transforms.Compose([transforms.Resize((64, 64), interpolation=Image.NEAREST)]),
        "batch_size": 4,
        "test_batch_size": 4,
        "save_model_every_n_epochs": None,
        "save_heatmaps_n_epochs": 1,
        "evaluate_n_epochs": 1,
        "model_description": "tiny",
    }}
model_list = [entry(model, params) for model, params in TINY.items()]
dataset_list = ["tiny_class"]
metrics = ["Imagewise_AUC", "Pixelwise_AUC", "Pixelwise_AUPRO"]
"""


@pytest.fixture(scope="module")
def tiny_run(tiny_mvtec: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Every anomalib model once through ``run_config`` on the tiny MVTec-layout class, offline."""
    work = tmp_path_factory.mktemp("anomalib_run")
    registry = work / "registry.yaml"
    registry.write_text(f"datasets:\n  tiny_class:\n    path: {tiny_mvtec}\n")
    config = work / "config.py"
    config.write_text(CONFIG.format(tiny=TINY))
    return run_config(
        config, "tiny", device="cpu", results_dir=work / "results", resolve_algorithm=get_algorithm,
        registry_path=registry,
    )  # fmt: skip


def test_run_config_every_model_offline(tiny_run: Any, tiny_mvtec: Path) -> None:
    assert tiny_run.ok, [p.error for p in tiny_run.failed]
    assert len(tiny_run.results) == len(TINY) >= 6
    for pair in tiny_run.results:
        model = pair.algo.removeprefix("anomalib_")
        method = pair.algo
        data = json.loads((pair.path / "0" / "data.json").read_text())
        auc = data["metrics"]["Imagewise_AUC"][method]
        assert 0.5 <= auc <= 1.0
        if model in IMAGE_ONLY:
            assert method not in data["metrics"]["Pixelwise_AUC"]
        else:
            assert 0.5 <= data["metrics"]["Pixelwise_AUC"][method] <= 1.0
    # the memory-bank model finds the bright square defects of the tiny set
    patchcore = next(p for p in tiny_run.results if p.algo == "anomalib_patchcore")
    assert patchcore.metrics["Imagewise_AUC"]["anomalib_patchcore"] == 1.0
    assert patchcore.metrics["Pixelwise_AUC"]["anomalib_patchcore"] > 0.9


def test_saved_heatmaps_have_visionad_shapes_and_metrics_come_from_our_code(tiny_run: Any) -> None:
    pair = next(p for p in tiny_run.results if p.algo == "anomalib_padim")
    with open(pair.path / "0" / "heatmaps.pk", "rb") as f:
        heatmaps, scores, targets, _paths = pickle.load(f)
    assert heatmaps["heatmap_set_regular"]["anomalib_padim"].shape == (4, 1, 256, 256)
    assert heatmaps["heatmap_set_novel"]["anomalib_padim"].shape == (4, 1, 256, 256)
    assert scores["image_score_set_novel"]["anomalib_padim"].shape == (4,)
    again = run_metrics(["Imagewise_AUC", "Pixelwise_AUC"], heatmaps, scores, targets, None, progress=False)
    for name in ("Imagewise_AUC", "Pixelwise_AUC"):
        assert again[name]["metric_results"]["anomalib_padim"] == pair.metrics[name]["anomalib_padim"]


@pytest.mark.parametrize("model", ["patchcore", "fastflow", "dfm", "dfkde"])
def test_save_load_fresh_instance_identical(model: str, tiny_mvtec: Path, tmp_path: Path) -> None:
    algo = make(model)
    loaders = tiny_loaders(tiny_mvtec)
    algo.enter_dataloaders(*loaders)
    algo.train_one_epoch()
    algo.pre_eval_processing()
    images = torch.cat([batch[0] for batch in loaders[2]])
    before = algo.eval_outputs_dataloader(iter([(images, None)]), 1)
    algo.save_model(tmp_path / "model")
    fresh = get_algorithm(f"anomalib_{model}")()  # defaults, no loaders: everything comes from the files
    fresh.load_model(tmp_path / "model")
    after = fresh.eval_outputs_dataloader(iter([(images, None)]), 1)
    method = f"anomalib_{model}"
    if model == "dfkde":  # image scores only
        assert before[0] == after[0] == {}
    else:
        assert after[0][method].shape == (4, 256, 256)
        assert torch.equal(before[0][method], after[0][method])
    assert torch.equal(before[1][method], after[1][method])


def _train_and_score(model: str, root: Path, seed: int) -> torch.Tensor:
    algo = make(model, seed=seed)
    loaders = tiny_loaders(root)
    algo.enter_dataloaders(*loaders)
    algo.train_one_epoch()
    algo.pre_eval_processing()
    images = torch.cat([batch[0] for batch in loaders[2]])
    return algo.predict(images)[1]


@pytest.mark.parametrize("model", ["cflow", "padim"])
def test_seeded(model: str, tiny_mvtec: Path) -> None:
    torch.manual_seed(123)
    first = _train_and_score(model, tiny_mvtec, seed=0)
    torch.manual_seed(456)  # the caller's global state must not matter
    assert torch.equal(first, _train_and_score(model, tiny_mvtec, seed=0))
    assert not torch.equal(first, _train_and_score(model, tiny_mvtec, seed=1))


def test_no_download_and_teacher_gets_packaged_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm.models._builder as builder

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a download of pretrained weights was attempted")

    monkeypatch.setattr(builder, "load_pretrained", refuse)
    algo = make("stfpm")  # anomalib builds STFPM's teacher with pretrained=True
    lite0 = build_efficientnet_lite0_classifier().state_dict()
    teacher = algo.built.model.teacher_model.feature_extractor.state_dict()
    student = algo.built.model.student_model.feature_extractor.state_dict()
    assert torch.equal(teacher["conv_stem.weight"], lite0["conv_stem.weight"])
    # the student starts from random weights
    assert not torch.equal(student["conv_stem.weight"], lite0["conv_stem.weight"])


def test_download_weights_lets_timm_load_pretrained(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm.models._builder as builder

    calls: list[str] = []
    monkeypatch.setattr(builder, "load_pretrained", lambda model, *a, **k: calls.append(type(model).__name__))
    make("padim", backbone="anomalib_default", download_weights=True)  # anomalib's ResNet-18, online
    assert calls  # timm was asked to fetch the weights (stubbed here: no network)
    calls.clear()
    make("padim")  # offline default: never
    assert not calls


def test_local_weights_file_equals_packaged(tmp_path: Path, tiny_mvtec: Path) -> None:
    path = tmp_path / "lite0.pth"
    torch.save(build_efficientnet_lite0_classifier().state_dict(), path)
    scores = []
    for kwargs in ({}, {"backbone": "tf_efficientnet_lite0", "backbone_weights": str(path)}):
        loaders = tiny_loaders(tiny_mvtec)  # fresh: a loader's shuffling generator advances with each pass
        images = torch.cat([batch[0] for batch in loaders[2]])
        algo = make("padim", **kwargs)
        algo.enter_dataloaders(*loaders)
        algo.pre_eval_processing()
        scores.append(algo.predict(images)[1])
    assert torch.equal(scores[0], scores[1])


def test_backbone_without_weights_is_refused() -> None:
    with pytest.raises(ValueError, match="backbone_weights"):
        make("patchcore", backbone="resnet18")
    with pytest.raises(ValueError, match="unknown backbone"):
        make("patchcore", backbone="not_a_network")


def test_unknown_option_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="coreset_sampling_ratio"):
        make("patchcore", options={"coreset_ratio": 0.1})


def test_hook_attached_is_refused(tiny_mvtec: Path) -> None:
    algo = make("stfpm")
    loaders = tiny_loaders(tiny_mvtec)
    algo.enter_dataloaders(*loaders)
    loaders[0].dataset.pre_normalisation_transform = lambda pil: (pil, 0)
    with pytest.raises(RuntimeError, match="pre_normalisation_transform"):
        algo.train_one_epoch()


def test_untrained_eval_raises() -> None:
    with pytest.raises(RuntimeError, match="not trained"):
        make("padim").eval_outputs_dataloader(iter([]), 0)


def test_isometric_lift_preserves_cosine() -> None:
    class Two(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"a": x, "b": x[:, :2]}

    lift = ab._IsometricLift(Two(), (3, 2), (8, 5), seed=0)
    x = torch.randn(2, 3, 4, 4)
    out = lift(x)
    assert out["a"].shape == (2, 8, 4, 4) and out["b"].shape == (2, 5, 4, 4)
    for key, source in (("a", x), ("b", x[:, :2])):
        cos_in = torch.nn.functional.cosine_similarity(source[0], source[1], dim=0)
        cos_out = torch.nn.functional.cosine_similarity(out[key][0], out[key][1], dim=0)
        assert torch.allclose(cos_in, cos_out, atol=1e-5)


def test_model_input_renormalises_to_the_backbone(tiny_mvtec: Path) -> None:
    loaders = tiny_loaders(tiny_mvtec)
    images = next(iter(loaders[0]))[0]  # ImageNet-normalised by the loader
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels = images * std + mean
    lite0 = make("padim", image_size=64)  # Lite0 expects mean = std = 0.5
    assert torch.allclose(lite0.model_input(images), (pixels - 0.5) / 0.5, atol=1e-5)
    draem = make("draem", image_size=64)  # DRAEM takes [0, 1] pixels
    assert torch.allclose(draem.model_input(images), pixels, atol=1e-5)
