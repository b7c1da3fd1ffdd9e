"""Training loss of the Heatmap Fusion Module: SSIM loss + lambda * soft clDice.

How maps are brought into SSIM's data range: the UNet gives unbounded scores (logits); the loss compares
``sigmoid(logits)`` (in [0, 1]) with the binary target mask (in {0, 1}) using ``data_range=1``. The fused
anomaly map used for evaluation is the raw output (a monotone function of the sigmoid).

soft clDice follows Shit et al., "clDice - a Novel Topology-Preserving Loss Function for Tubular Structure
Segmentation", CVPR 2021: the soft skeleton is built by iterated soft erosion (min pooling, written as
``-maxpool(-x)``) and soft opening; topological precision ``Tprec = sum(S_pred * V_true) / sum(S_pred)``,
sensitivity ``Tsens = sum(S_true * V_pred) / sum(S_true)``, ``clDice = 2 Tprec Tsens / (Tprec + Tsens)``, loss
``1 - clDice``. Sums are taken per sample (then averaged over the batch) with additive smoothing ``eps``, so an
empty target mask (a regular synthetic image) gives ``Tsens = 1`` and a ``Tprec`` that penalises any predicted
skeleton.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
from torch import Tensor, nn

__all__ = [
    "FusionLoss",
    "cldice_loss",
    "soft_erode",
    "soft_dilate",
    "soft_open",
    "soft_skeleton",
    "ssim_loss",
]


def _check_pair(pred: Tensor, target: Tensor, name: str) -> None:
    if pred.ndim != 4 or pred.shape != target.shape:
        raise ValueError(
            f"{name}: expected pred and target of the same shape (B, C, H, W), got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )


def ssim_loss(pred: Tensor, target: Tensor, win_size: int = 11) -> Tensor:
    """``1 - SSIM(pred, target)`` with ``data_range=1`` (pytorch-msssim), averaged over the batch.

    Args:
        pred: Maps in [0, 1], ``(B, C, H, W)``; H and W must be at least ``win_size``.
        target: Maps in [0, 1] of the same shape (binary masks here).
        win_size: Side of SSIM's gaussian window (odd).

    Returns:
        Scalar loss in [0, 2]; 0 when ``pred == target``.
    """
    _check_pair(pred, target, "ssim_loss")
    return 1.0 - ssim(pred, target.to(pred.dtype), data_range=1.0, size_average=True, win_size=win_size)


def soft_erode(x: Tensor) -> Tensor:
    """Soft (grey-level) erosion with a 3x3 cross: min pooling written as ``-maxpool(-x)``. ``(B, C, H, W)``."""
    vertical = -F.max_pool2d(-x, kernel_size=(3, 1), stride=1, padding=(1, 0))
    horizontal = -F.max_pool2d(-x, kernel_size=(1, 3), stride=1, padding=(0, 1))
    return torch.minimum(vertical, horizontal)


def soft_dilate(x: Tensor) -> Tensor:
    """Soft dilation: 3x3 max pooling. ``(B, C, H, W)``."""
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def soft_open(x: Tensor) -> Tensor:
    """Soft morphological opening: dilation of the erosion. ``(B, C, H, W)``."""
    return soft_dilate(soft_erode(x))


def soft_skeleton(x: Tensor, iterations: int = 10) -> Tensor:
    """Soft skeleton of maps in [0, 1] (Shit et al. 2021, algorithm 1).

    Args:
        x: Maps in [0, 1], ``(B, C, H, W)``.
        iterations: Number of erosion steps; should reach about half the widest structure's width.

    Returns:
        Soft skeleton in [0, 1], ``(B, C, H, W)``.
    """
    if iterations < 0:
        raise ValueError(f"soft_skeleton: iterations must be >= 0, got {iterations}")
    skeleton = F.relu(x - soft_open(x))
    for _ in range(iterations):
        x = soft_erode(x)
        delta = F.relu(x - soft_open(x))
        skeleton = skeleton + F.relu(delta - skeleton * delta)
    return skeleton


def cldice_loss(pred: Tensor, target: Tensor, iterations: int = 10, eps: float = 1.0) -> Tensor:
    """Soft clDice loss ``1 - clDice`` between a soft prediction and a (binary) target, batch mean.

    Args:
        pred: Soft prediction in [0, 1], ``(B, C, H, W)``.
        target: Target in [0, 1] of the same shape.
        iterations: Soft-skeleton iterations.
        eps: Additive smoothing in the precision and sensitivity ratios.

    Returns:
        Scalar loss in [0, 1].
    """
    _check_pair(pred, target, "cldice_loss")
    target = target.to(pred.dtype)
    skel_pred = soft_skeleton(pred, iterations)
    skel_true = soft_skeleton(target, iterations)
    dims = (1, 2, 3)
    t_prec = ((skel_pred * target).sum(dims) + eps) / (skel_pred.sum(dims) + eps)  # (B,)
    t_sens = ((skel_true * pred).sum(dims) + eps) / (skel_true.sum(dims) + eps)  # (B,)
    cl_dice = 2.0 * t_prec * t_sens / (t_prec + t_sens)
    return (1.0 - cl_dice).mean()


class FusionLoss(nn.Module):
    """``ssim_weight * SSIM + cldice_weight * clDice + bce_weight * BCE`` of ``sigmoid(logits)`` vs the mask.

    The paper's loss is SSIM + lambda * clDice (``ssim_weight = 1``, ``bce_weight = 0``). The optional pixel
    binary cross-entropy (on the logits) is a proper scoring rule, as DRAEM / DeSTSeg add to their
    segmentation losses; it is a named option, off by default.

    Args:
        cldice_weight: The lambda weighting soft clDice (0 disables it).
        cldice_iterations: Soft-skeleton iterations.
        cldice_eps: Smoothing of clDice's ratios.
        ssim_win_size: SSIM window size.
        ssim_weight: Weight of the SSIM loss (0 disables it).
        bce_weight: Weight of the binary cross-entropy term (0 disables it).
    """

    def __init__(
        self,
        cldice_weight: float = 1.0,
        cldice_iterations: int = 10,
        cldice_eps: float = 1.0,
        ssim_win_size: int = 11,
        ssim_weight: float = 1.0,
        bce_weight: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("cldice_weight", cldice_weight),
            ("ssim_weight", ssim_weight),
            ("bce_weight", bce_weight),
        ):
            if value < 0:
                raise ValueError(f"FusionLoss: {name} must be >= 0, got {value}")
        if cldice_weight + ssim_weight + bce_weight <= 0:
            raise ValueError("FusionLoss: at least one loss weight must be > 0")
        self.cldice_weight = cldice_weight
        self.cldice_iterations = cldice_iterations
        self.cldice_eps = cldice_eps
        self.ssim_win_size = ssim_win_size
        self.ssim_weight = ssim_weight
        self.bce_weight = bce_weight

    def forward(self, logits: Tensor, mask: Tensor) -> Tensor:
        """Loss of a batch.

        Args:
            logits: UNet output, ``(B, 1, H, W)``.
            mask: Target in [0, 1] (binary, or soft after downsampling), ``(B, 1, H, W)``.

        Returns:
            Scalar loss.
        """
        prob = torch.sigmoid(logits)
        loss = logits.new_zeros(())
        if self.ssim_weight > 0:
            loss = loss + self.ssim_weight * ssim_loss(prob, mask, win_size=self.ssim_win_size)
        if self.cldice_weight > 0:
            loss = loss + self.cldice_weight * cldice_loss(
                prob, mask, self.cldice_iterations, self.cldice_eps
            )
        if self.bce_weight > 0:
            loss = loss + self.bce_weight * F.binary_cross_entropy_with_logits(logits, mask.to(logits.dtype))
        return loss
