"""HFM training helpers: config, split, AUROC, epoch training and checkpoint selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from visionad_multicore.fusion.train import (
    HFMTrainConfig,
    HFMTrainer,
    binary_auroc,
    split_train_validation,
)


def test_paper_preset() -> None:
    c = HFMTrainConfig.paper()
    assert (c.lr, c.weight_decay, c.momentum, c.grad_clip, c.epochs, c.synthetic_size) == (
        1e-5,
        1e-5,
        0.999,
        1.0,
        300,
        4000,
    )


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ValueError, match="unknown keys \\['lrr'\\].*valid keys"):
        HFMTrainConfig.from_dict({"lrr": 1})
    with pytest.raises(ValueError, match="validation_fraction"):
        HFMTrainConfig(validation_fraction=1.0)


def test_split_disjoint_seeded() -> None:
    tr, va = split_train_validation(50, 0.2, seed=3)
    assert len(va) == 10 and len(tr) == 40 and not set(tr) & set(va)
    tr2, va2 = split_train_validation(50, 0.2, seed=3)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    assert len(split_train_validation(5, 0.0, 0)[1]) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_auroc_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(500) < 0.3
    scores = np.round(rng.normal(size=500) + labels, 1)  # with ties
    expected = roc_auc_score(labels, scores)
    assert abs(binary_auroc(torch.from_numpy(scores), torch.from_numpy(labels)) - expected) < 1e-12
    assert math.isnan(binary_auroc(torch.ones(4), torch.zeros(4)))


def _toy_data(n: int = 24, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 'members': channel 0 sees the mask, channel 1 is noise."""
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(n, 1, size, size, dtype=torch.bool)
    for i in range(n):
        y, x = torch.randint(0, size - 10, (2,), generator=g).tolist()
        masks[i, 0, y : y + 8, x : x + 8] = True
    noise = torch.randn(n, 2, size, size, generator=g)
    inputs = noise * 0.5
    inputs[:, 0] += 3 * masks[:, 0].float()
    inputs[:, 1] = torch.randn(n, size, size, generator=g) * 2
    return inputs.half(), masks


def test_trainer_learns_and_selects_best() -> None:
    inputs, masks = _toy_data()
    config = HFMTrainConfig(lr=1e-3, momentum=0.9, batch_size=4, unet_depth=2, unet_width=8, seed=0)
    trainer = HFMTrainer(2, config)
    tr, va = split_train_validation(len(inputs), 0.25, seed=0)
    records = [trainer.run_epoch(inputs, masks, tr, va, progress=False) for _ in range(4)]
    assert [r.epoch for r in records] == [0, 1, 2, 3] and trainer.epoch == 4
    assert records[-1].train_loss < records[0].train_loss
    best = max(records, key=lambda r: r.validation.pixel_auroc)
    assert trainer.best_epoch == best.epoch and best.is_best
    model = trainer.best_model()
    assert not model.training
    assert model is not trainer.model
    # The trained fusion beats the plain mean, which is diluted by the noise channel.
    assert best.validation.pixel_auroc > best.validation.pixel_auroc_mean


def test_trainer_is_reproducible() -> None:
    inputs, masks = _toy_data(n=8, size=16)
    config = HFMTrainConfig(lr=1e-3, batch_size=3, unet_depth=1, unet_width=4, seed=5)
    tr, va = split_train_validation(8, 0.25, seed=5)
    states = []
    for _ in range(2):
        trainer = HFMTrainer(2, config)
        trainer.run_epoch(inputs, masks, tr, va, progress=False)
        states.append(trainer.model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_validation_at_full_size_with_labels() -> None:
    """Training at a low work size; validation AUROC against full-size labels after upsampling."""
    inputs, masks = _toy_data(n=8, size=32)
    low_inputs = torch.nn.functional.interpolate(inputs.float(), size=(16, 16), mode="area").half()
    low_masks = torch.nn.functional.interpolate(masks.float(), size=(16, 16), mode="area").half()
    config = HFMTrainConfig(lr=1e-3, batch_size=4, unet_depth=2, unet_width=4, work_size=16, seed=0)
    trainer = HFMTrainer(2, config)
    record = trainer.run_epoch(
        low_inputs, low_masks, np.arange(6), np.arange(6, 8), progress=False, labels=masks
    )
    assert record.validation is not None and 0.5 < record.validation.pixel_auroc <= 1.0
    with torch.no_grad():
        assert trainer.best_model()(inputs[:1].float()).shape == (1, 1, 32, 32)
