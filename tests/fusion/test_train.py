"""HFM training: config, pixel AP, validation scores, epochs, and the choice between the mean and an epoch."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

import visionad_multicore.fusion.train as train_module
from visionad_multicore.auroc import OneClassError
from visionad_multicore.fusion.train import MEAN_EPOCH, HFMTrainConfig, HFMTrainer
from visionad_multicore.fusion.validation import (
    ValidationData,
    ValidationResult,
    evaluate_maps,
    map_image_scores,
    pixel_ap_pieces,
    pixel_average_precision,
    weighted_pixel_ap,
)
from visionad_multicore.region_overlap import aupro_arrays


def test_paper_and_cpu_presets() -> None:
    c = HFMTrainConfig.paper()
    assert (c.lr, c.weight_decay, c.momentum, c.grad_clip, c.epochs, c.synthetic_size, c.optimizer) == (
        1e-5,
        1e-5,
        0.999,
        1.0,
        300,
        4000,
        "rmsprop",
    )
    assert (c.ssim_weight, c.cldice_weight, c.bce_weight) == (1.0, 0.25, 0.0)  # SSIM + clDice
    cpu = HFMTrainConfig.cpu(epochs=5)
    assert cpu.optimizer == "adam" and cpu.work_size == 64 and cpu.epochs == 5
    assert cpu.sizes == (180, 60)


def test_config_errors_list_valid_values() -> None:
    with pytest.raises(ValueError, match="unknown keys \\['lrr'\\].*valid keys"):
        HFMTrainConfig.from_dict({"lrr": 1})
    with pytest.raises(ValueError, match="validation_fraction"):
        HFMTrainConfig(validation_fraction=0.0)
    with pytest.raises(ValueError, match="selection_metric must be one of"):
        HFMTrainConfig(selection_metric="pauc")
    with pytest.raises(ValueError, match="optimizer"):
        HFMTrainConfig(optimizer="sgd")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_average_precision_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(400) < 0.2
    scores = np.round(rng.normal(size=400) + labels, 1)  # ties
    expected = average_precision_score(labels, scores)
    assert pixel_average_precision(torch.from_numpy(scores), torch.from_numpy(labels)) == pytest.approx(
        expected, abs=1e-12
    )
    # hand-worked: ranks 1, 3 are positive of 4 -> (1/2)(1/1) + (1/2)(2/3)
    assert pixel_average_precision(torch.tensor([4.0, 3, 2, 1]), torch.tensor([1, 0, 1, 0])) == pytest.approx(
        0.5 + 1 / 3
    )
    with pytest.raises(OneClassError):
        pixel_average_precision(torch.rand(5), torch.zeros(5))


def test_binned_pixel_ap_pieces_resample_like_repeated_images() -> None:
    g = torch.Generator().manual_seed(4)
    masks = torch.rand(5, 1, 24, 24, generator=g) < 0.1
    maps = torch.randn(5, 1, 24, 24, generator=g) + 1.5 * masks.float()
    pieces = pixel_ap_pieces(maps, masks)
    exact = average_precision_score(masks.flatten().numpy(), maps.flatten().numpy())
    assert weighted_pixel_ap(pieces, np.ones(5))[0] == pytest.approx(exact, abs=2e-3)  # 4096 bins
    weights = np.array([2, 0, 1, 1, 3])
    repeated = torch.from_numpy(np.repeat(np.arange(5), weights))
    expected = average_precision_score(masks[repeated].flatten().numpy(), maps[repeated].flatten().numpy())
    assert weighted_pixel_ap(pieces, weights)[0] == pytest.approx(expected, abs=2e-3)


def test_map_image_scores_top_share_mean() -> None:
    maps = torch.zeros(2, 1, 10, 10)
    maps[0, 0, 0, 0] = 9.0  # one bright speck
    maps[1, 0, 2:4, 2:7] = 3.0  # a 10-pixel region
    torch.testing.assert_close(map_image_scores(maps), torch.tensor([9.0, 3.0]))  # 0: the maximum
    torch.testing.assert_close(
        map_image_scores(maps, 0.1), torch.tensor([0.9, 3.0])
    )  # mean of the top 10 pixels
    torch.testing.assert_close(map_image_scores(maps, 0.001), torch.tensor([9.0, 3.0]))  # at least one pixel
    with pytest.raises(ValueError, match="top_fraction"):
        map_image_scores(maps, 1.0)
    with pytest.raises(ValueError, match="image_score_top"):
        HFMTrainConfig(image_score_top=-0.1)
    # evaluate_maps ranks images by the same score: the speck no longer outranks the region
    masks = torch.zeros(2, 1, 10, 10, dtype=torch.bool)
    masks[1, 0, 2:4, 2:7] = True
    nominal = maps[:1]
    assert evaluate_maps(maps[1:], masks[1:], nominal).image_auroc == 0.0
    assert evaluate_maps(maps[1:], masks[1:], nominal, image_score_top=0.1).image_auroc == 1.0


def test_evaluate_maps_against_independent_references() -> None:
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(6, 1, 32, 32, dtype=torch.bool)
    masks[:4, 0, 8:16, 8:16] = True  # items 4, 5: nominal synthetic items (empty masks)
    maps = torch.randn(6, 1, 32, 32, generator=g) + 2 * masks.float()
    nominal = torch.randn(3, 1, 32, 32, generator=g)
    result = evaluate_maps(maps, masks, nominal)
    expected_ap = average_precision_score(masks.flatten().numpy(), maps.flatten().numpy())
    assert result.pixel_ap == pytest.approx(expected_ap, abs=1e-12)
    assert result.aupro == pytest.approx(aupro_arrays(maps[:4, 0].numpy(), masks[:4, 0].numpy())[0])
    # the selection's AUPRO never scores a map upside down (VisionAD's metric would, and rate it highly)
    flipped = evaluate_maps(-maps, masks, -nominal)
    assert flipped.aupro < 0.05 < aupro_arrays(-maps[:4, 0].numpy(), masks[:4, 0].numpy())[0]
    # image AUROC: 4 anomalous items vs the 2 empty-mask items and the 3 clean images, by a pair count
    pos = maps[:4].flatten(1).amax(1)
    neg = torch.cat([maps[4:].flatten(1).amax(1), nominal.flatten(1).amax(1)])
    pairs = (pos[:, None] > neg[None]).float().mean().item()
    assert result.image_auroc == pytest.approx(pairs)
    assert math.isnan(result.loss) and result.value("aupro") == result.aupro


def _toy(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 'members' (normalised maps): channel 0 sees the mask, channel 1 is strong noise."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 1, size, size, dtype=torch.bool)
    for i in range(n - n // 6):  # a few empty masks
        y, x = torch.randint(0, size - 10, (2,), generator=g).tolist()
        masks[i, 0, y : y + 8, x : x + 8] = True
    maps = torch.randn(n, 2, size, size, generator=g) * 0.3
    maps[:, 0] += 3 * masks[:, 0].float()
    maps[:, 1] = torch.randn(n, size, size, generator=g) * 3
    return maps, masks


def _validation(seed: int = 1) -> ValidationData:
    maps, masks = _toy(12, seed=seed)
    nominal = _toy(6, seed=seed + 10)[0].clone()
    nominal[:, 0] = torch.randn(6, 32, 32, generator=torch.Generator().manual_seed(3)) * 0.3
    return ValidationData(maps.half(), masks, nominal.half())


CONFIG = HFMTrainConfig(
    lr=3e-3,
    optimizer="adam",
    batch_size=4,
    unet_depth=2,
    unet_width=8,
    cldice_weight=0.0,
    bce_weight=1.0,
    member_subsets=False,  # the trained module against the plain mean; subsets are tested on their own
)


def test_training_that_helps_is_chosen_and_the_mean_is_a_candidate() -> None:
    """The mean is diluted by the noise channel; a trained module learns to ignore it and is chosen."""
    maps, masks = _toy(24)
    validation = _validation()
    trainer = HFMTrainer(2, CONFIG, validation, progress=False)
    assert trainer.selected_epoch == MEAN_EPOCH and trainer.mean_selected
    assert trainer.selected_model() is None  # before training, multicore is the mean
    mean = evaluate_maps(
        validation.maps.float().mean(1, keepdim=True),
        validation.masks,
        validation.nominal.float().mean(1, keepdim=True),
    )
    assert trainer.mean_validation.aupro == pytest.approx(mean.aupro)
    records = [
        trainer.run_epoch(maps.half(), masks.half(), maps[:4].half(), masks[:4].half()) for _ in range(6)
    ]
    assert [r.epoch for r in records] == list(range(6)) and trainer.epoch == 6
    assert not trainer.mean_selected and trainer.selected_epoch >= 0
    chosen = records[trainer.selected_epoch]
    assert chosen.validation.aupro > trainer.mean_validation.aupro and chosen.is_candidate
    assert chosen.gain_confidence >= CONFIG.selection_confidence  # the gain holds in the bootstrap
    assert trainer.member_validation["member0"].aupro > trainer.mean_validation.aupro
    model = trainer.selected_model()
    assert model is not None and not model.training


def test_training_that_hurts_falls_back_to_the_mean() -> None:
    """Inverted targets teach the module to hide the defects: no epoch beats the mean, multicore is the mean."""
    maps, masks = _toy(24)
    shuffled = ~masks
    validation = _validation()
    trainer = HFMTrainer(2, CONFIG, validation, progress=False)
    records = [
        trainer.run_epoch(maps.half(), shuffled.half(), maps[:4].half(), shuffled[:4].half())
        for _ in range(4)
    ]
    assert all(r.validation.aupro < trainer.mean_validation.aupro for r in records)
    assert trainer.mean_selected and all(r.selected == MEAN_EPOCH for r in records)
    assert trainer.selected_model() is None
    assert trainer.best_trained_epoch is not None  # the raw HFM stays available (multicore_hfm)


def test_a_weak_member_is_left_out_of_the_mean() -> None:
    """Channel 1 is pure noise: the mean of channel 0 alone beats the full mean on validation and is used."""
    config = HFMTrainConfig(**{**CONFIG.to_dict(), "member_subsets": True})
    trainer = HFMTrainer(2, config, _validation(), progress=False)
    assert trainer.selected_subset == (0,) and not trainer.mean_selected
    assert trainer.selected_model() is None  # no trained module: a mean, of member 0 only
    result, confidence = trainer.subset_validation[(0,)]
    assert result.aupro > trainer.mean_validation.aupro and confidence >= config.selection_confidence
    assert trainer.selection_label() == "mean_of:member0"


def test_a_subset_worse_on_another_validation_score_is_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Member 0 alone wins on AUPRO, but if its pixel AP (or pixel AUROC) fell below the mean's beyond
    ``pixel_tolerance`` it would trade one test metric for another: the full mean stays."""
    validation = _validation()
    config = HFMTrainConfig(**{**CONFIG.to_dict(), "member_subsets": True})
    mean = HFMTrainer(2, config, validation, progress=False).mean_validation
    real = train_module.evaluate_maps
    member0 = validation.maps[:, [0]].float()

    def member0_scores(field: str, value: float) -> None:
        def fake(
            fused: torch.Tensor, masks: torch.Tensor, nominal: torch.Tensor, top: float
        ) -> ValidationResult:
            result = real(fused, masks, nominal, top)
            return dataclasses.replace(result, **{field: value}) if torch.equal(fused, member0) else result

        monkeypatch.setattr(train_module, "evaluate_maps", fake)

    for field, name in (("pixel_ap", "pixel AP"), ("pixel_auroc", "pixel AUROC")):
        member0_scores(field, getattr(mean, field) - 0.01)
        trainer = HFMTrainer(2, config, validation, progress=False)
        assert trainer.mean_selected and trainer.selected_subset is None
        result, confidence = trainer.subset_validation[(0,)]
        assert result.aupro > mean.aupro and math.isnan(confidence)
        assert trainer._guard_failures(result) == [name]
        # within pixel_tolerance (0.005) of the mean the subset is taken
        member0_scores(field, getattr(mean, field) - 0.004)
        assert HFMTrainer(2, config, validation, progress=False).selected_subset == (0,)


