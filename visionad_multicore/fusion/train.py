"""Training of the Heatmap Fusion Module, one epoch at a time, and the choice of what ``multicore`` outputs.

The trainer sees only normalised member heatmaps of synthetic anomalies made from training images (never a
test image). Every epoch it scores the module on a *validation set* that is its own synthetic set: other
masks and another seed than the training set, by default filled with weaker anomalies (the ``subtle``
mixture of :mod:`visionad_multicore.synthetic.anomalies`), plus the clean fusion-share images as nominal
examples for the image-level check. On the paper's noise-only anomalies every candidate scores a pixel AUROC
of 0.996-0.999, so that signal cannot tell a good module from a bad one; the subtle set is far from saturated.

Candidates and the choice (:class:`HFMTrainer`):

- the untrained module, which is exactly the ensemble mean (see :class:`~visionad_multicore.fusion.unet.
  UNet`), competes as epoch ``-1``;
- so does the mean of every proper subset of the members (``member_subsets``): when the validation set shows
  a member to be weak (e.g. a stride-3, 7 x 7 member on thin defects), leaving it out of the mean is the
  simplest fusion that helps;
- every trained epoch or subset is a candidate only if it is no worse than the mean on the validation scores
  that mirror the other test metrics: image AUROC (max of the map per image) not below the mean's by more than
  ``image_auroc_tolerance``, pixel AUROC and pixel AP not below the mean's by more than ``pixel_tolerance``.
  Measured on MVTec 3D tire: with the image-AUROC guard alone, a single stride-1 minkowski3 member won on
  validation AUPRO (0.70 against the mean's 0.64) with a validation pixel AP of 0.46 (mean 0.77), and on the
  test set its AUPRO rose while its PL fell from 0.52 to 0.35. A candidate replaces the mean only if it beats it by
  more than ``selection_margin`` on ``selection_metric`` and, for ``aupro`` and ``pixel_ap``, keeps that gain in
  ``selection_confidence`` (90 %) of a paired bootstrap over the validation images: with a few dozen
  validation images a gain of 0.01 AUPRO is often noise (measured: an epoch chosen on a 0.01 gain was 0.001
  *worse* on the real test set of demo_brick). A trained epoch must keep its gain over the *ensemble mean* in
  ``epoch_confidence`` (99 %) of the bootstrap, and its gain over a subset or an earlier epoch in use in
  ``selection_confidence``: ten epochs are ten tries of a flexible module on one small synthetic set, so the
  best of them is an optimistic pick (99 % = 90 % spread over the default 10 epochs, Bonferroni's way). Measured
  on demo_grass with two threads: epoch 0 beat the mean by 0.004 AUPRO in 94 % of the bootstrap, epoch 8 beat
  epoch 0 (and the mean, 0.345 against 0.312) in 94 %, and on the test set epoch 8 was far worse than the mean
  (AUPRO 0.752 against 0.837, P-AUC 0.966 against 0.984);
- so when no trained epoch beats the mean, ``multicore`` *is* the ensemble mean, and the history says so.
  The best trained epoch is kept too (``multicore_hfm``), so the choice stays visible.

``selection_metric``: ``aupro`` (default; the region-overlap area up to 30 % FPR, VisionAD's definition),
``pixel_ap`` (pixel average precision), ``pixel_auroc`` or ``loss``. On the development data the validation
AUPRO moved with the test AUPRO of the trained epochs, while the validation pixel AP rose for epochs whose
test metrics fell (see ``docs/fusion_findings.md``); the selection also never needs the test set.

Presets: :meth:`HFMTrainConfig.paper` (RMSprop lr 1e-5, weight decay 1e-5, momentum 0.999, clip 1, 300 epochs,
4000 synthetic images, SSIM + clDice: the paper's) and :meth:`HFMTrainConfig.cpu` (Adam lr 1e-3, 64 x 64
work size, a small UNet: converges in minutes on a CPU). Loss terms: ``ssim_weight * SSIM + cldice_weight *
clDice + bce_weight * BCE`` (the paper's loss is ``bce_weight = 0``).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
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
from visionad_multicore.fusion.validation import (
    ValidationData,
    ValidationResult,
    evaluate_maps,
    pixel_ap_pieces,
    weighted_pixel_ap,
)
from visionad_multicore.region_overlap import per_image_pro, weighted_aupro

__all__ = [
    "MEAN_EPOCH",
    "SELECTION_METRICS",
    "EpochRecord",
    "HFMTrainConfig",
    "HFMTrainer",
    "ValidationData",
    "ValidationResult",
    "build_unet",
    "evaluate_maps",
    "make_optimizer",
    "train_one_epoch",
]

logger = logging.getLogger(__name__)

SELECTION_METRICS = ("aupro", "pixel_ap", "pixel_auroc", "loss")
OPTIMIZERS = ("rmsprop", "adam")
MEAN_EPOCH = -1  # the epoch number of the untrained module, i.e. of the ensemble mean
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAPPED = ("aupro", "pixel_ap")  # selection metrics whose gain over the mean is bootstrapped


@dataclass(frozen=True)
class HFMTrainConfig:
    """Settings of the Heatmap Fusion Module and its training. Defaults are the paper preset.

    Attributes:
        lr: Learning rate (paper: 1e-5 with RMSprop).
        weight_decay: Weight decay (paper: 1e-5).
        momentum: RMSprop momentum (paper: 0.999); Adam ignores it.
        grad_clip: Max gradient norm (paper: 1; 0 disables).
        epochs: Number of epochs (paper: 300). The VisionAD wrapper takes its epochs from the run config.
        synthetic_size: Synthetic images made for the HFM, training and validation together (paper: 4000).
        validation_fraction: Share of ``synthetic_size`` made as the validation set (its own masks and seed).
        batch_size: HFM training batch size.
        optimizer: ``rmsprop`` (the paper's) or ``adam``.
        ssim_weight: Weight of the SSIM loss.
        cldice_weight: Weight of the soft clDice loss.
        cldice_iterations: Soft-skeleton iterations of clDice.
        bce_weight: Weight of a pixel binary cross-entropy term (0: the paper's loss).
        unet_depth: Number of UNet downsamplings.
        unet_width: Channels of the UNet's first level.
        residual_mean: Output = full-resolution channel mean of the inputs + the UNet's correction.
        work_size: Resolution the UNet works at (``None``: the heatmaps' own, the paper's setting; e.g. 64 on
            a CPU). Training targets are area-downsampled (soft); validation is at full resolution.
        flip_augment: Random horizontal / vertical flips of training batches (same flip for maps and mask).
        selection_metric: One of :data:`SELECTION_METRICS` on the validation set (``loss``: lower is better).
        selection_margin: How much a trained epoch must beat the ensemble mean by to replace it.
        member_subsets: Also let the mean of a proper subset of the members compete (chosen on validation like
            an epoch): a member that the synthetic validation shows to be weak is left out.
        selection_confidence: With ``aupro`` or ``pixel_ap``, the gain over the mean must also hold in this
            share of a paired bootstrap over the validation images (resampled with replacement, 1000 times): a
            gain that a few lucky validation images produce is not taken (0.5: no more than the point estimate).
        epoch_confidence: A trained epoch must beat the ensemble mean in this share of the bootstrap (and a
            member subset or an earlier epoch in use in ``selection_confidence``). Stricter than for subsets:
            the best of many correlated epochs of a flexible module is an optimistic pick on one small synthetic
            set (measured: both trained epochs that won at 90 % were worse than the mean on the real test set:
            demo_brick, and demo_grass with two threads, where epoch 8 beat the mean in 94 %).
        image_auroc_tolerance: A trained epoch or subset whose validation image AUROC is below the mean's by
            more than this is not a candidate.
        pixel_tolerance: A trained epoch or subset whose validation pixel AUROC or pixel AP is below the mean's
            by more than this is not a candidate (the selection metric itself must rise).
        image_score_top: Image score of a fused map (``multicore``, ``multicore_hfm``, ``ensemble_mean`` and in
            validation): the mean of its highest ``image_score_top`` share of pixels (0: the maximum, as the
            paper; see :func:`~visionad_multicore.fusion.validation.map_image_scores`).
        calibration_steps: With ``residual_mean``, steps (Adam, lr 0.05, 32 items each) that fit the output's
            scale and offset to the training targets by pixel binary cross-entropy before the first epoch, the
            UNet's correction still zero (0, the default: none, the paper's start; 200 is plenty). The loss
            reads ``sigmoid(output)`` and the untrained output is the z-scored mean, about 0 on clean pixels
            (sigmoid 0.5), so the first ~150 steps go to moving two scalars by the optimiser's small steps
            (CPU settings, training loss per epoch: KolektorSDD MC2 1.236, 1.227, 1.208, 1.157, 0.915, ...
            0.139; demo grass, 15 steps an epoch, 1.234 -> 1.203 after 8 epochs; calibrated: 0.90 -> 0.14 and
            0.99 -> 0.29). Cross-entropy, not the training loss, fits them: SSIM + clDice has a flat optimum
            at a constant map that the two scalars fall into (scale -> 0, sigmoid ~1 everywhere; measured on
            demo grass and gravel). The fitted module is an increasing affine map of the mean, so every metric
            equals the mean's until the correction moves. Off by default: the better-trained module did not
            beat the mean on validation either, and on test it was better on some sets and worse on others.
        seed: Seed of the UNet initialisation and the batch order.
    """

    lr: float = 1e-5
    weight_decay: float = 1e-5
    momentum: float = 0.999
    grad_clip: float = 1.0
    epochs: int = 300
    synthetic_size: int = 4000
    validation_fraction: float = 0.1
    batch_size: int = 8
    optimizer: str = "rmsprop"
    ssim_weight: float = 1.0
    cldice_weight: float = 0.25
    cldice_iterations: int = 10
    bce_weight: float = 0.0
    unet_depth: int = 4
    unet_width: int = 32
    residual_mean: bool = True
    work_size: int | None = None
    flip_augment: bool = True
    selection_metric: str = "aupro"
    selection_margin: float = 0.0
    member_subsets: bool = True
    selection_confidence: float = 0.9
    epoch_confidence: float = 0.99
    image_auroc_tolerance: float = 0.01
    pixel_tolerance: float = 0.005
    image_score_top: float = 0.001
    calibration_steps: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("lr", "epochs", "synthetic_size", "batch_size", "unet_depth", "unet_width")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"HFMTrainConfig.{name} must be > 0, got {getattr(self, name)}")
        non_negative = (
            "weight_decay",
            "momentum",
            "grad_clip",
            "ssim_weight",
            "cldice_weight",
            "cldice_iterations",
            "bce_weight",
            "calibration_steps",
            "selection_margin",
            "image_auroc_tolerance",
            "pixel_tolerance",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"HFMTrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.ssim_weight + self.cldice_weight + self.bce_weight <= 0:
            raise ValueError(
                "HFMTrainConfig: at least one of ssim_weight, cldice_weight, bce_weight must be > 0"
            )
        if self.work_size is not None and self.work_size < 2**self.unet_depth:
            raise ValueError(
                f"HFMTrainConfig.work_size must be None or >= 2 ** unet_depth = {2**self.unet_depth}, "
                f"got {self.work_size}"
            )
        if not 0.0 <= self.image_score_top < 1.0:
            raise ValueError(f"HFMTrainConfig.image_score_top must be in [0, 1), got {self.image_score_top}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(
                f"HFMTrainConfig.validation_fraction must be in (0, 1), got {self.validation_fraction}"
            )
        for name in ("selection_confidence", "epoch_confidence"):
            if not 0.5 <= getattr(self, name) < 1.0:
                raise ValueError(f"HFMTrainConfig.{name} must be in [0.5, 1), got {getattr(self, name)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"HFMTrainConfig.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.selection_metric not in SELECTION_METRICS:
            raise ValueError(
                f"HFMTrainConfig.selection_metric must be one of {SELECTION_METRICS}, "
                f"got {self.selection_metric!r}"
            )

    @property
    def sizes(self) -> tuple[int, int]:
        """``(training items, validation items)`` of ``synthetic_size`` (at least one of each)."""
        n_val = min(self.synthetic_size - 1, max(1, round(self.synthetic_size * self.validation_fraction)))
        return self.synthetic_size - n_val, n_val

    @classmethod
    def paper(cls, **overrides: Any) -> HFMTrainConfig:
        """The paper's settings (RMSprop 1e-5, wd 1e-5, momentum 0.999, clip 1, 300 epochs, 4000 synthetic)."""
        return cls.from_dict(overrides)

    @classmethod
    def cpu(cls, **overrides: Any) -> HFMTrainConfig:
        """Minutes on a CPU: Adam lr 1e-3, 20 epochs, 240 synthetic images, a 16-wide depth-3 UNet at 64 px."""
        values: dict[str, Any] = {
            "lr": 1e-3,
            "optimizer": "adam",
            "epochs": 20,
            "synthetic_size": 240,
            "validation_fraction": 0.25,
            "batch_size": 8,
            "unet_depth": 3,
            "unet_width": 16,
            "work_size": 64,
        }
        values.update(overrides)
        return cls.from_dict(values)

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
class EpochRecord:
    """What one HFM epoch gave.

    Attributes:
        epoch: 0-based epoch number.
        train_loss: Mean training loss of the epoch.
        validation: The trained module's validation scores.
        is_candidate: Whether the epoch passed the guards (image AUROC, pixel AUROC, pixel AP against the mean).
        is_best_trained: Whether it is the best trained epoch so far (``multicore_hfm``).
        selected: The epoch ``multicore`` uses after this epoch, or :data:`MEAN_EPOCH` (a mean: of all members,
            or of the subset in ``selected_label``).
        gain_confidence: Share of the bootstrap resamples in which the epoch beat the mean by the margin (NaN
            when not computed: no point gain, or a selection metric other than ``aupro``).
    """

    epoch: int
    train_loss: float
    validation: ValidationResult
    is_candidate: bool
    is_best_trained: bool
    selected: int
    gain_confidence: float = math.nan
    selected_label: str = "ensemble_mean"


# ---------------------------------------------------------------------------------------------- training
def build_unet(in_channels: int, config: HFMTrainConfig, device: str | torch.device = "cpu") -> UNet:
    """The config's UNet for ``in_channels`` members, seeded (so an untrained one is the same every time)."""
    return UNet(
        in_channels,
        config.unet_width,
        config.unet_depth,
        config.residual_mean,
        seed=config.seed,
        work_size=config.work_size,
    ).to(device)


def make_optimizer(model: nn.Module, config: HFMTrainConfig) -> torch.optim.Optimizer:
    """RMSprop (lr, weight decay, momentum) or Adam (lr, weight decay) as the config says."""
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.RMSprop(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, momentum=config.momentum
    )


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
    targets: Tensor,
    batch_size: int,
    grad_clip: float,
    generator: torch.Generator,
    flip_augment: bool = True,
    progress: bool = True,
) -> float:
    """One pass over every training item in a seeded random order.

    Args:
        model: The UNet (put in train mode here).
        loss_fn: Loss on ``(logits (b, 1, h, w), target (b, 1, h, w))``.
        optimizer: Optimiser of ``model``'s parameters.
        inputs: Normalised member heatmaps at the work size, ``(S, M, h, w)`` (cast to float32 per batch).
        targets: Masks at the work size, ``(S, 1, h, w)`` in [0, 1].
        batch_size: Items per step.
        grad_clip: Max total gradient norm (0 disables clipping).
        generator: Drives the batch order and flips.
        flip_augment: Random flips of each item.
        progress: Show a tqdm bar.

    Returns:
        Mean training loss over the epoch's batches.
    """
    if len(inputs) == 0:
        raise ValueError("train_one_epoch: no training items")
    device = next(model.parameters()).device
    model.train()
    order = torch.randperm(len(inputs), generator=generator)
    losses = []
    for start in tqdm(range(0, len(order), batch_size), desc="HFM train", leave=False, disable=not progress):
        idx = order[start : start + batch_size]
        x = inputs[idx].to(device=device, dtype=torch.float32)  # (b, M, h, w)
        y = targets[idx].to(device=device, dtype=torch.float32)  # (b, 1, h, w)
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
def fuse_maps(model: nn.Module, maps: Tensor, batch_size: int = 16) -> Tensor:
    """``(N, M, H, W)`` normalised member maps -> ``(N, 1, H, W)`` fused maps (eval mode), on the CPU."""
    device = next(model.parameters()).device
    model.eval()
    out = [
        model(maps[s : s + batch_size].to(device=device, dtype=torch.float32)).float().cpu()
        for s in range(0, len(maps), batch_size)
    ]
    return torch.cat(out)


