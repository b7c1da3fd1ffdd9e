"""Training of the Heatmap Fusion Module, one epoch at a time, with checkpoint selection on a held-out split
of the synthetic set.

The trainer sees only tensors of normalised member heatmaps made from synthetic anomalies and their masks;
it never sees a test image. The checkpoint kept for inference is the one with the best validation pixel AUROC
(or the lowest validation loss, ``selection_metric="loss"``) on the synthetic validation split.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from visionad_multicore.fusion.losses import FusionLoss
from visionad_multicore.fusion.unet import UNet

__all__ = [
    "EpochRecord",
    "HFMTrainConfig",
    "HFMTrainer",
    "ValidationResult",
    "binary_auroc",
    "make_optimizer",
    "split_train_validation",
    "train_one_epoch",
    "validate",
]

logger = logging.getLogger(__name__)

SELECTION_METRICS = ("pauc", "loss")


@dataclass(frozen=True)
class HFMTrainConfig:
    """Settings of the Heatmap Fusion Module and its training. Defaults are the paper preset.

    Attributes:
        lr: RMSprop learning rate (paper: 1e-5).
        weight_decay: RMSprop weight decay (paper: 1e-5).
        momentum: RMSprop momentum (paper: 0.999).
        grad_clip: Max gradient norm (paper: 1).
        epochs: Number of epochs (paper: 300). The VisionAD wrapper takes its epochs from the run config.
        synthetic_size: Number of synthetic images made for the HFM (paper: 4000).
        validation_fraction: Share of the synthetic set held out to pick the checkpoint.
        batch_size: HFM training batch size.
        cldice_weight: lambda in ``SSIM loss + lambda * clDice loss``.
        cldice_iterations: Soft-skeleton iterations of clDice.
        unet_depth: Number of UNet downsamplings.
        unet_width: Channels of the UNet's first level.
        residual_mean: Output = channel mean of the inputs + UNet correction.
        work_size: Resolution the UNet trains and runs at (``None``: the heatmaps' own, the paper's setting;
            e.g. 64 on a CPU). Masks are area-downsampled (soft) for the loss; validation is at full size.
        flip_augment: Random horizontal / vertical flips of training batches (same flip for maps and mask).
        selection_metric: ``"pauc"`` (validation pixel AUROC, higher is better) or ``"loss"`` (lower is better).
        seed: Seed of the UNet initialisation, the train / validation split and the batch order.
    """

    lr: float = 1e-5
    weight_decay: float = 1e-5
    momentum: float = 0.999
    grad_clip: float = 1.0
    epochs: int = 300
    synthetic_size: int = 4000
    validation_fraction: float = 0.1
    batch_size: int = 8
    cldice_weight: float = 0.25
    cldice_iterations: int = 10
    unet_depth: int = 4
    unet_width: int = 32
    residual_mean: bool = True
    work_size: int | None = None
    flip_augment: bool = True
    selection_metric: str = "pauc"
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("lr", "epochs", "synthetic_size", "batch_size", "unet_depth", "unet_width")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"HFMTrainConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "momentum", "grad_clip", "cldice_weight", "cldice_iterations"):
            if getattr(self, name) < 0:
                raise ValueError(f"HFMTrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.work_size is not None and self.work_size < 2**self.unet_depth:
            raise ValueError(
                f"HFMTrainConfig.work_size must be None or >= 2 ** unet_depth = {2**self.unet_depth}, got {self.work_size}"
            )
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"HFMTrainConfig.validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )
        if self.selection_metric not in SELECTION_METRICS:
            raise ValueError(
                f"HFMTrainConfig.selection_metric must be one of {SELECTION_METRICS}, got {self.selection_metric!r}"
            )

    @classmethod
    def paper(cls, **overrides: Any) -> HFMTrainConfig:
        """The paper's settings (RMSprop 1e-5, wd 1e-5, momentum 0.999, clip 1, 300 epochs, 4000 synthetic)."""
        return cls.from_dict(overrides)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> HFMTrainConfig:
        """Build from a mapping; unknown keys are an error that lists the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(f"HFMTrainConfig: unknown keys {unknown}; valid keys are {valid}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the settings (JSON-serialisable)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ValidationResult:
    """Validation of the HFM on the synthetic validation split.

    Attributes:
        loss: Mean loss over validation batches.
        pixel_auroc: Pixel AUROC of the fused map against the synthetic masks (nan if one class only).
        pixel_auroc_mean: Same for the plain mean of the input maps (the ``ensemble_mean`` baseline).
    """

    loss: float
    pixel_auroc: float
    pixel_auroc_mean: float


@dataclass(frozen=True)
class EpochRecord:
    """What one HFM epoch gave."""

    epoch: int
    train_loss: float
    validation: ValidationResult | None
    is_best: bool


def split_train_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into train and validation indices (both sorted, disjoint).

    At least one validation item when ``fraction > 0`` and ``n >= 2``; none when ``fraction == 0``.
    """
    if n < 1:
        raise ValueError(f"split_train_validation: need at least one item, got n={n}")
    n_val = 0 if fraction <= 0 else min(n - 1, max(1, round(n * fraction)))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def binary_auroc(scores: Tensor, labels: Tensor) -> float:
    """Exact ROC AUC (ties handled like scikit-learn) of flat ``scores`` against boolean ``labels``.

    Works in torch so that tens of millions of pixels stay cheap; returns nan if only one class is present.
    """
    scores = scores.reshape(-1).double()
    labels = labels.reshape(-1).bool()
    n_pos = int(labels.sum())
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = torch.argsort(scores, descending=True)
    sorted_scores = scores[order]
    sorted_labels = labels[order].double()
    tps = torch.cumsum(sorted_labels, 0)
    fps = torch.arange(1, scores.numel() + 1, dtype=torch.float64, device=scores.device) - tps
    # Keep the last position of each run of tied scores: one ROC point per distinct threshold.
    last = torch.ones_like(sorted_labels, dtype=torch.bool)
    last[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    tpr = torch.cat([tps.new_zeros(1), tps[last] / n_pos])
    fpr = torch.cat([fps.new_zeros(1), fps[last] / n_neg])
    return float(torch.trapezoid(tpr, fpr))


def make_optimizer(model: nn.Module, config: HFMTrainConfig) -> torch.optim.Optimizer:
    """RMSprop with the config's learning rate, weight decay and momentum."""
    return torch.optim.RMSprop(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, momentum=config.momentum
    )


def _batch(inputs: Tensor, masks: Tensor, idx: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    x = inputs[idx].to(device=device, dtype=torch.float32)  # (b, M, H, W)
    y = masks[idx].to(device=device, dtype=torch.float32)  # (b, 1, H, W)
    return x, y


def _random_flips(x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    flips = torch.rand((x.shape[0], 2), generator=generator) < 0.5  # (b, 2): horizontal, vertical
    for column, dim in ((0, -1), (1, -2)):
        chosen = flips[:, column].to(x.device)
        if chosen.any():
            x = torch.where(chosen[:, None, None, None], x.flip(dim), x)
            y = torch.where(chosen[:, None, None, None], y.flip(dim), y)
    return x, y


def train_one_epoch(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: Tensor,
    masks: Tensor,
    indices: np.ndarray,
    batch_size: int,
    grad_clip: float,
    generator: torch.Generator,
    flip_augment: bool = True,
    progress: bool = True,
) -> float:
    """Train for one pass over ``indices`` in a seeded random order.

    Args:
        model: The UNet (put in train mode here).
        loss_fn: Loss on ``(logits (b, 1, H, W), mask (b, 1, H, W))``.
        optimizer: Optimiser of ``model``'s parameters.
        inputs: Normalised member heatmaps, ``(S, M, H, W)`` (any float dtype; cast to float32 per batch).
        masks: Synthetic masks, ``(S, 1, H, W)`` (bool or float).
        indices: Training item indices into ``inputs``.
        batch_size: Items per step.
        grad_clip: Max total gradient norm (0 disables clipping).
        generator: Drives the batch order and flips.
        flip_augment: Random flips of each item.
        progress: Show a tqdm bar.

    Returns:
        Mean training loss over the epoch's batches.
    """
    if len(indices) == 0:
        raise ValueError("train_one_epoch: no training items")
    device = next(model.parameters()).device
    model.train()
    order = torch.as_tensor(indices)[torch.randperm(len(indices), generator=generator)]
    losses = []
    for start in tqdm(range(0, len(order), batch_size), desc="HFM train", leave=False, disable=not progress):
        x, y = _batch(inputs, masks, order[start : start + batch_size], device)
        if flip_augment:
            x, y = _random_flips(x, y, generator)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"train_one_epoch: non-finite HFM loss {loss.item()}")
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses))


