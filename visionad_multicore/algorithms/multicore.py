"""``multicore``: the MultiCore ensemble (Taylor et al., BMVC 2024) as a VisionAD algorithm.

Hook mapping (VisionAD calls ``train_one_epoch`` before ``pre_eval_processing``):

- ``train_one_epoch``: the first call prepares the ensemble once (bank / fusion split, memory banks from the
  bank share, normalisation statistics and synthetic cache from the fusion share; see
  :mod:`visionad_multicore.ensemble`), then every call trains the Heatmap Fusion Module for one epoch. So the
  run config's ``epochs``, ``evaluate_n_epochs`` and ``train_time_limit`` mean HFM epochs, as users expect;
  preparation time counts as training time of the first epoch.
- ``pre_eval_processing``: prepares if no epoch ran (``epochs: 0`` evaluates the untrained module, which is
  exactly the ensemble mean) and puts the choice of :class:`~visionad_multicore.fusion.train.HFMTrainer` in
  use: the ensemble mean unless a trained epoch beat it on the synthetic validation set (never a test image).
  Training then continues from the latest weights.
- ``eval_outputs_dataloader``: method keys ``multicore`` (the chosen map, score = max), ``multicore_hfm`` (the
  best trained epoch's map, chosen or not), ``ensemble_mean`` (mean of the normalised member maps, score = max)
  and one key per member, e.g. ``p1_euclidean_p3_s1`` (its own map and score), so one run is its own ablation.
- ``save_model`` / ``load_model``: ``model_params.json`` + ``multicore.pt`` (banks, statistics, UNet weights,
  the choice, params) + ``hfm_history.json`` (what ``multicore`` is, in plain words, and every epoch's
  validation scores beside the mean's and each member's); a fresh instance with no training loader
  reproduces predictions bit for bit.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from visionad_multicore.atomic import atomic_path, atomic_write_text
from visionad_multicore.ensemble import PRESETS, MultiCore, load_preset
from visionad_multicore.fusion.train import EpochRecord, HFMTrainConfig
from visionad_multicore.synthetic.masks import SSAConfig
from visionad_multicore.visionad.model_wrapper import ModelWrapper
from visionad_multicore.visionad.training_data import dataset_normalisation, require_clean_training_set

__all__ = ["WrapperMultiCore"]

logger = logging.getLogger(__name__)


def _strict_json(value: Any) -> Any:
    """``value`` with NaN / infinite floats replaced by None (strict JSON has no literal for them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    return value


STATE_FILE = "multicore.pt"
HISTORY_FILE = "hfm_history.json"


class WrapperMultiCore(ModelWrapper):
    """MultiCore as a VisionAD ``ModelWrapper``; every argument is a ``model_params`` key.

    Args:
        preset: ``mc2``, ``mc4``, ``mc8``, a path to a preset YAML, or its dict form.
        backbone: Shared backbone (``wideresnet50`` as in the paper; ``efficientnet_lite0`` offline).
        backbone_weights: Optional backbone weights file.
        coreset_size: Memory-bank size of every member (fixed number).
        k: Nearest neighbours per patch score.
        feature_dim: Pooled patch-feature dimension (SPEC: 1024; lower is faster on a CPU).
        feature_aggregation: Patch aggregation of every member (``auto``, ``paper``, ``local_mean``,
            ``local_mean_equal``; see :class:`~visionad_multicore.patchcore.predictor.PatchCorePlus`).
        bank_share: Share of training images in the memory banks (the rest makes the synthetic set).
        synthetic_size: Number of synthetic images for the HFM (paper: 4000).
        ssa: Overrides of :class:`~visionad_multicore.synthetic.masks.SSAConfig` (e.g. ``masks_per_bucket``,
            ``noise_std``); ``size`` is taken from the images.
        anomaly_mix: Content of the HFM's training anomalies: ``paper`` (noise of ``ssa.noise_std``, the paper's),
            ``mixed`` (default), ``subtle`` or a dict of :class:`~visionad_multicore.synthetic.anomalies.
            AnomalyMix` settings.
        validation_mix: Content of the validation anomalies (default ``subtle``; same choices).
        lr, weight_decay, momentum, grad_clip: optimiser settings of the HFM (paper: RMSprop 1e-5, 1e-5, 0.999, 1).
        optimizer: ``rmsprop`` (the paper's) or ``adam``.
        hfm_batch_size: HFM batch size.
        ssim_weight, cldice_weight, cldice_iterations, bce_weight: the loss ``ssim_weight * SSIM + cldice_weight
            * clDice + bce_weight * BCE`` (paper: 1, lambda, 0) and clDice's soft-skeleton iterations.
        unet_depth, unet_width, residual_mean: UNet shape (see :class:`~visionad_multicore.fusion.unet.UNet`).
        work_size: Resolution the HFM trains and runs at (``None``: the image size, the paper's setting).
        flip_augment: Random flips of HFM training items.
        validation_fraction: Share of ``synthetic_size`` made as the validation set (own masks and seed).
        selection_metric: ``aupro`` (default), ``pixel_ap``, ``pixel_auroc`` or ``loss`` on the validation set.
        selection_margin: How much a trained epoch must beat the ensemble mean by to be used as ``multicore``.
        selection_confidence: Share of the paired bootstrap over the validation images in which a member subset
            (or a trained epoch, against the subset or epoch in use) must keep its gain (default 0.9).
        epoch_confidence: Share of the bootstrap in which a trained epoch must beat the ensemble mean (default
            0.99; see :class:`~visionad_multicore.fusion.train.HFMTrainConfig`).
        calibration_steps: Fit the HFM output's scale and offset by cross-entropy before the first epoch (e.g.
            200; default 0: off). Training then lowers the loss instead of spending its steps on two scalars; the
            trained module did not beat the mean on validation with it either (``docs/fusion_findings.md``).
        image_auroc_tolerance: Largest drop of the validation image AUROC below the mean's a chosen epoch or member
            subset may have.
        pixel_tolerance: Largest drop of the validation pixel AUROC and pixel AP below the mean's a chosen epoch
            or member subset may have.
        image_score_top: Image score of ``multicore``, ``multicore_hfm`` and ``ensemble_mean``: the mean of the
            map's highest ``image_score_top`` share of pixels (default 0.1 %; 0: the maximum, the paper's).
        heatmap_size: Side of the square maps returned (VisionAD scores 256 x 256 maps; the image scores are
            taken before any resize); ``None`` keeps the input size.
        feature_batch_size: Images per backbone pass during preparation.
        cache_dtype: ``float16`` or ``float32`` synthetic-heatmap cache.
        seed: Seed of everything random.
        device: Torch device (VisionAD's runner sets it).
        wandb: Log HFM epochs to an active wandb run (VisionAD's runner sets it).
        progress: Show progress bars.
        knn_backend: k-NN search of the members (``auto``, ``faiss``, ``torch``; see
            :class:`~visionad_multicore.ensemble.MultiCore`).
    """

    def __init__(
        self,
        preset: str | Mapping[str, Any] = "mc2",
        backbone: str = "efficientnet_lite0",
        backbone_weights: str | None = None,
        coreset_size: int = 25_000,
        k: int = 1,
        feature_dim: int = 1024,
        feature_aggregation: str = "auto",
        bank_share: float = 0.8,
        synthetic_size: int = 4000,
        ssa: Mapping[str, Any] | None = None,
        anomaly_mix: str | Mapping[str, Any] = "mixed",
        validation_mix: str | Mapping[str, Any] = "subtle",
        lr: float = 1e-5,
        weight_decay: float = 1e-5,
        momentum: float = 0.999,
        grad_clip: float = 1.0,
        optimizer: str = "rmsprop",
        hfm_batch_size: int = 8,
        ssim_weight: float = 1.0,
        cldice_weight: float = 0.25,
        cldice_iterations: int = 10,
        bce_weight: float = 0.0,
        unet_depth: int = 4,
        unet_width: int = 32,
        residual_mean: bool = True,
        work_size: int | None = None,
        flip_augment: bool = True,
        validation_fraction: float = 0.1,
        selection_metric: str = "aupro",
        selection_margin: float = 0.0,
        selection_confidence: float = 0.9,
        epoch_confidence: float = 0.99,
        calibration_steps: int = 0,
        image_auroc_tolerance: float = 0.01,
        pixel_tolerance: float = 0.005,
        image_score_top: float = 0.001,
        heatmap_size: int | None = 256,
        feature_batch_size: int = 8,
        cache_dtype: str = "float16",
        seed: int = 0,
        device: str = "cpu",
        wandb: bool = False,
        progress: bool = True,
        knn_backend: str = "auto",
    ) -> None:
        super().__init__()
        resolved = load_preset(preset)
        preset_param: str | dict[str, Any] = (
            str(preset).lower()
            if isinstance(preset, str) and preset.lower() in PRESETS
            else resolved.to_dict()
        )
        ssa_overrides = dict(ssa or {})
        ssa_config = SSAConfig.from_dict(ssa_overrides)
        hfm = HFMTrainConfig(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            grad_clip=grad_clip,
            synthetic_size=synthetic_size,
            validation_fraction=validation_fraction,
            batch_size=hfm_batch_size,
            optimizer=optimizer,
            ssim_weight=ssim_weight,
            cldice_weight=cldice_weight,
            cldice_iterations=cldice_iterations,
            bce_weight=bce_weight,
            unet_depth=unet_depth,
            unet_width=unet_width,
            residual_mean=residual_mean,
            work_size=work_size,
            flip_augment=flip_augment,
            selection_metric=selection_metric,
            selection_margin=selection_margin,
            selection_confidence=selection_confidence,
            epoch_confidence=epoch_confidence,
            calibration_steps=calibration_steps,
            image_auroc_tolerance=image_auroc_tolerance,
            pixel_tolerance=pixel_tolerance,
            image_score_top=image_score_top,
            seed=seed,
        )
        self.params = {
            "preset": preset_param,
            "backbone": backbone,
            "backbone_weights": backbone_weights,
            "coreset_size": int(coreset_size),
            "k": int(k),
            "feature_dim": int(feature_dim),
            "feature_aggregation": str(feature_aggregation),
            "bank_share": float(bank_share),
            "synthetic_size": int(synthetic_size),
            "ssa": ssa_overrides,
            "anomaly_mix": anomaly_mix if isinstance(anomaly_mix, str) else dict(anomaly_mix),
            "validation_mix": validation_mix if isinstance(validation_mix, str) else dict(validation_mix),
            "lr": float(lr),
            "weight_decay": float(weight_decay),
            "momentum": float(momentum),
            "grad_clip": float(grad_clip),
            "optimizer": optimizer,
            "hfm_batch_size": int(hfm_batch_size),
            "ssim_weight": float(ssim_weight),
            "cldice_weight": float(cldice_weight),
            "cldice_iterations": int(cldice_iterations),
            "bce_weight": float(bce_weight),
            "unet_depth": int(unet_depth),
            "unet_width": int(unet_width),
            "residual_mean": bool(residual_mean),
            "work_size": None if work_size is None else int(work_size),
            "flip_augment": bool(flip_augment),
            "validation_fraction": float(validation_fraction),
            "selection_metric": selection_metric,
            "selection_margin": float(selection_margin),
            "selection_confidence": float(selection_confidence),
            "epoch_confidence": float(epoch_confidence),
            "calibration_steps": int(calibration_steps),
            "image_auroc_tolerance": float(image_auroc_tolerance),
            "pixel_tolerance": float(pixel_tolerance),
            "image_score_top": float(image_score_top),
            "heatmap_size": None if heatmap_size is None else int(heatmap_size),
            "feature_batch_size": int(feature_batch_size),
            "cache_dtype": cache_dtype,
            "seed": int(seed),
            "device": str(device),
            "wandb": bool(wandb),
            "progress": bool(progress),
            "knn_backend": knn_backend,
        }
        self.wandb = bool(wandb)
        self.progress = bool(progress)
        self.model = MultiCore(
            preset=resolved,
            backbone=backbone,
            backbone_weights=backbone_weights,
            coreset_size=coreset_size,
            k=k,
            feature_dim=feature_dim,
            feature_aggregation=feature_aggregation,
            bank_share=bank_share,
            ssa=ssa_config,
            hfm=hfm,
            anomaly_mix=anomaly_mix,
            validation_mix=validation_mix,
            seed=seed,
            device=str(device),
            batch_size=feature_batch_size,
            cache_dtype=cache_dtype,
            progress=progress,
            knn_backend=knn_backend,
        )
        self._loaded = False

    # ------------------------------------------------------------------ preparation
    def _training_images(self) -> tuple[torch.Tensor, tuple[float, ...], tuple[float, ...]]:
        """All training images ``(N, 3, H, W)`` in dataset order, and the mean / std the dataset normalised
        them with (read from its ``pp_transforms``, see :func:`~visionad_multicore.visionad.training_data.dataset_normalisation`)."""
        if not hasattr(self, "dataloader_train"):
            raise RuntimeError("WrapperMultiCore: no training loader; call enter_dataloaders() first")
        dataset = self.dataloader_train.dataset
        require_clean_training_set(dataset, "multicore")
        images = [
            dataset[i][0]
            for i in tqdm(range(len(dataset)), desc="Training images", disable=not self.progress)  # type: ignore[arg-type]
        ]
        mean, std = dataset_normalisation(dataset)
        return torch.stack(images), mean, std

    def _ensure_prepared(self) -> None:
        if self.model.is_prepared or self._loaded:
            return
        images, mean, std = self._training_images()
        self.model.prepare(images, mean, std)

    # ------------------------------------------------------------------ hooks
    def train_one_epoch(self) -> None:
        """Prepare once (first call), then train the HFM for one epoch."""
        if self._loaded and not self.model.is_prepared:
            raise RuntimeError("WrapperMultiCore: a loaded model cannot be trained further; build a new one")
        self._ensure_prepared()
        record = self.model.train_epoch()
        self._log_wandb(record)

    def pre_eval_processing(self) -> None:
        """Prepare if needed; put the chosen module (or the ensemble mean) and the best trained epoch in use."""
        self._ensure_prepared()
        self.model.finalize()

    def eval_outputs_dataloader(self, dataloader: Iterator, len_dataloader: int) -> tuple[dict, dict]:
        """Score every image yielded.

        Returns:
            ``(heatmaps, scores)``: ``{method: (N, H, W)}`` and ``{method: (N,)}`` float32 tensors for the methods
            ``multicore``, ``multicore_hfm``, ``ensemble_mean`` and each member key.
        """
        heatmap_parts: dict[str, list[torch.Tensor]] = {}
        score_parts: dict[str, list[torch.Tensor]] = {}
        for images, _ in tqdm(
            dataloader, total=len_dataloader, desc="MultiCore eval", disable=not self.progress
        ):
            heatmaps, scores = self.model.predict(images).methods()
            for method, value in heatmaps.items():
                heatmap_parts.setdefault(method, []).append(value)
            for method, value in scores.items():
                score_parts.setdefault(method, []).append(value)
        heatmaps_out = {m: self._to_heatmap_size(torch.cat(parts)) for m, parts in heatmap_parts.items()}
        scores_out = {m: torch.cat(parts) for m, parts in score_parts.items()}
        return heatmaps_out, scores_out

    def _to_heatmap_size(self, maps: torch.Tensor) -> torch.Tensor:
        """``(N, H, W)`` maps resized (bilinear) to ``heatmap_size`` squared when they are another size."""
        size = self.params["heatmap_size"]
        if size is None or tuple(maps.shape[-2:]) == (size, size):
            return maps
        return F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]

    def save_model(self, location: str | os.PathLike[str]) -> None:
        """Write ``model_params.json``, ``multicore.pt`` and ``hfm_history.json`` into ``location``."""
        self.save_params(location)
        path = Path(location) / STATE_FILE
        with atomic_path(path) as tmp:
            torch.save(self.model.state_dict(), tmp)
        atomic_write_text(
            Path(location) / HISTORY_FILE, json.dumps(_strict_json(self.model.history_summary()), indent=1)
        )

    def load_model(self, location: str | os.PathLike[str], **kwargs: Any) -> None:
        """Restore a model written by :meth:`save_model` (works on a fresh instance with no loaders).

        Keyword Args:
            device: Optional device to load onto instead of the saved one.
        """
        unknown = sorted(set(kwargs) - {"device"})
        if unknown:
            raise TypeError(
                f"WrapperMultiCore.load_model: unknown keyword arguments {unknown}; valid: ['device']"
            )
        params = self.load_params(location)
        params.setdefault("feature_aggregation", "paper")  # saved before the option existed
        # saved before image_score_top existed: fused maps scored by their maximum
        params.setdefault("image_score_top", 0.0)
        if kwargs.get("device") is not None:
            params["device"] = str(kwargs["device"])
        self.__init__(**params)  # type: ignore[misc]
        path = Path(location) / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"WrapperMultiCore.load_model: no {STATE_FILE} in {location}")
        self.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self._loaded = True

    # ------------------------------------------------------------------ logging
    def _log_wandb(self, record: EpochRecord) -> None:
        if not self.wandb:
            return
        try:
            import wandb
        except ImportError:
            logger.warning("wandb=True but the wandb package is not installed; not logging HFM epochs")
            self.wandb = False
            return
        if wandb.run is None:
            return
        values: dict[str, float] = {"hfm_epoch": record.epoch, "hfm_train_loss": record.train_loss}
        values.update({f"hfm_val_{k}": v for k, v in record.validation.to_dict().items()})
        values["hfm_selected_epoch"] = record.selected
        wandb.log(values)