class HFMTrainer:
    """Owns the UNet, its optimiser, the epoch counter, the validation history and the choice.

    Args:
        in_channels: Number of ensemble members.
        config: Training and selection settings.
        validation: The validation set.
        device: Where the UNet lives.
        member_names: Names of the members, for the log.
        progress: Show tqdm bars.
    """

    def __init__(
        self,
        in_channels: int,
        config: HFMTrainConfig,
        validation: ValidationData,
        device: str | torch.device = "cpu",
        member_names: list[str] | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.progress = progress
        self.validation = validation
        self.model = build_unet(in_channels, config, self.device)
        self.loss_fn = FusionLoss(
            config.cldice_weight,
            config.cldice_iterations,
            ssim_weight=config.ssim_weight,
            bce_weight=config.bce_weight,
        )
        self.optimizer = make_optimizer(self.model, config)
        self.epoch = 0
        self.history: list[EpochRecord] = []
        self.calibration: tuple[float, float] | None = None  # (scale, offset) fitted by calibrate_output
        # the baselines, scored once: the untrained module (= the ensemble mean) and every member alone
        self.mean_validation, mean_maps = self._validate(self.model)
        self._mean_pieces = self._pieces(mean_maps)
        names = member_names or [f"member{i}" for i in range(in_channels)]
        self.member_names = list(names)
        self.member_validation = {
            name: evaluate_maps(
                validation.maps[:, i : i + 1],
                validation.masks,
                validation.nominal[:, i : i + 1],
                config.image_score_top,
            )
            for i, name in enumerate(names)
        }
        self.selected_epoch = MEAN_EPOCH
        self.selected_value = self.mean_validation.value(config.selection_metric)
        self.selected_state: dict[str, Tensor] | None = None
        self.selected_subset: tuple[int, ...] | None = None  # a mean of these members instead of all
        self._selected_pieces = self._mean_pieces
        self.best_trained_epoch: int | None = None
        self.best_trained_state: dict[str, Tensor] | None = None
        self._best_trained_value = -math.inf
        logger.info(
            "HFM validation (%s), before training: ensemble mean %.4f; members %s",
            config.selection_metric,
            self.selected_value,
            {k: round(v.value(config.selection_metric), 4) for k, v in self.member_validation.items()},
        )
        self.subset_validation: dict[tuple[int, ...], tuple[ValidationResult, float]] = {}
        if config.member_subsets and in_channels > 1:
            self._choose_subset(names)

    def _guard_failures(self, result: ValidationResult) -> list[str]:
        """The validation scores on which ``result`` is worse than the ensemble mean by more than allowed."""
        c, mean = self.config, self.mean_validation
        limits = (
            ("image AUROC", result.image_auroc, mean.image_auroc, c.image_auroc_tolerance),
            ("pixel AUROC", result.pixel_auroc, mean.pixel_auroc, c.pixel_tolerance),
            ("pixel AP", result.pixel_ap, mean.pixel_ap, c.pixel_tolerance),
        )
        # a score the mean does not have (NaN) guards nothing; a candidate without it fails
        return [name for name, value, base, tol in limits if not math.isnan(base) and not value >= base - tol]

    def _choose_subset(self, names: list[str]) -> None:
        """Score the mean of every proper subset of members; take the best one that beats the full mean.

        A subset replaces the full mean on the same terms as a trained epoch: a point gain above the margin,
        the guards (:meth:`_guard_failures`), and the gain kept in ``selection_confidence`` of the paired
        bootstrap.
        """
        c, v = self.config, self.validation
        m = v.maps.shape[1]
        mean_value = self.mean_validation.value(c.selection_metric)
        subsets = [s for r in range(1, m) for s in itertools.combinations(range(m), r)]
        for subset in tqdm(subsets, desc="Member subsets", leave=False, disable=not self.progress):
            idx = list(subset)
            fused = v.maps[:, idx].float().mean(dim=1, keepdim=True)
            nominal = v.nominal[:, idx].float().mean(dim=1, keepdim=True)
            result = evaluate_maps(fused, v.masks, nominal, c.image_score_top)
            value = result.value(c.selection_metric)
            confidence = math.nan
            if value > mean_value + c.selection_margin and not self._guard_failures(result):
                confidence = self._gain_confidence(fused, self._mean_pieces)
            self.subset_validation[subset] = (result, confidence)
            passes = not math.isnan(confidence) and confidence >= c.selection_confidence
            if passes and value > self.selected_value:
                self.selected_subset, self.selected_value = subset, value
                self._selected_pieces = self._pieces(fused)
        if self.selected_subset is not None:
            logger.info(
                "HFM validation: the mean of %s (%s %.4f) beats the ensemble mean (%.4f); it is multicore unless a "
                "trained epoch beats it",
                [names[i] for i in self.selected_subset],
                c.selection_metric,
                self.selected_value,
                mean_value,
            )

    def _validate(self, model: nn.Module) -> tuple[ValidationResult, Tensor]:
        """Validation scores of a module and its fused maps of the validation items ``(V, 1, H, W)``."""
        v = self.validation
        fused = fuse_maps(model, v.maps)
        nominal = fuse_maps(model, v.nominal)
        return evaluate_maps(fused, v.masks, nominal, self.config.image_score_top), fused

    def _pieces(self, fused: Tensor) -> tuple[np.ndarray, ...] | None:
        """Per-image pieces of the selection metric on fused validation maps (None if not resampleable).

        ``aupro``: :func:`per_image_pro` over the items with a mask; ``pixel_ap``: :func:`pixel_ap_pieces` over
        every item; other metrics have no bootstrap.
        """
        masks = self.validation.masks
        if self.config.selection_metric == "pixel_ap":
            return pixel_ap_pieces(fused, masks) if masks.any() else None
        if self.config.selection_metric != "aupro":
            return None
        anomalous = masks.flatten(1).any(dim=1)
        values = fused[anomalous, 0].float().numpy()
        if not anomalous.any() or values.min() == values.max():
            return None
        return per_image_pro(values, masks[anomalous, 0].numpy())

    def _resampled(self, pieces: tuple[np.ndarray, ...], weights: np.ndarray) -> np.ndarray:
        if self.config.selection_metric == "pixel_ap":
            return weighted_pixel_ap((pieces[0], pieces[1]), weights)
        return weighted_aupro((pieces[0], pieces[1], pieces[2], pieces[3]), weights)

    def _gain_confidence(self, fused: Tensor, baseline: tuple[np.ndarray, ...] | None) -> float:
        """Share of paired bootstrap resamples of the validation images in which ``fused`` beats ``baseline``
        (the pieces of the candidate in use) by the margin."""
        pieces = self._pieces(fused)
        if pieces is None or baseline is None:
            return math.nan
        n = len(pieces[1]) if self.config.selection_metric == "aupro" else len(pieces[0])
        rng = np.random.default_rng(self.config.seed + 7919)  # the same resamples for every epoch
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=BOOTSTRAP_RESAMPLES).astype(np.float64)
        gain = self._resampled(pieces, weights) - self._resampled(baseline, weights)
        return float(np.mean(gain > self.config.selection_margin))

    def _validation_loss(self, inputs: Tensor, targets: Tensor) -> float:
        """Loss of the current module on the validation items, at the work size, as in training."""
        self.model.eval()
        losses, weights = [], []
        with torch.no_grad():
            for s in range(0, len(inputs), self.config.batch_size):
                x = inputs[s : s + self.config.batch_size].to(self.device, torch.float32)
                y = targets[s : s + self.config.batch_size].to(self.device, torch.float32)
                losses.append(self.loss_fn(self.model(x), y).item())
                weights.append(len(x))
        return float(np.average(losses, weights=weights))

    def calibrate_output(self, inputs: Tensor, targets: Tensor) -> tuple[float, float]:
        """Fit the output's scale and offset to the training targets, the correction still zero (see
        ``calibration_steps``); returns them. The UNet's weights do not move."""
        model, c = self.model, self.config
        if not model.residual_mean or c.calibration_steps == 0:
            return 1.0, 0.0
        if model.head.weight.abs().max() > 0:
            raise RuntimeError(
                "calibrate_output: the UNet's correction is no longer zero (call it before training)"
            )
        scale = torch.ones(1, requires_grad=True)
        offset = torch.zeros(1, requires_grad=True)
        optimizer = torch.optim.Adam([scale, offset], lr=0.05)
        generator = torch.Generator().manual_seed(c.seed * 100_003 - 1)
        batch = min(32, len(inputs))
        for _ in range(c.calibration_steps):
            idx = torch.randint(len(inputs), (batch,), generator=generator)
            # (b, 1, h, w): the untrained output up to its scale and offset, on the CPU, one batch at a time
            mean = inputs[idx].float().mean(dim=1, keepdim=True).cpu()
            target = targets[idx].float().cpu()
            loss = F.binary_cross_entropy_with_logits(scale * mean + offset, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                scale.clamp_(min=1e-3)  # increasing: the calibrated output ranks pixels as the mean does
        with torch.no_grad():
            model.residual_scale.copy_(scale.to(model.residual_scale.device))
            model.residual_offset.copy_(offset.to(model.residual_offset.device))
        fitted = float(scale.detach()), float(offset.detach())
        self.calibration = fitted
        logger.info("HFM output calibrated before training: scale %.3f, offset %.3f", *fitted)
        return fitted

    def run_epoch(
        self, inputs: Tensor, targets: Tensor, validation_inputs: Tensor, validation_targets: Tensor
    ) -> EpochRecord:
        """Train one epoch, validate, update the best trained epoch and the choice.

        Args:
            inputs: ``(S, M, h, w)`` training maps at the work size.
            targets: ``(S, 1, h, w)`` training targets at the work size.
            validation_inputs: ``(V, M, h, w)`` validation maps at the work size (for the validation loss).
            validation_targets: ``(V, 1, h, w)`` their targets.
        """
        c = self.config
        if self.epoch == 0:
            self.calibrate_output(inputs, targets)
        generator = torch.Generator().manual_seed(c.seed * 100_003 + self.epoch)
        train_loss = train_one_epoch(
            self.model,
            self.loss_fn,
            self.optimizer,
            inputs,
            targets,
            c.batch_size,
            c.grad_clip,
            generator,
            c.flip_augment,
            self.progress,
        )
        result, fused = self._validate(self.model)
        result = dataclasses.replace(
            result, loss=self._validation_loss(validation_inputs, validation_targets)
        )
        value = result.value(c.selection_metric)
        failed = self._guard_failures(result)
        is_candidate = not math.isnan(value) and not failed
        is_best_trained = not math.isnan(value) and value > self._best_trained_value
        if is_best_trained:
            self._best_trained_value = value
            self.best_trained_epoch = self.epoch
            self.best_trained_state = copy.deepcopy(self.model.state_dict())
        mean_value = self.mean_validation.value(c.selection_metric)
        confidence = math.nan
        wins = is_candidate and value > self.selected_value and value > mean_value + c.selection_margin
        if wins and c.selection_metric in BOOTSTRAPPED:
            # against the ensemble mean at the stricter epoch_confidence, then against a subset or an earlier
            # epoch in use at selection_confidence: a chain of small wins (epoch 0 over the mean, epoch 8 over
            # epoch 0) must not carry an epoch past the mean
            confidence = self._gain_confidence(fused, self._mean_pieces)
            wins = not math.isnan(confidence) and confidence >= c.epoch_confidence
            if wins and self._selected_pieces is not self._mean_pieces:
                over_selected = self._gain_confidence(fused, self._selected_pieces)
                wins = not math.isnan(over_selected) and over_selected >= c.selection_confidence
        if wins:
            self.selected_epoch, self.selected_value = self.epoch, value
            self.selected_state = copy.deepcopy(self.model.state_dict())
            self.selected_subset = None
            self._selected_pieces = self._pieces(fused)
        record = EpochRecord(
            self.epoch,
            train_loss,
            result,
            is_candidate,
            is_best_trained,
            self.selected_epoch,
            confidence,
            self.selection_label(),
        )
        self.history.append(record)
        logger.info(
            "HFM epoch %d: train loss %.4f; validation %s %.4f (mean %.4f), image AUROC %.4f (mean %.4f)%s; "
            "multicore = %s",
            self.epoch,
            train_loss,
            c.selection_metric,
            value,
            mean_value,
            result.image_auroc,
            self.mean_validation.image_auroc,
            ("" if not failed else f" [below the mean on {', '.join(failed)}: not a candidate]")
            + (
                "" if math.isnan(confidence) else f", gain over the mean in {confidence:.0%} of the bootstrap"
            ),
            self.selection_label(),
        )
        self.epoch += 1
        return record

    def _model_with(self, state: dict[str, Tensor] | None) -> UNet:
        model = build_unet(self.model.in_channels, self.config, self.device)
        if state is not None:
            model.load_state_dict(state)
        return model.eval()

    def trained_model(self) -> UNet:
        """A copy of the best trained epoch's UNet (``multicore_hfm``); the untrained one before any epoch."""
        return self._model_with(self.best_trained_state)

    def selected_model(self) -> UNet | None:
        """A copy of the UNet ``multicore`` uses, or ``None`` when it is the ensemble mean."""
        return None if self.selected_epoch == MEAN_EPOCH else self._model_with(self.selected_state)

    @property
    def mean_selected(self) -> bool:
        """Whether ``multicore`` is the plain ensemble mean (neither a member subset nor a trained epoch won)."""
        return self.selected_epoch == MEAN_EPOCH and self.selected_subset is None

    def selection_label(self) -> str:
        """What ``multicore`` is now: ``ensemble_mean``, ``mean_of:<member>+<member>`` or ``hfm_epoch_<N>``."""
        if self.selected_epoch != MEAN_EPOCH:
            return f"hfm_epoch_{self.selected_epoch}"
        if self.selected_subset is not None:
            return "mean_of:" + "+".join(self.member_names[i] for i in self.selected_subset)
        return "ensemble_mean"