@torch.no_grad()
def validate(
    model: nn.Module,
    loss_fn: nn.Module,
    inputs: Tensor,
    masks: Tensor,
    indices: np.ndarray,
    batch_size: int,
    progress: bool = True,
    labels: Tensor | None = None,
) -> ValidationResult:
    """Loss and pixel AUROC of the model (eval mode) and of the channel mean on ``indices``.

    Args:
        model: The UNet.
        loss_fn: Same loss as training.
        inputs: ``(S, M, h, w)`` normalised member heatmaps (as trained on).
        masks: ``(S, 1, h, w)`` targets of the loss.
        indices: Validation item indices.
        batch_size: Items per forward pass.
        progress: Show a tqdm bar.
        labels: Optional full-size binary masks ``(S, 1, H, W)`` for the AUROC; the fused map (and the mean)
            are bilinearly upsampled to ``(H, W)`` as at inference. Default: ``masks > 0.5``.
    """
    if len(indices) == 0:
        raise ValueError("validate: no validation items")
    device = next(model.parameters()).device
    model.eval()
    idx = torch.as_tensor(indices)
    label_maps = (masks[idx] > 0.5) if labels is None else labels[idx].bool()  # (V, 1, H, W)
    full_size = tuple(label_maps.shape[-2:])
    losses, weights, fused, means = [], [], [], []
    for start in tqdm(range(0, len(idx), batch_size), desc="HFM validate", leave=False, disable=not progress):
        x, y = _batch(inputs, masks, idx[start : start + batch_size], device)
        out = model(x)
        losses.append(loss_fn(out, y).item())
        weights.append(x.shape[0])
        mean = x.mean(dim=1, keepdim=True)
        if tuple(out.shape[-2:]) != full_size:
            out = F.interpolate(out, size=full_size, mode="bilinear", align_corners=False)
            mean = F.interpolate(mean, size=full_size, mode="bilinear", align_corners=False)
        fused.append(out.float().cpu())
        means.append(mean.float().cpu())
    return ValidationResult(
        loss=float(np.average(losses, weights=weights)),
        pixel_auroc=binary_auroc(torch.cat(fused), label_maps),
        pixel_auroc_mean=binary_auroc(torch.cat(means), label_maps),
    )


