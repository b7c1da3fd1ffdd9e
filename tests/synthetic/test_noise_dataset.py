"""Tests of the SSA noise, the synthetic set and the bank / fusion split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visionad_multicore.synthetic.dataset import SyntheticAnomalySet, split_bank_fusion
from visionad_multicore.synthetic.masks import SSAConfig, generate_masks
from visionad_multicore.synthetic.noise import add_noise

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _mask(h: int = 32, w: int = 32) -> torch.Tensor:
    m = torch.zeros(2, 1, h, w)
    m[0, :, 4:12, 6:20] = 1
    m[1, :, 20:30, 2:9] = 1
    return m


def test_noise_only_inside_mask_and_clipped() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=gen)
    masks = _mask()
    out = add_noise(images, masks, std=0.5, generator=torch.Generator().manual_seed(1))
    inside = masks.bool().expand_as(images)
    assert torch.equal(out[~inside], images[~inside])
    assert not torch.equal(out[inside], images[inside])
    assert out.min() >= 0 and out.max() <= 1
    # grey by default: every channel moved by the same amount wherever clipping did not bite
    delta = out - images
    unclipped = inside & (out > 0) & (out < 1)
    both = unclipped[:, 0] & unclipped[:, 1] & unclipped[:, 2]
    assert torch.allclose(delta[:, 0][both], delta[:, 1][both], atol=1e-6)
    per = add_noise(images, masks, std=0.5, per_channel=True, generator=torch.Generator().manual_seed(1))
    d = per - images
    assert not torch.allclose(d[:, 0][both], d[:, 1][both])


def test_noise_std_matches_without_clipping() -> None:
    images = torch.full((1, 3, 128, 128), 0.5)
    masks = torch.ones(1, 1, 128, 128)
    out = add_noise(images, masks, std=0.05, generator=torch.Generator().manual_seed(2))
    delta = (out - images)[:, 0]
    assert abs(delta.mean().item()) < 0.002 and abs(delta.std().item() - 0.05) < 0.002


def test_noise_shape_errors() -> None:
    with pytest.raises(ValueError, match="do not match"):
        add_noise(torch.rand(2, 3, 8, 8), torch.ones(2, 1, 4, 4))
    with pytest.raises(ValueError, match="std"):
        add_noise(torch.rand(1, 3, 8, 8), torch.ones(1, 1, 8, 8), std=-1)


@settings(max_examples=20, deadline=None)
@given(std=st.floats(0.0, 2.0), seed=st.integers(0, 1000), per_channel=st.booleans())
def test_property_noise_in_range_and_masked(std: float, seed: int, per_channel: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, 16, 16, generator=g)
    masks = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()
    out = add_noise(images, masks, std, per_channel, torch.Generator().manual_seed(seed))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out * (1 - masks), images * (1 - masks))


def test_split_bank_fusion() -> None:
    bank, fusion = split_bank_fusion(48, 0.8, seed=0)
    assert len(bank) == 38 and len(fusion) == 10
    assert np.array_equal(np.sort(np.concatenate([bank, fusion])), np.arange(48))
    b2, f2 = split_bank_fusion(48, 0.8, seed=0)
    assert np.array_equal(bank, b2) and np.array_equal(fusion, f2)
    assert not np.array_equal(fusion, split_bank_fusion(48, 0.8, seed=1)[1])
    assert [len(x) for x in split_bank_fusion(2, 0.8)] == [1, 1]
    with pytest.raises(ValueError, match="bank_share"):
        split_bank_fusion(10, 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        split_bank_fusion(1)


@pytest.fixture(scope="module")
def small_set() -> tuple[torch.Tensor, SyntheticAnomalySet]:
    g = torch.Generator().manual_seed(0)
    images01 = torch.rand(5, 3, 32, 32, generator=g)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    clean = (images01 - mean) / std
    cfg = SSAConfig(
        size=32, buckets=(1, 2, 4), masks_per_bucket=4, multi_counts=(2,), masks_per_multi=2, n_empty=2
    )
    return clean, SyntheticAnomalySet(clean, MEAN, STD, generate_masks(cfg, seed=0), size=30, seed=4)


def test_dataset_items_noise_inside_mask_only(small_set: tuple[torch.Tensor, SyntheticAnomalySet]) -> None:
    clean, ds = small_set
    assert len(ds) == 30
    n_noised = 0
    for i in range(len(ds)):
        image, mask = ds[i]
        assert image.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        source = clean[ds.image_index[i]]
        outside = ~mask.bool().expand_as(image)
        assert torch.equal(image[outside], source[outside])
        if mask.any():
            n_noised += 1
            assert not torch.allclose(image[~outside], source[~outside])
            # back in [0, 1] after unnormalising: the clip happened in pixel space
            pixels = image * ds.std + ds.mean
            assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert n_noised > 0


def test_dataset_deterministic_and_balanced(small_set: tuple[torch.Tensor, SyntheticAnomalySet]) -> None:
    clean, ds = small_set
    again = SyntheticAnomalySet(clean, MEAN, STD, generate_masks(ds_config(ds), seed=0), size=30, seed=4)
    for i in (0, 7, 29):
        assert torch.equal(ds[i][0], again[i][0]) and torch.equal(ds[i][1], again[i][1])
    assert torch.equal(ds[5][0], ds[5][0])  # same item on a second read (noise seeded per index)
    uses = np.bincount(ds.mask_index, minlength=len(ds.masks))
    assert uses.max() - uses.min() <= 1
    img_uses = np.bincount(ds.image_index, minlength=5)
    assert img_uses.max() - img_uses.min() <= 1
    other = SyntheticAnomalySet(clean, MEAN, STD, generate_masks(ds_config(ds), seed=0), size=30, seed=5)
    assert not np.array_equal(other.mask_index, ds.mask_index)
    images, masks = ds.tensors([0, 1, 2])
    assert images.shape == (3, 3, 32, 32) and masks.shape == (3, 1, 32, 32)


def ds_config(ds: SyntheticAnomalySet) -> SSAConfig:
    return SSAConfig(
        size=32, buckets=(1, 2, 4), masks_per_bucket=4, multi_counts=(2,), masks_per_multi=2, n_empty=2
    )


def test_dataset_resizes_masks_nearest() -> None:
    clean = torch.zeros(2, 3, 16, 16)
    cfg = SSAConfig(size=32, buckets=(1,), masks_per_bucket=3, multi_counts=(), n_empty=0)
    ms = generate_masks(cfg, seed=0)
    ds = SyntheticAnomalySet(clean, MEAN, STD, ms, size=3, seed=0)
    assert ds.masks.shape == (3, 16, 16)
    expected = torch.from_numpy(ms.masks[:, ::2, ::2])  # nearest 32 -> 16 takes every second pixel
    assert torch.equal(ds.masks, expected)


def test_dataset_argument_errors() -> None:
    ms = generate_masks(SSAConfig(size=16, buckets=(1,), masks_per_bucket=1, multi_counts=(), n_empty=0), 0)
    with pytest.raises(ValueError, match="mean and std"):
        SyntheticAnomalySet(torch.zeros(1, 3, 16, 16), (0.5,), (0.5,), ms)
    with pytest.raises(ValueError, match="clean_images"):
        SyntheticAnomalySet(torch.zeros(3, 16, 16), MEAN, STD, ms)
    with pytest.raises(IndexError):
        SyntheticAnomalySet(torch.zeros(1, 3, 16, 16), MEAN, STD, ms, size=2)[2]
