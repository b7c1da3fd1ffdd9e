"""What algorithms read from a training loader: normalisation as VisionAD gives it, and the hook refusal."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torchvision import transforms

from tests.fake_visionad import write_fake_visionad, write_visionad_config
from visionad_multicore.algorithms import get_algorithm
from visionad_multicore.algorithms.multicore import WrapperMultiCore
from visionad_multicore.algorithms.patchcore_plus import WrapperPatchCorePlus
from visionad_multicore.visionad.runner import run_config
from visionad_multicore.visionad.training_data import (
    NormalisationUnknownError,
    dataset_normalisation,
    require_clean_training_set,
)

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)  # deliberately not ImageNet's


def visionad_like(pp_transforms: object, **attributes: object) -> SimpleNamespace:
    """A dataset shaped like VisionAD's ImageDataset: pp_transforms, no mean / std unless given."""
    return SimpleNamespace(pp_transforms=pp_transforms, pre_normalisation_transform=None, **attributes)


def test_normalize_in_pp_transforms_is_read() -> None:
    dataset = visionad_like(transforms.Compose([transforms.Normalize(mean=list(MEAN), std=list(STD))]))
    assert dataset_normalisation(dataset) == (MEAN, STD)
    nested = visionad_like(transforms.Compose([transforms.Compose([transforms.Normalize([0.5], [0.5])])]))
    assert dataset_normalisation(nested) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # one value: broadcast
    assert dataset_normalisation(visionad_like(transforms.Compose([]))) == ((0.0,) * 3, (1.0,) * 3)


def test_two_normalize_steps_compose_into_what_they_do() -> None:
    steps = transforms.Compose(
        [transforms.Normalize(list(MEAN), list(STD)), transforms.Normalize([1, 2, 3], [2, 4, 8])]
    )
    mean, std = dataset_normalisation(visionad_like(steps))
    x = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0))
    expected = steps(x)
    torch.testing.assert_close(
        (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None], expected
    )


def test_applied_normalisation_wins_over_declared_attributes(caplog: pytest.LogCaptureFixture) -> None:
    dataset = visionad_like(transforms.Normalize(list(MEAN), list(STD)), mean=[0.1] * 3, std=[0.9] * 3)
    assert dataset_normalisation(dataset) == (MEAN, STD)
    assert "using what is applied" in caplog.text
    assert dataset_normalisation(SimpleNamespace(pp_transforms=None, mean=list(MEAN), std=list(STD))) == (
        MEAN,
        STD,
    )


def test_unknown_normalisation_is_an_error_never_a_default() -> None:
    with pytest.raises(NormalisationUnknownError, match="expected Normalize\\(mean, std\\) steps only"):
        dataset_normalisation(visionad_like(transforms.Compose([transforms.Lambda(lambda t: t * 2)])))
    with pytest.raises(NormalisationUnknownError, match="has no pp_transforms and no mean / std"):
        dataset_normalisation(SimpleNamespace())
    with pytest.raises(NormalisationUnknownError, match="expected 1 or 3 values"):
        dataset_normalisation(visionad_like(transforms.Normalize([0.1, 0.2], [1.0, 1.0])))


def test_hook_on_a_bank_loader_is_refused() -> None:
    require_clean_training_set(visionad_like(None), "x")  # no hook: fine
    hooked = SimpleNamespace(pre_normalisation_transform=lambda image: (image, 0))
    with pytest.raises(
        RuntimeError, match="multicore: the training dataset has a pre_normalisation_transform"
    ):
        require_clean_training_set(hooked, "multicore")


def test_multicore_reads_the_statistics_of_a_visionad_dataset() -> None:
    images = [torch.rand(3, 8, 8) for _ in range(2)]

    class Dataset(list):  # VisionAD's item tuples, its attribute names, no mean / std
        pp_transforms = transforms.Compose([transforms.Normalize(list(MEAN), list(STD))])
        pre_normalisation_transform = None

    algo = WrapperMultiCore(progress=False)
    algo.dataloader_train = SimpleNamespace(
        dataset=Dataset((image, f"{i}.png", 0) for i, image in enumerate(images))
    )
    stacked, mean, std = algo._training_images()
    assert (mean, std) == (MEAN, STD) and torch.equal(stacked, torch.stack(images))


def test_non_imagenet_statistics_through_a_visionad_checkout(tiny_mvtec: Path, tmp_path: Path) -> None:
    """The checkout's dataset says mean / std = MEAN / STD; patchcore_plus must normalise with exactly those."""
    seen: list[tuple] = []

    class Recording(WrapperPatchCorePlus):
        def pre_eval_processing(self) -> None:
            super().pre_eval_processing()
            seen.append((self.predictor.input_mean, self.predictor.input_std))

    mvtec = tmp_path / "mvtec_copy"
    shutil.copytree(tiny_mvtec, mvtec / "tiny")
    checkout = write_fake_visionad(
        tmp_path / "VisionAD", mvtec_path=mvtec, mvtec_classes=["tiny"], mean=MEAN, std=STD
    )
    config = write_visionad_config(
        tmp_path / "cfg.py",
        models=[
            {"algo_class_name": "patchcore_plus", "model_params": {"coreset_size": 16, "progress": False}}
        ],
        dataset_list=["mvtec_tiny"],
        metrics=["Imagewise_AUC"],
        size=64,
    )
    summary = run_config(
        config,
        device="cpu",
        resolve_algorithm=lambda name: Recording if name == "patchcore_plus" else get_algorithm(name),
        visionad_root=checkout,
        progress=False,
    )
    assert summary.ok, summary.results[0].error
    assert seen == [(MEAN, STD)]  # read from the Normalize VisionAD's run.py put in pp_transforms