def test_equally_good_members_keep_the_full_mean() -> None:
    maps, masks = _toy(12, seed=1)
    maps[:, 1] = maps[:, 0] + 0.3 * torch.randn(12, 32, 32, generator=torch.Generator().manual_seed(9))
    nominal = maps[:4].clone()
    nominal[:, :] = 0.3 * torch.randn(4, 2, 32, 32, generator=torch.Generator().manual_seed(8))
    config = HFMTrainConfig(**{**CONFIG.to_dict(), "member_subsets": True})
    trainer = HFMTrainer(2, config, ValidationData(maps.half(), masks, nominal.half()), progress=False)
    assert trainer.mean_selected and trainer.selected_subset is None


def test_selection_margin_and_image_guard_keep_the_mean() -> None:
    maps, masks = _toy(24)
    validation = _validation()
    strict = HFMTrainer(
        2, HFMTrainConfig(**{**CONFIG.to_dict(), "selection_margin": 1.0}), validation, progress=False
    )
    strict.run_epoch(maps.half(), masks.half(), maps[:4].half(), masks[:4].half())
    assert strict.mean_selected  # an AUPRO gain above 1.0 is impossible


def test_trainer_is_reproducible() -> None:
    maps, masks = _toy(8, size=16)
    validation = ValidationData(maps.half(), masks, maps[:2].half())
    low = F.interpolate(maps, size=(16, 16), mode="area").half()
    states = []
    for _ in range(2):
        trainer = HFMTrainer(
            2,
            HFMTrainConfig(lr=1e-3, batch_size=3, unet_depth=1, unet_width=4, seed=5),
            validation,
            progress=False,
        )
        trainer.run_epoch(low, masks.half(), low[:2], masks[:2].half())
        states.append(trainer.model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_output_calibration_fits_scale_and_offset_and_keeps_the_mean_ranking() -> None:
    """Before the first epoch the output's scale and offset are fitted to the training targets; the correction
    stays zero, so the calibrated module ranks pixels and images exactly as the mean does."""
    maps, masks = _toy(24)
    validation = _validation()
    inputs, targets = maps.half(), masks.half()
    config = dataclasses.replace(CONFIG, cldice_weight=0.25, bce_weight=0.0, calibration_steps=200)
    trainer = HFMTrainer(2, config, validation, progress=False)

    def bce() -> float:
        with torch.no_grad():
            return F.binary_cross_entropy_with_logits(trainer.model(inputs.float()), targets.float()).item()

    untrained = bce()
    assert trainer.calibration is None
    scale, offset = trainer.calibrate_output(inputs, targets)
    assert trainer.calibration == (scale, offset)
    assert scale > 0.0 and offset < -1.0  # z-scores ~0 on clean pixels: shifted so that sigmoid is ~0 there
    assert bce() < untrained - 0.3
    assert torch.count_nonzero(trainer.model.head.weight) == 0
    calibrated, fused = trainer._validate(trainer.model)
    mean = validation.maps.float().mean(dim=1, keepdim=True)
    assert torch.allclose(fused, scale * mean + offset, atol=1e-4)
    for metric in ("aupro", "pixel_ap", "pixel_auroc", "image_auroc"):
        expected = trainer.mean_validation.value(metric)
        assert calibrated.value(metric) == pytest.approx(expected, abs=1e-6), metric
    again = HFMTrainer(2, config, validation, progress=False)
    assert again.calibrate_output(inputs, targets) == (scale, offset)  # seeded
    off = HFMTrainer(2, dataclasses.replace(config, calibration_steps=0), validation, progress=False)
    assert off.calibrate_output(inputs, targets) == (1.0, 0.0)
    assert off.model.residual_scale.item() == 1.0 and off.model.residual_offset.item() == 0.0
    assert HFMTrainConfig().calibration_steps == 0  # opt-in
    trainer.run_epoch(inputs, targets, inputs[:4], targets[:4])
    with pytest.raises(RuntimeError, match="no longer zero"):
        trainer.calibrate_output(inputs, targets)


def test_a_trained_epoch_needs_epoch_confidence_against_the_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gain of a trained epoch is bootstrapped against the ensemble mean, at ``epoch_confidence``, not only
    against the epoch in use: a chain of small wins at 94 % (demo grass: epoch 0 over the mean, epoch 8 over
    epoch 0) does not replace the mean when 99 % is asked."""
    maps, masks = _toy(24)
    validation = _validation()
    baselines: list[object] = []

    def confidence_094(self: HFMTrainer, fused: torch.Tensor, baseline: object) -> float:
        baselines.append(baseline)
        return 0.94

    monkeypatch.setattr(HFMTrainer, "_gain_confidence", confidence_094)
    strict = HFMTrainer(2, CONFIG, validation, progress=False)
    assert CONFIG.epoch_confidence == 0.99
    records = [
        strict.run_epoch(maps.half(), masks.half(), maps[:4].half(), masks[:4].half()) for _ in range(4)
    ]
    gains = [r for r in records if r.validation.aupro > strict.mean_validation.aupro and r.is_candidate]
    assert gains, "the toy training must give epochs that beat the mean on validation"
    assert strict.mean_selected and all(r.selected == MEAN_EPOCH for r in records)
    assert all(b is strict._mean_pieces for b in baselines)  # compared with the mean, never a later baseline
    assert all(r.gain_confidence == 0.94 for r in gains)
    lenient = HFMTrainer(2, dataclasses.replace(CONFIG, epoch_confidence=0.9), validation, progress=False)
    for _ in range(4):
        lenient.run_epoch(maps.half(), masks.half(), maps[:4].half(), masks[:4].half())
    assert not lenient.mean_selected and lenient.selected_epoch >= 0
    with pytest.raises(ValueError, match="epoch_confidence"):
        HFMTrainConfig(epoch_confidence=1.0)


def test_validation_data_shapes_are_checked() -> None:
    maps, masks = _toy(4)
    with pytest.raises(ValueError, match="masks"):
        ValidationData(maps, masks[:3], maps)
    with pytest.raises(ValueError, match="nominal"):
        ValidationData(maps, masks, maps[:, :1])