class HFMTrainer:
    """Owns the UNet, its optimiser, the epoch counter and the best checkpoint.

    Args:
        in_channels: Number of ensemble members.
        config: Training settings.
        device: Where the UNet lives.
    """

    def __init__(self, in_channels: int, config: HFMTrainConfig, device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.model = UNet(
            in_channels,
            config.unet_width,
            config.unet_depth,
            config.residual_mean,
            seed=config.seed,
            work_size=config.work_size,
        ).to(self.device)
        self.loss_fn = FusionLoss(config.cldice_weight, config.cldice_iterations)
        self.optimizer = make_optimizer(self.model, config)
        self.epoch = 0
        self.history: list[EpochRecord] = []
        self.best_epoch: int | None = None
        self.best_value: float | None = None
        self.best_state: dict[str, Tensor] | None = None

    def _is_better(self, validation: ValidationResult) -> bool:
        if self.config.selection_metric == "pauc":
            value, sign = validation.pixel_auroc, 1.0
        else:
            value, sign = validation.loss, -1.0
        if math.isnan(value):
            return self.best_value is None
        if self.best_value is None or math.isnan(self.best_value) or sign * (value - self.best_value) > 0:
            self.best_value = value
            return True
        return False

    def run_epoch(
        self,
        inputs: Tensor,
        masks: Tensor,
        train_indices: np.ndarray,
        validation_indices: np.ndarray,
        progress: bool = True,
        labels: Tensor | None = None,
    ) -> EpochRecord:
        """Train one epoch, validate, and keep a copy of the weights if they are the best so far.

        Args:
            inputs: ``(S, M, h, w)`` normalised member heatmaps.
            masks: ``(S, 1, h, w)`` loss targets.
            train_indices: Items trained on.
            validation_indices: Items validated on (none: the latest weights count as the best).
            progress: Show tqdm bars.
            labels: Optional full-size binary masks ``(S, 1, H, W)`` for the validation AUROC.
        """
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + self.epoch)
        train_loss = train_one_epoch(
            self.model,
            self.loss_fn,
            self.optimizer,
            inputs,
            masks,
            train_indices,
            self.config.batch_size,
            self.config.grad_clip,
            generator,
            self.config.flip_augment,
            progress,
        )
        validation = None
        if len(validation_indices) > 0:
            validation = validate(
                self.model,
                self.loss_fn,
                inputs,
                masks,
                validation_indices,
                self.config.batch_size,
                progress,
                labels,
            )
        is_best = validation is None or self._is_better(validation)
        if is_best:
            self.best_epoch = self.epoch
            self.best_state = copy.deepcopy(self.model.state_dict())
        record = EpochRecord(self.epoch, train_loss, validation, is_best)
        self.history.append(record)
        logger.info(
            "HFM epoch %d: train loss %.4f%s%s",
            self.epoch,
            train_loss,
            ""
            if validation is None
            else (
                f", val loss {validation.loss:.4f}, val P-AUC {validation.pixel_auroc:.4f} "
                f"(mean of maps {validation.pixel_auroc_mean:.4f})"
            ),
            " (best)" if is_best else "",
        )
        self.epoch += 1
        return record

    def best_model(self) -> UNet:
        """A copy of the UNet holding the best checkpoint's weights (the latest before any epoch), in eval mode.

        The trainer's own model keeps its latest weights, so training can go on after an evaluation.
        """
        model = copy.deepcopy(self.model)
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        return model.eval()
