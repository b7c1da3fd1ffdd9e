"""HFM losses: SSIM loss, soft skeleton and soft clDice."""

from __future__ import annotations

import hypothesis.strategies as st
import torch
from hypothesis import given, settings

from visionad_multicore.fusion.losses import FusionLoss, cldice_loss, soft_erode, soft_skeleton, ssim_loss


def _random_mask(seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, 1, size, size)
    y, x = torch.randint(0, size - 12, (2,), generator=g).tolist()
    h, w = torch.randint(3, 12, (2,), generator=g).tolist()
    mask[..., y : y + h, x : x + w] = 1.0
    return mask


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_ssim_loss_of_identical_maps_is_zero(seed: int) -> None:
    x = torch.rand(2, 1, 24, 24, generator=torch.Generator().manual_seed(seed))
    assert abs(float(ssim_loss(x, x))) < 1e-5


def test_ssim_loss_positive_for_different_maps() -> None:
    g = torch.Generator().manual_seed(0)
    assert (
        float(ssim_loss(torch.rand(1, 1, 24, 24, generator=g), torch.rand(1, 1, 24, 24, generator=g))) > 0.5
    )


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_cldice_of_identical_masks_is_about_zero(seed: int) -> None:
    m = _random_mask(seed)
    assert float(cldice_loss(m, m)) < 1e-6


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_cldice_bounded_and_symmetric(seed: int) -> None:
    a, b = _random_mask(seed), _random_mask(seed + 1)
    loss = float(cldice_loss(a, b))
    assert 0.0 <= loss <= 1.0
    assert abs(loss - float(cldice_loss(b, a))) < 1e-6


def test_cldice_of_disjoint_masks_is_high() -> None:
    a, b = torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)
    a[..., 2:10, 2:10] = 1
    b[..., 20:30, 20:30] = 1
    assert float(cldice_loss(a, b, eps=1e-3)) > 0.99


def test_empty_target_penalises_predicted_skeleton() -> None:
    empty = torch.zeros(1, 1, 32, 32)
    blob = _random_mask(3)
    assert float(cldice_loss(empty, empty)) < 1e-6
    assert float(cldice_loss(blob, empty)) > 0.5


def test_soft_skeleton_of_a_line_is_the_line() -> None:
    line = torch.zeros(1, 1, 16, 16)
    line[..., 8, 2:14] = 1.0
    torch.testing.assert_close(soft_skeleton(line, iterations=5), line)


def test_soft_skeleton_is_thinner_and_inside() -> None:
    m = torch.zeros(1, 1, 32, 32)
    m[..., 4:20, 6:26] = 1.0
    skel = soft_skeleton(m, iterations=10)
    assert 0 < skel.sum() < m.sum() / 4
    assert (skel * (1 - m)).sum() == 0
    assert soft_erode(m).sum() < m.sum()


def test_fusion_loss_gradients_flow_and_respects_weight() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 32, 32, generator=g, requires_grad=True)
    mask = torch.cat([_random_mask(1), _random_mask(2)])
    loss = FusionLoss(cldice_weight=0.5)(logits, mask)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    prob = torch.sigmoid(logits.detach())
    expected = ssim_loss(prob, mask) + 0.5 * cldice_loss(prob, mask)
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(FusionLoss(cldice_weight=0.0)(logits.detach(), mask), ssim_loss(prob, mask))


def test_fusion_loss_lower_for_matching_logits() -> None:
    mask = _random_mask(5)
    good = FusionLoss()(mask * 12 - 6, mask)
    bad = FusionLoss()((1 - mask) * 12 - 6, mask)
    assert float(good) < 0.05 < float(bad)
