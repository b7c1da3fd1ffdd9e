"""MultiCore: an ensemble of Patchcore+ predictors fused by the Heatmap Fusion Module (HFM).

The core knows nothing about VisionAD; :mod:`visionad_multicore.algorithms.multicore` adapts it. The member
sets (MC2 / MC4 / MC8 and YAML presets) live in :mod:`visionad_multicore.preset`.

Pipeline (SPEC section 3):

1. :meth:`MultiCore.prepare` splits the training images, seeded, into a **bank share** and a **fusion share**
   (default 80 / 20, :func:`visionad_multicore.synthetic.dataset.split_bank_fusion`). Every member's memory
   bank is fitted on the bank share only, from clean images (no synthetic-anomaly hook exists anywhere on
   this path). Synthetic anomalies are made only from fusion-share images: an image that is also in the
   bank scoring it matches itself in its clean regions, unlike a test image (a mistake of the reference
   code, which also left its noise hook on the loader feeding the bank).
2. Each member's heatmaps of the clean fusion-share images give that member's normalisation mean and std
   (over all pixels); heatmaps are normalised as ``(h - mean) / std`` before fusion and averaging.
3. Two synthetic sets are made from the fusion share, each with its own SSA masks and seed: the training set
   (anomaly content ``anomaly_mix``, default the ``mixed`` mixture of
   :mod:`visionad_multicore.synthetic.anomalies`) and the validation set (``validation_mix``, default the
   weaker ``subtle`` mixture). Every member scores both once; the normalised maps are cached (training maps
   at the HFM's ``work_size``, validation maps at full resolution).
4. :meth:`MultiCore.train_epoch` trains the UNet for one epoch; :class:`~visionad_multicore.fusion.train.
   HFMTrainer` scores it on the validation set and decides what ``multicore`` is: the ensemble mean (the
   untrained module) unless a trained epoch beats it there. No test image is seen before evaluation.

All members share one backbone pass per image. :meth:`predict` returns the chosen fused map (``multicore``),
the best trained epoch's map (``multicore_hfm``), the mean of the normalised maps (``ensemble_mean``) and every
member's own map, so one run is its own ablation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from visionad_multicore.fusion.train import (
    MEAN_EPOCH,
    EpochRecord,
    HFMTrainConfig,
    HFMTrainer,
    ValidationData,
    build_unet,
)
from visionad_multicore.fusion.unet import UNet
from visionad_multicore.fusion.validation import map_image_scores
from visionad_multicore.member_maps import normalisation_stats
from visionad_multicore.patchcore.backbone import build_backbone
from visionad_multicore.patchcore.bank import MemoryBudget
from visionad_multicore.patchcore.device import check_device
from visionad_multicore.patchcore.distances import check_backend
from visionad_multicore.patchcore.predictor import PatchCorePlus
from visionad_multicore.preset import PRESETS, PredictorSpec, Preset, load_preset
from visionad_multicore.synthetic.anomalies import resolve_mix
from visionad_multicore.synthetic.dataset import SyntheticAnomalySet, split_bank_fusion
from visionad_multicore.synthetic.masks import SSAConfig, generate_masks

__all__ = [
    "PRESETS",
    "MultiCore",
    "MultiCoreOutput",
    "Preset",
    "PredictorSpec",
    "load_preset",
]

logger = logging.getLogger(__name__)

STATE_FORMAT = 2
PAPER_MIX = "paper"  # the paper's noise-only content, drawn exactly as SSAConfig.noise_std says


# ---------------------------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class MultiCoreOutput:
    """Everything MultiCore gives for a batch of images.

    Attributes:
        fused: ``(N, H, W)`` the ``multicore`` method: the HFM's map, or the ensemble mean when no trained
            epoch beat it on validation.
        fused_scores: ``(N,)`` image scores of ``fused`` (``hfm.image_score_top``: top-share mean).
        hfm: ``(N, H, W)`` the best trained epoch's map (``multicore_hfm``), whether chosen or not.
        hfm_scores: ``(N,)`` image scores of ``hfm``, the same way.
        mean: Mean of the normalised member maps ``(N, H, W)``; the ``ensemble_mean`` method.
        mean_scores: ``(N,)`` image scores of ``mean``, the same way.
        member_heatmaps: Member key -> that member's own (unnormalised) heatmaps ``(N, H, W)``.
        member_scores: Member key -> that member's image scores ``(N,)``.
    """

    fused: Tensor
    fused_scores: Tensor
    hfm: Tensor
    hfm_scores: Tensor
    mean: Tensor
    mean_scores: Tensor
    member_heatmaps: dict[str, Tensor]
    member_scores: dict[str, Tensor]

    def methods(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(heatmaps, scores)`` by method: ``multicore``, ``multicore_hfm``, ``ensemble_mean``, each member."""
        heatmaps = {
            "multicore": self.fused,
            "multicore_hfm": self.hfm,
            "ensemble_mean": self.mean,
            **self.member_heatmaps,
        }
        scores = {
            "multicore": self.fused_scores,
            "multicore_hfm": self.hfm_scores,
            "ensemble_mean": self.mean_scores,
            **self.member_scores,
        }
        return heatmaps, scores


