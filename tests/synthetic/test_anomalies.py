"""The anomaly mixture: every kind changes only the masked pixels, is seeded, and shows in ssa-preview."""

from __future__ import annotations

import pytest
import torch

from visionad_multicore.synthetic.anomalies import (
    ANOMALY_KINDS,
    PRESETS,
    AnomalyMix,
    apply_anomaly,
    resolve_mix,
)
from visionad_multicore.synthetic.dataset import SyntheticAnomalySet
from visionad_multicore.synthetic.masks import SSAConfig, generate_masks


def _image_and_mask() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 48, 48, generator=g) * 0.6 + 0.2
    donor = torch.rand(3, 48, 48, generator=g)
    mask = torch.zeros(1, 48, 48)
    mask[:, 10:30, 12:40] = 1
    return image, donor, mask


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
@pytest.mark.parametrize("preset", ["mixed", "subtle"])
def test_every_kind_changes_only_the_mask_and_is_seeded(kind: str, preset: str) -> None:
    image, donor, mask = _image_and_mask()
    mix = PRESETS[preset]
    out, used = apply_anomaly(image, mask, mix, torch.Generator().manual_seed(3), donor, kind=kind)
    assert used == kind and out.shape == image.shape
    assert torch.equal(out * (1 - mask), image * (1 - mask))  # outside the mask: untouched
    assert (out - image).abs().sum() > 1.0  # inside: changed
    assert 0 <= out.min() and out.max() <= 1
    again, _ = apply_anomaly(image, mask, mix, torch.Generator().manual_seed(3), donor, kind=kind)
    other, _ = apply_anomaly(image, mask, mix, torch.Generator().manual_seed(4), donor, kind=kind)
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_subtle_is_weaker_than_mixed_on_average() -> None:
    image, donor, mask = _image_and_mask()
    change = {}
    for preset in ("mixed", "subtle"):
        total = 0.0
        for seed in range(40):
            out, _ = apply_anomaly(image, mask, PRESETS[preset], torch.Generator().manual_seed(seed), donor)
            total += float((out - image).abs().sum())
        change[preset] = total
    assert change["subtle"] < 0.85 * change["mixed"]


def test_mixture_weights_pick_kinds_in_proportion() -> None:
    mix = AnomalyMix(weights={"blur": 3.0, "colour": 1.0})
    image, donor, mask = _image_and_mask()
    kinds = [apply_anomaly(image, mask, mix, torch.Generator().manual_seed(s), donor)[1] for s in range(200)]
    assert set(kinds) == {"blur", "colour"} and 120 < kinds.count("blur") < 175


def test_mix_errors_and_round_trip() -> None:
    with pytest.raises(ValueError, match="unknown anomaly kinds \\['rust'\\]"):
        AnomalyMix(weights={"rust": 1.0})
    with pytest.raises(ValueError, match="unknown keys"):
        AnomalyMix.from_dict({"noise_sdt": [0.1, 0.2]})
    with pytest.raises(ValueError, match="presets: paper, mixed, subtle"):
        resolve_mix("strong")
    assert AnomalyMix.from_dict(PRESETS["subtle"].to_dict()) == PRESETS["subtle"]
    assert PRESETS["paper"].weights == {
        "noise": 1.0,
        "cutpaste": 0.0,
        "texture": 0.0,
        "blur": 0.0,
        "colour": 0.0,
    }


def test_synthetic_set_with_a_mix_is_seeded_and_keeps_clean_pixels() -> None:
    g = torch.Generator().manual_seed(1)
    images = (torch.rand(3, 3, 32, 32, generator=g) - 0.45) / 0.22
    masks = generate_masks(
        SSAConfig(
            size=32, buckets=(1, 2, 4), masks_per_bucket=3, multi_counts=(2,), masks_per_multi=2, n_empty=2
        ),
        seed=0,
        progress=False,
    )
    a = SyntheticAnomalySet(images, [0.45] * 3, [0.22] * 3, masks, size=10, seed=2, mix="mixed")
    b = SyntheticAnomalySet(images, [0.45] * 3, [0.22] * 3, masks, size=10, seed=2, mix="mixed")
    for i in range(10):
        (x, m), (y, _) = a[i], b[i]
        assert torch.equal(x, y)
        clean = images[a.image_index[i]]
        assert torch.equal(x * (1 - m), clean * (1 - m))
    assert (
        a.fingerprint()
        != SyntheticAnomalySet(images, [0.45] * 3, [0.22] * 3, masks, size=10, seed=2).fingerprint()
    )