@dataclass
class _FusionData:
    """What HFM training needs, made once by :meth:`MultiCore.prepare` (not saved)."""

    train_maps: Tensor  # (S, M, h, w) normalised, at the work size
    train_targets: Tensor  # (S, 1, h, w) in [0, 1]
    val_work_maps: Tensor  # (V, M, h, w) for the validation loss
    val_work_targets: Tensor  # (V, 1, h, w)
    validation: ValidationData  # full resolution

    def subset(self, n_members: int) -> _FusionData:
        v = self.validation
        return _FusionData(
            self.train_maps[:, :n_members],
            self.train_targets,
            self.val_work_maps[:, :n_members],
            self.val_work_targets,
            ValidationData(v.maps[:, :n_members], v.masks, v.nominal[:, :n_members]),
        )


# ---------------------------------------------------------------------------------------------- ensemble
class MultiCore:
    """The MultiCore ensemble (scikit-learn shaped: parameters in ``__init__``, learned state ends in ``_``).

    Args:
        preset: Members: a built-in name, a YAML path, a :class:`Preset` or its dict form.
        backbone: Backbone name shared by all members (``efficientnet_lite0`` offline, ``wideresnet50``).
        backbone_weights: Optional path to backbone weights (see ``patchcore.backbone.build_backbone``).
        coreset_size: Memory-bank size of every member (a fixed number, not a fraction).
        k: Nearest neighbours averaged in each member's patch score.
        feature_dim: Dimension of the pooled patch features (SPEC: 1024; lower it on a CPU, where the
            k-NN search of a ``minkowski3`` member costs ``patches x bank x feature_dim`` element operations).
        feature_aggregation: How members turn neighbourhoods into vectors (``auto``: the paper's pipeline for
            ``wideresnet50``, ``local_mean_equal`` otherwise; see :mod:`visionad_multicore.patchcore.patches`).
        bank_share: Share of the training images in the memory banks; the rest makes the synthetic sets.
        ssa: Synthetic-anomaly mask settings; its ``size`` is replaced by the image size at :meth:`prepare`.
        hfm: Fusion-module settings (sizes, UNet, optimiser, loss, selection).
        anomaly_mix: Content of the training anomalies: ``paper`` (Gaussian noise of ``ssa.noise_std``, the
            paper's), a preset of :mod:`visionad_multicore.synthetic.anomalies` (``mixed``, ``subtle``) or a
            dict of :class:`~visionad_multicore.synthetic.anomalies.AnomalyMix` settings.
        validation_mix: Content of the validation anomalies (same choices; default ``subtle``).
        seed: Seed of the split, the members, the masks, the synthetic sets and the HFM (offsets per use).
        device: Torch device of the backbone, the members and the UNet.
        batch_size: Images per backbone pass.
        cache_dtype: Dtype of the cached normalised synthetic heatmaps (``"float16"`` or ``"float32"``).
        progress: Show tqdm bars.
        knn_backend: k-NN search of every member: ``auto`` (faiss when installed, and on a GPU only a faiss
            GPU build; else chunked torch on ``device``), ``faiss`` or ``torch``.
    """

    def __init__(
        self,
        preset: str | Path | Preset | Mapping[str, Any] = "mc2",
        backbone: str = "efficientnet_lite0",
        backbone_weights: str | None = None,
        coreset_size: int = 25_000,
        k: int = 1,
        feature_dim: int = 1024,
        feature_aggregation: str = "auto",
        bank_share: float = 0.8,
        ssa: SSAConfig | None = None,
        hfm: HFMTrainConfig | None = None,
        anomaly_mix: str | Mapping[str, Any] = "mixed",
        validation_mix: str | Mapping[str, Any] = "subtle",
        seed: int = 0,
        device: str = "cpu",
        batch_size: int = 8,
        cache_dtype: str = "float16",
        progress: bool = True,
        knn_backend: str = "auto",
    ) -> None:
        self.preset = load_preset(preset)
        if not 0.0 < bank_share < 1.0:
            raise ValueError(f"MultiCore: bank_share must be in (0, 1), got {bank_share}")
        if batch_size < 1:
            raise ValueError(f"MultiCore: batch_size must be >= 1, got {batch_size}")
        if cache_dtype not in ("float16", "float32"):
            raise ValueError(f"MultiCore: cache_dtype must be 'float16' or 'float32', got {cache_dtype!r}")
        for name, mix in (("anomaly_mix", anomaly_mix), ("validation_mix", validation_mix)):
            if mix != PAPER_MIX:
                try:
                    resolve_mix(mix)
                except (TypeError, ValueError) as err:
                    raise ValueError(f"MultiCore: {name}: {err}") from err
        self.backbone = backbone
        self.backbone_weights = backbone_weights
        self.coreset_size = int(coreset_size)
        self.k = int(k)
        self.feature_dim = int(feature_dim)
        self.feature_aggregation = str(feature_aggregation)
        self.bank_share = float(bank_share)
        self.ssa = ssa or SSAConfig()
        self.hfm = hfm or HFMTrainConfig()
        self.anomaly_mix = anomaly_mix if isinstance(anomaly_mix, str) else dict(anomaly_mix)
        self.validation_mix = validation_mix if isinstance(validation_mix, str) else dict(validation_mix)
        self.seed = int(seed)
        self.device = check_device(str(device))
        self.knn_backend = check_backend(knn_backend)
        self.batch_size = int(batch_size)
        self.cache_dtype = cache_dtype
        self.progress = progress
        self.members = [self._make_member(spec, i) for i, spec in enumerate(self.preset.predictors)]
        self._feature_extractor: Any = None
        self._feature_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        self._trainer: HFMTrainer | None = None
        self._data: _FusionData | None = None
        self._fusion_stale = True
        # learned state
        self.input_mean_: tuple[float, ...] | None = None
        self.input_std_: tuple[float, ...] | None = None
        self.image_size_: tuple[int, int] | None = None
        self.bank_idx_: np.ndarray | None = None
        self.fusion_idx_: np.ndarray | None = None
        self.stats_mean_: Tensor | None = None  # (M,)
        self.stats_std_: Tensor | None = None  # (M,)
        self.fusion_: UNet | None = None  # what multicore uses; None: the ensemble mean
        self.hfm_: UNet | None = None  # the best trained epoch (multicore_hfm)
        self.selected_epoch_: int = MEAN_EPOCH
        self.selected_subset_: tuple[int, ...] | None = None  # multicore = the mean of these members
        self.hfm_best_epoch_: int | None = None
        self.hfm_epochs_: int = 0

    # ------------------------------------------------------------------ parameters
    @property
    def member_keys(self) -> list[str]:
        """Method names of the members (``p1_euclidean_p3_s1`` ...)."""
        return self.preset.member_keys

    def get_params(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (``MultiCore(**MultiCore.params_from_dict(p))`` rebuilds)."""
        return {
            "preset": self.preset.to_dict(),
            "backbone": self.backbone,
            "backbone_weights": self.backbone_weights,
            "coreset_size": self.coreset_size,
            "k": self.k,
            "feature_dim": self.feature_dim,
            "feature_aggregation": self.feature_aggregation,
            "bank_share": self.bank_share,
            "ssa": dataclasses.asdict(self.ssa),
            "hfm": self.hfm.to_dict(),
            "anomaly_mix": self.anomaly_mix,
            "validation_mix": self.validation_mix,
            "seed": self.seed,
            "device": self.device,
            "batch_size": self.batch_size,
            "cache_dtype": self.cache_dtype,
            "knn_backend": self.knn_backend,
        }

    @staticmethod
    def params_from_dict(params: Mapping[str, Any]) -> dict[str, Any]:
        """Turn :meth:`get_params`' output back into constructor arguments."""
        out = {"knn_backend": "auto", **params}  # states saved before knn_backend existed
        out["ssa"] = SSAConfig.from_dict(out["ssa"])
        # states saved before image_score_top existed scored a fused map by its maximum
        out["hfm"] = HFMTrainConfig.from_dict({"image_score_top": 0.0, **out["hfm"]})
        return out

    def _make_member(self, spec: PredictorSpec, index: int) -> PatchCorePlus:
        return spec.predictor(
            coreset_size=self.coreset_size,
            k=self.k,
            backbone=self.backbone,
            backbone_weights=self.backbone_weights,
            feature_dim=self.feature_dim,
            feature_aggregation=self.feature_aggregation,
            seed=self.seed + index,
            device=self.device,
            progress=self.progress,
            knn_backend=self.knn_backend,
        )

    def _new_unet(self) -> UNet:
        return build_unet(len(self.members), self.hfm, self.device)

    # ------------------------------------------------------------------ backbone
    def _extractor(self) -> Any:
        if self.input_mean_ is None or self.input_std_ is None:
            raise RuntimeError(
                "MultiCore: the input mean/std are unknown; call prepare() or load_state_dict()"
            )
        stats = (self.input_mean_, self.input_std_)
        if self._feature_extractor is None or self._feature_stats != stats:
            self._feature_extractor = build_backbone(
                self.backbone,
                weights=self.backbone_weights,
                device=self.device,
                input_mean=self.input_mean_,
                input_std=self.input_std_,
            )
            self._feature_stats = stats
        return self._feature_extractor

    @torch.no_grad()
    def _features(self, images: Tensor) -> list[Tensor]:
        """One backbone pass: ``(B, 3, H, W)`` -> list of layer maps (shared by every member)."""
        return list(self._extractor()(images.to(self.device, dtype=torch.float32)))

    @torch.no_grad()
    def member_maps(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Every member's own (unnormalised) heatmaps from one shared backbone pass.

        Args:
            images: ``(B, 3, H, W)`` normalised like the training images.

        Returns:
            ``(maps (B, M, H, W) float32 on CPU, [scores (B,) per member])``.
        """
        out_size = (int(images.shape[-2]), int(images.shape[-1]))
        features = self._features(images)
        maps, scores = [], []
        for member in self.members:
            prediction = member.predict_features(features, out_size)
            maps.append(torch.as_tensor(prediction.heatmaps).float().cpu())
            scores.append(torch.as_tensor(prediction.scores).float().cpu())
        return torch.stack(maps, dim=1), scores

    def _batches(self, n: int, desc: str) -> Any:
        return tqdm(range(0, n, self.batch_size), desc=desc, leave=False, disable=not self.progress)

    # ------------------------------------------------------------------ preparation
    def prepare(self, train_images: Tensor, mean: Sequence[float], std: Sequence[float]) -> MultiCore:
        """Fit the banks and the normalisation statistics, make and score the synthetic sets, set up the HFM.

        Args:
            train_images: Nominal training images ``(N, 3, H, W)``, normalised with ``mean`` / ``std`` and
                resized exactly as test images will be (VisionAD's training loader items).
            mean: Per-channel mean the images were normalised with.
            std: Per-channel std the images were normalised with.

        Returns:
            ``self``.
        """
        if train_images.ndim != 4 or train_images.shape[1] != 3:
            raise ValueError(
                f"MultiCore.prepare: expected images (N, 3, H, W), got {tuple(train_images.shape)}"
            )
        train_images = train_images.detach().float().cpu()
        self.input_mean_ = tuple(float(v) for v in mean)
        self.input_std_ = tuple(float(v) for v in std)
        self.image_size_ = (int(train_images.shape[-2]), int(train_images.shape[-1]))
        self.bank_idx_, self.fusion_idx_ = split_bank_fusion(len(train_images), self.bank_share, self.seed)
        logger.info(
            "MultiCore %s: %d training images -> %d in the memory banks, %d for the fusion module",
            self.preset.name,
            len(train_images),
            len(self.bank_idx_),
            len(self.fusion_idx_),
        )

        # 1. memory banks from clean bank-share images: one backbone pass per batch feeds every member's
        # streaming bank builder (no backbone maps are kept); the members share one memory budget
        bank_images = train_images[self.bank_idx_]
        budget = MemoryBudget()
        with contextlib.ExitStack() as stack:
            builders = [
                stack.enter_context(member.bank_builder(len(bank_images), budget, label=f"bank of {key}"))
                for key, member in zip(self.member_keys, self.members)
            ]
            for s in self._batches(len(bank_images), "Bank features"):
                maps = self._features(bank_images[s : s + self.batch_size])
                for member, builder in zip(self.members, builders):
                    member.add_to_bank(builder, maps)
            for key, member, builder in zip(self.member_keys, self.members, builders):
                logger.info("Fitting the memory bank of %s", key)
                member.fit_bank(builder)

        # 2. normalisation statistics from the clean fusion-share images
        fusion_images = train_images[self.fusion_idx_]
        clean = torch.cat(
            [
                self.member_maps(fusion_images[s : s + self.batch_size])[0]
                for s in self._batches(len(fusion_images), "Clean fusion maps")
            ]
        )  # (F, M, H, W)
        self.stats_mean_, self.stats_std_ = normalisation_stats(clean, dims=(0, 2, 3))  # (M,), (M,)
        logger.info(
            "Member normalisation (mean, std): %s",
            {
                k: (round(float(m), 5), round(float(s), 5))
                for k, m, s in zip(self.member_keys, self.stats_mean_, self.stats_std_)
            },
        )
        nominal = self._normalise(clean).to(torch.float16 if self.cache_dtype == "float16" else torch.float32)
        del clean

        # 3. training and validation synthetic sets from fusion-share images, scored by every member
        n_train, n_val = self.hfm.sizes
        train_set = self._synthetic_set(fusion_images, n_train, self.anomaly_mix, self.seed)
        val_set = self._synthetic_set(fusion_images, n_val, self.validation_mix, self.seed + 1)
        train_maps, train_masks = self._score(train_set, "Synthetic maps (training)")
        val_maps, val_masks = self._score(val_set, "Synthetic maps (validation)")
        train_work, train_targets = self._to_work_size(train_maps, train_masks)
        del train_maps
        val_work, val_targets = self._to_work_size(val_maps, val_masks)
        self._data = _FusionData(
            train_work,
            train_targets,
            val_work,
            val_targets,
            ValidationData(val_maps, val_masks > 0.5, nominal),
        )
        logger.info(
            "HFM data: %d training items at %s, %d validation items at %s (+%d clean images)",
            n_train,
            tuple(train_work.shape[-2:]),
            n_val,
            tuple(val_maps.shape[-2:]),
            len(nominal),
        )

        # 4. the fusion module
        self._start_training()
        return self

    def _synthetic_set(
        self, images: Tensor, size: int, mix: str | Mapping[str, Any], seed: int
    ) -> SyntheticAnomalySet:
        """A synthetic set with its own SSA masks (drawn at the model input size when square) and seed."""
        assert self.image_size_ is not None and self.input_mean_ is not None and self.input_std_ is not None
        square = self.image_size_[0] == self.image_size_[1]
        ssa = dataclasses.replace(self.ssa, size=self.image_size_[0]) if square else self.ssa
        masks = generate_masks(ssa, seed=seed, progress=self.progress)
        return SyntheticAnomalySet(
            images,
            self.input_mean_,
            self.input_std_,
            masks,
            size=size,
            noise_std=ssa.noise_std,
            per_channel=ssa.per_channel,
            seed=seed,
            mix=None if mix == PAPER_MIX else mix,
        )

    def _score(self, synthetic: SyntheticAnomalySet, desc: str) -> tuple[Tensor, Tensor]:
        """Normalised member maps ``(S, M, H, W)`` (cache dtype) and float masks ``(S, 1, H, W)`` of a set."""
        maps, masks = [], []
        for s in self._batches(len(synthetic), desc):
            images, m = synthetic.tensors(range(s, min(s + self.batch_size, len(synthetic))))
            maps.append(self._normalise(self.member_maps(images)[0]))
            masks.append(m)
        dtype = torch.float16 if self.cache_dtype == "float16" else torch.float32
        return torch.cat(maps).to(dtype), torch.cat(masks)

    def _to_work_size(self, maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """Maps and soft targets at the HFM's work size (area averages), or as they are."""
        if not self.hfm.work_size:
            return maps, masks.to(torch.float16)
        size = (self.hfm.work_size, self.hfm.work_size)
        work = torch.cat(
            [F.interpolate(maps[s : s + 64].float(), size=size, mode="area") for s in range(0, len(maps), 64)]
        )
        targets = F.interpolate(masks.float(), size=size, mode="area")
        return work.to(maps.dtype), targets.to(torch.float16)

    def _start_training(self) -> None:
        assert self._data is not None
        self._trainer = HFMTrainer(
            len(self.members), self.hfm, self._data.validation, self.device, self.member_keys, self.progress
        )
        self.fusion_, self.hfm_ = None, self._trainer.trained_model()
        self.selected_epoch_, self.hfm_best_epoch_, self.hfm_epochs_ = MEAN_EPOCH, None, 0
        self.selected_subset_ = self._trainer.selected_subset
        self._fusion_stale = False

    @property
    def is_prepared(self) -> bool:
        """Whether :meth:`prepare` ran in this instance (training is possible)."""
        return self._trainer is not None

    def _normalise(self, maps: Tensor) -> Tensor:
        """``(B, M, H, W)`` raw member maps -> per-member standardised maps."""
        if self.stats_mean_ is None or self.stats_std_ is None:
            raise RuntimeError("MultiCore is not fitted: call prepare() or load_state_dict() first")
        mean = self.stats_mean_.to(maps.device)[None, :, None, None]
        return (maps - mean) / self.stats_std_.to(maps.device)[None, :, None, None]

    # ------------------------------------------------------------------ HFM training
    def train_epoch(self) -> EpochRecord:
        """Train the HFM for one epoch on the synthetic cache (after :meth:`prepare`)."""
        if self._trainer is None or self._data is None:
            raise RuntimeError(
                "MultiCore.train_epoch: call prepare() first (a loaded model cannot be trained)"
            )
        d = self._data
        record = self._trainer.run_epoch(d.train_maps, d.train_targets, d.val_work_maps, d.val_work_targets)
        self.hfm_epochs_ = self._trainer.epoch
        self._fusion_stale = True
        return record

    @property
    def history(self) -> list[EpochRecord]:
        """Records of the HFM epochs run in this instance."""
        return [] if self._trainer is None else list(self._trainer.history)

    def validation_summary(self) -> dict[str, Any]:
        """The validation scores of the ensemble mean and of each member (empty when not prepared here)."""
        if self._trainer is None:
            return {}
        return {
            "selection_metric": self.hfm.selection_metric,
            "ensemble_mean": self._trainer.mean_validation.to_dict(),
            "members": {k: v.to_dict() for k, v in self._trainer.member_validation.items()},
        }

    def history_summary(self) -> dict[str, Any]:
        """What ``multicore`` is, in plain words, the validation baselines and every epoch (JSON-ready)."""
        self.finalize()
        label = self._selection_key()
        if self.fusion_ is not None:
            explanation = f"HFM epoch {self.selected_epoch_} beat the ensemble mean on the validation set"
        elif self.selected_subset_ is not None:
            explanation = (
                f"the mean of {[self.member_keys[i] for i in self.selected_subset_]} beat the ensemble mean on the "
                "validation set and no trained HFM epoch beat it, so multicore is that mean"
            )
        else:
            explanation = (
                "neither a trained HFM epoch nor a subset of the members beat the ensemble mean on the validation "
                "set, so multicore is the ensemble mean"
            )
        subsets = {} if self._trainer is None else self._trainer.subset_validation
        calibration = None if self._trainer is None else self._trainer.calibration
        return {
            "multicore_is": label,
            "explanation": explanation,
            "member_subsets": {
                "+".join(self.member_keys[i] for i in subset): {
                    **result.to_dict(),
                    "gain_confidence": confidence,
                }
                for subset, (result, confidence) in subsets.items()
            },
            "multicore_hfm_epoch": self.hfm_best_epoch_,
            "epochs_trained": self.hfm_epochs_,
            "selection_metric": self.hfm.selection_metric,
            "output_calibration": None
            if calibration is None
            else {"steps": self.hfm.calibration_steps, "scale": calibration[0], "offset": calibration[1]},
            "validation_before_training": self.validation_summary(),
            "epochs": [
                {
                    "epoch": r.epoch,
                    "train_loss": r.train_loss,
                    "validation": r.validation.to_dict(),
                    "is_candidate": r.is_candidate,
                    "is_best_trained": r.is_best_trained,
                    "gain_confidence": r.gain_confidence,
                    "multicore_is": r.selected_label,
                }
                for r in self.history
            ],
        }

    def _selection_key(self) -> str:
        if self.fusion_ is not None:
            return f"hfm_epoch_{self.selected_epoch_}"
        if self.selected_subset_ is not None:
            return "mean_of:" + "+".join(self.member_keys[i] for i in self.selected_subset_)
        return "ensemble_mean"

    def finalize(self) -> None:
        """Put the chosen module (or the mean) and the best trained epoch into use (cheap; before predict)."""
        if self._trainer is not None and self._fusion_stale:
            self.fusion_ = self._trainer.selected_model()
            self.hfm_ = self._trainer.trained_model()
            self.selected_epoch_ = self._trainer.selected_epoch
            self.selected_subset_ = self._trainer.selected_subset
            self.hfm_best_epoch_ = self._trainer.best_trained_epoch
            self._fusion_stale = False
            logger.info(
                "multicore = %s; multicore_hfm = %s",
                self._selection_key(),
                "the untrained module"
                if self.hfm_best_epoch_ is None
                else f"HFM epoch {self.hfm_best_epoch_}",
            )

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, images: Tensor) -> MultiCoreOutput:
        """Score images: one backbone pass, every member, normalisation, mean and HFM.

        Args:
            images: ``(B, 3, H, W)`` normalised like the training images.

        Returns:
            :class:`MultiCoreOutput` with ``(B, H, W)`` maps and ``(B,)`` scores on the CPU (float32).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"MultiCore.predict: expected images (B, 3, H, W), got {tuple(images.shape)}")
        if self.stats_mean_ is None:
            raise RuntimeError("MultiCore is not fitted: call prepare() or load_state_dict() first")
        return self.fuse(*self.member_maps(images))

    @torch.no_grad()
    def fuse(self, raw: Tensor, member_scores: Sequence[Tensor]) -> MultiCoreOutput:
        """Ensemble outputs from the members' own maps (what :meth:`predict` does after :meth:`member_maps`).

        Args:
            raw: Members' unnormalised heatmaps ``(B, M, H, W)``, in member order.
            member_scores: Each member's image scores ``(B,)``.

        Returns:
            :class:`MultiCoreOutput`.
        """
        self.finalize()
        if self.hfm_ is None or self.stats_mean_ is None:
            raise RuntimeError("MultiCore is not fitted: call prepare() or load_state_dict() first")
        n = len(self.members)
        if raw.ndim != 4 or raw.shape[1] != n or len(member_scores) != n:
            raise ValueError(
                f"MultiCore.fuse: expected ({n} members) maps (B, {n}, H, W) and {n} score vectors, got "
                f"{tuple(raw.shape)} and {len(member_scores)}"
            )
        raw = raw.float()
        normalised = self._normalise(raw.to(self.device))  # (B, M, H, W), on the device like the UNet
        mean = normalised.mean(dim=1)  # (B, H, W)
        hfm = self._apply(self.hfm_, normalised)
        if self.fusion_ is None:
            subset = self.selected_subset_
            fused = mean.cpu() if subset is None else normalised[:, list(subset)].mean(dim=1).cpu()
        elif self.selected_epoch_ == self.hfm_best_epoch_:
            fused = hfm
        else:
            fused = self._apply(self.fusion_, normalised)
        mean, raw = mean.cpu(), raw.cpu()
        top = self.hfm.image_score_top
        return MultiCoreOutput(
            fused=fused,
            fused_scores=map_image_scores(fused, top),
            hfm=hfm,
            hfm_scores=map_image_scores(hfm, top),
            mean=mean,
            mean_scores=map_image_scores(mean, top),
            member_heatmaps={key: raw[:, i] for i, key in enumerate(self.member_keys)},
            member_scores={
                key: torch.as_tensor(v).float().cpu() for key, v in zip(self.member_keys, member_scores)
            },
        )

    def _apply(self, unet: UNet, normalised: Tensor) -> Tensor:
        unet.eval()
        return unet(normalised.to(self.device)).float().cpu()[:, 0]  # (B, H, W)

    def subset(self, n_members: int, name: str | None = None) -> MultiCore:
        """A prepared ensemble of the first ``n_members`` members that reuses this one's work.

        The fitted banks, the normalisation statistics and the synthetic caches (their first ``n_members``
        channels) are shared; the HFM is new and untrained. Because members are seeded by position,
        ``MultiCore("mc4").prepare(x).subset(2)`` has exactly the banks, statistics and caches that
        ``MultiCore("mc2").prepare(x)`` would build; only the HFM differs if trained differently.

        Args:
            n_members: Number of leading members kept (1 .. M).
            name: Name of the new preset (default ``<name>_first<n>``).
        """
        if not self.is_prepared or self._data is None:
            raise RuntimeError("MultiCore.subset: call prepare() first")
        if not 1 <= n_members <= len(self.members):
            raise ValueError(
                f"MultiCore.subset: n_members must be in 1..{len(self.members)}, got {n_members}"
            )
        preset = Preset(name or f"{self.preset.name}_first{n_members}", self.preset.predictors[:n_members])
        params = MultiCore.params_from_dict(self.get_params())
        params["preset"] = preset
        other = MultiCore(**params, progress=self.progress)
        other.members = self.members[:n_members]
        other._feature_extractor, other._feature_stats = self._feature_extractor, self._feature_stats
        other.input_mean_, other.input_std_ = self.input_mean_, self.input_std_
        other.image_size_ = self.image_size_
        other.bank_idx_, other.fusion_idx_ = self.bank_idx_, self.fusion_idx_
        assert self.stats_mean_ is not None and self.stats_std_ is not None
        other.stats_mean_ = self.stats_mean_[:n_members].clone()
        other.stats_std_ = self.stats_std_[:n_members].clone()
        other._data = self._data.subset(n_members)
        other._start_training()
        return other

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`predict` needs: params, banks, statistics, the UNets' weights and the choice.

        The synthetic caches and the optimiser are not saved: a loaded model predicts but does not train.
        """
        self.finalize()
        if self.hfm_ is None or self.stats_mean_ is None or self.stats_std_ is None:
            raise RuntimeError("MultiCore.state_dict: nothing to save, the model is not fitted")

        def weights(unet: UNet | None) -> dict[str, Tensor] | None:
            return (
                None if unet is None else {k: v.detach().cpu().clone() for k, v in unet.state_dict().items()}
            )

        return {
            "format": STATE_FORMAT,
            "params": self.get_params(),
            "input_mean": list(self.input_mean_ or ()),
            "input_std": list(self.input_std_ or ()),
            "image_size": list(self.image_size_ or ()),
            "bank_idx": torch.as_tensor(self.bank_idx_),
            "fusion_idx": torch.as_tensor(self.fusion_idx_),
            "stats_mean": self.stats_mean_.clone(),
            "stats_std": self.stats_std_.clone(),
            "members": [member.state_dict() for member in self.members],
            "unet_hfm": weights(self.hfm_),
            "unet_selected": weights(self.fusion_),
            "selected_epoch": self.selected_epoch_,
            "selected_subset": None if self.selected_subset_ is None else list(self.selected_subset_),
            "hfm_best_epoch": -1 if self.hfm_best_epoch_ is None else self.hfm_best_epoch_,
            "hfm_epochs": self.hfm_epochs_,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> MultiCore:
        """Restore a :meth:`state_dict` into this instance (built with the same params)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"MultiCore.load_state_dict: unsupported state format {state.get('format')!r} (this version reads "
                f"{STATE_FORMAT}; retrain the model)"
            )
        saved = MultiCore.params_from_dict(state["params"])
        mine = MultiCore.params_from_dict(self.get_params())
        for how in ("device", "knn_backend"):  # where and how the banks are searched, not what they hold
            saved.pop(how, None)
            mine.pop(how, None)
        if saved != mine:
            diff = sorted(k for k in saved if saved[k] != mine.get(k))
            raise ValueError(f"MultiCore.load_state_dict: the state was saved with other parameters ({diff})")
        if len(state["members"]) != len(self.members):
            raise ValueError(
                f"MultiCore.load_state_dict: {len(state['members'])} members saved, {len(self.members)} built"
            )
        self.input_mean_ = tuple(float(v) for v in state["input_mean"])
        self.input_std_ = tuple(float(v) for v in state["input_std"])
        self.image_size_ = (int(state["image_size"][0]), int(state["image_size"][1]))
        self.bank_idx_ = np.asarray(state["bank_idx"], dtype=np.int64)
        self.fusion_idx_ = np.asarray(state["fusion_idx"], dtype=np.int64)
        self.stats_mean_ = state["stats_mean"].float().clone()
        self.stats_std_ = state["stats_std"].float().clone()
        for member, member_state in zip(self.members, state["members"]):
            member.load_state_dict(member_state)

        def unet(weights: Mapping[str, Tensor] | None) -> UNet | None:
            if weights is None:
                return None
            model = self._new_unet()
            model.load_state_dict(weights)
            return model.eval()

        self.hfm_ = unet(state["unet_hfm"])
        self.fusion_ = unet(state["unet_selected"])
        self.selected_epoch_ = int(state["selected_epoch"])
        subset = state.get("selected_subset")
        self.selected_subset_ = None if subset is None else tuple(int(i) for i in subset)
        best = int(state.get("hfm_best_epoch", -1))
        self.hfm_best_epoch_ = None if best < 0 else best
        self.hfm_epochs_ = int(state.get("hfm_epochs", 0))
        self._trainer, self._data = None, None
        self._fusion_stale = False
        return self

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Any], device: str | None = None, progress: bool = True
    ) -> MultiCore:
        """Build a fresh instance from a :meth:`state_dict` (optionally on another device)."""
        params = cls.params_from_dict(state["params"])
        if device is not None:
            params["device"] = device
        return cls(**params, progress=progress).load_state_dict(state)
