"""MultiCore: an ensemble of Patchcore+ predictors fused by the Heatmap Fusion Module (HFM).

The core knows nothing about VisionAD; :mod:`visionad_multicore.algorithms.multicore` adapts it.

Pipeline (SPEC section 3):

1. :meth:`MultiCore.prepare` splits the training images, seeded, into a **bank share** and a **fusion share**
   (default 80 / 20, :func:`visionad_multicore.synthetic.dataset.split_bank_fusion`). Every member's memory
   bank is fitted on the bank share only, from clean images (no synthetic-anomaly hook exists anywhere on
   this path). Synthetic anomalies are made only from fusion-share images: an image that is also in the
   bank scoring it matches itself in its clean regions, unlike a test image (a mistake of the reference
   code, which also left its noise hook on the loader feeding the bank).
2. Each member's heatmaps of the clean fusion-share images give that member's normalisation mean and std
   (over all pixels); heatmaps are normalised as ``(h - mean) / std`` before fusion and averaging.
3. The synthetic set (SSA masks, Gaussian noise) is scored once by every member; the normalised maps are
   cached in memory as float16 (``S * M * H * W * 2`` bytes: 4000 images, MC8, 256 px = 4.2 GB), at the
   HFM's ``work_size`` when one is set (a CPU compromise; validation is then still at full size).
4. :meth:`MultiCore.train_epoch` trains the UNet for one epoch on the cache; a held-out validation split of
   the synthetic set picks the checkpoint used by :meth:`predict`. No test image is seen before evaluation.

All members share one backbone pass per image. :meth:`predict` returns the fused map (``multicore``), the
mean of the normalised maps (``ensemble_mean``) and every member's own map, so one run is its own ablation.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor
from tqdm.auto import tqdm

from visionad_multicore.fusion.train import EpochRecord, HFMTrainConfig, HFMTrainer, split_train_validation
from visionad_multicore.fusion.unet import UNet
from visionad_multicore.patchcore.backbone import build_backbone
from visionad_multicore.patchcore.distances import check_distance
from visionad_multicore.patchcore.predictor import PatchCorePlus
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

PRESET_DIR = Path(__file__).resolve().parent / "presets"
PRESETS: tuple[str, ...] = ("mc2", "mc4", "mc8")
STATE_FORMAT = 1
_STD_FLOOR = 1e-8


# ---------------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class PredictorSpec:
    """One Patchcore+ member: distance, patch size and patch stride."""

    distance: str
    patch_size: int
    stride: int

    def __post_init__(self) -> None:
        check_distance(self.distance)
        for name in ("patch_size", "stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PredictorSpec.{name} must be an integer >= 1, got {value!r}")

    def key(self, position: int) -> str:
        """Method name of the member at 1-based ``position``, e.g. ``p1_euclidean_p3_s1``."""
        return f"p{position}_{self.distance}_p{self.patch_size}_s{self.stride}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Preset:
    """A named list of predictors; ``{name: mc2, predictors: [{distance, patch_size, stride}, ...]}`` in YAML."""

    name: str
    predictors: tuple[PredictorSpec, ...]

    def __post_init__(self) -> None:
        if not self.predictors:
            raise ValueError(f"preset {self.name!r} has no predictors")

    @property
    def member_keys(self) -> list[str]:
        """Method names of the members, in order."""
        return [spec.key(i + 1) for i, spec in enumerate(self.predictors)]

    def to_dict(self) -> dict[str, Any]:
        """The YAML / JSON form."""
        return {"name": self.name, "predictors": [spec.to_dict() for spec in self.predictors]}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "<dict>") -> Preset:
        """Build from the YAML form; unknown or missing keys are errors naming ``source``."""
        if not isinstance(values, Mapping):
            raise ValueError(f"{source}: a preset must be a mapping with keys 'name' and 'predictors'")
        unknown = sorted(set(values) - {"name", "predictors"})
        if unknown:
            raise ValueError(
                f"{source}: unknown preset keys {unknown}; valid keys are ['name', 'predictors']"
            )
        if "predictors" not in values or not isinstance(values["predictors"], Sequence):
            raise ValueError(f"{source}: 'predictors' must be a list of {{distance, patch_size, stride}}")
        valid = [f.name for f in dataclasses.fields(PredictorSpec)]
        specs = []
        for i, item in enumerate(values["predictors"]):
            if not isinstance(item, Mapping) or set(item) != set(valid):
                raise ValueError(
                    f"{source}: predictor {i + 1} must have exactly the keys {valid}, got {item!r}"
                )
            try:
                specs.append(PredictorSpec(**item))
            except ValueError as err:
                raise ValueError(f"{source}: predictor {i + 1}: {err}") from err
        return cls(name=str(values.get("name", Path(source).stem)), predictors=tuple(specs))


def load_preset(preset: str | Path | Preset | Mapping[str, Any]) -> Preset:
    """Resolve a preset: a built-in name (``mc2``, ``mc4``, ``mc8``), a path to a YAML file, or its dict form.

    Raises:
        ValueError: unknown name (the message lists the built-in ones) or a malformed file.
    """
    if isinstance(preset, Preset):
        return preset
    if isinstance(preset, Mapping):
        return Preset.from_dict(preset)
    text = str(preset)
    if text.lower() in PRESETS:
        path = PRESET_DIR / f"{text.lower()}.yaml"
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ValueError(f"unknown preset {text!r}: not one of {list(PRESETS)} and no such YAML file")
    with open(path) as f:
        values = yaml.safe_load(f)
    return Preset.from_dict(values, source=str(path))


# ---------------------------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class MultiCoreOutput:
    """Everything MultiCore gives for a batch of images.

    Attributes:
        fused: HFM output ``(N, H, W)``; the ``multicore`` method.
        fused_scores: ``(N,)`` max of ``fused``.
        mean: Mean of the normalised member maps ``(N, H, W)``; the ``ensemble_mean`` method.
        mean_scores: ``(N,)`` max of ``mean``.
        member_heatmaps: Member key -> that member's own (unnormalised) heatmaps ``(N, H, W)``.
        member_scores: Member key -> that member's image scores ``(N,)``.
    """

    fused: Tensor
    fused_scores: Tensor
    mean: Tensor
    mean_scores: Tensor
    member_heatmaps: dict[str, Tensor]
    member_scores: dict[str, Tensor]

    def methods(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(heatmaps, scores)`` keyed by method name: ``multicore``, ``ensemble_mean``, then each member."""
        heatmaps = {"multicore": self.fused, "ensemble_mean": self.mean, **self.member_heatmaps}
        scores = {"multicore": self.fused_scores, "ensemble_mean": self.mean_scores, **self.member_scores}
        return heatmaps, scores


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
            ``wideresnet50``, ``local_mean`` otherwise; see :mod:`visionad_multicore.patchcore.patches`).
        bank_share: Share of the training images in the memory banks; the rest makes the synthetic set.
        ssa: Synthetic-anomaly settings; its ``size`` is replaced by the image size at :meth:`prepare`.
        hfm: Fusion-module settings (``synthetic_size``, UNet, optimiser, validation split).
        seed: Seed of the split, the members, the masks, the synthetic set and the HFM (offsets per use).
        device: Torch device of the backbone, the members and the UNet.
        batch_size: Images per backbone pass.
        cache_dtype: Dtype of the cached normalised synthetic heatmaps (``"float16"`` or ``"float32"``).
        progress: Show tqdm bars.
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
        seed: int = 0,
        device: str = "cpu",
        batch_size: int = 8,
        cache_dtype: str = "float16",
        progress: bool = True,
    ) -> None:
        self.preset = load_preset(preset)
        if not 0.0 < bank_share < 1.0:
            raise ValueError(f"MultiCore: bank_share must be in (0, 1), got {bank_share}")
        if batch_size < 1:
            raise ValueError(f"MultiCore: batch_size must be >= 1, got {batch_size}")
        if cache_dtype not in ("float16", "float32"):
            raise ValueError(f"MultiCore: cache_dtype must be 'float16' or 'float32', got {cache_dtype!r}")
        self.backbone = backbone
        self.backbone_weights = backbone_weights
        self.coreset_size = int(coreset_size)
        self.k = int(k)
        self.feature_dim = int(feature_dim)
        self.feature_aggregation = str(feature_aggregation)
        self.bank_share = float(bank_share)
        self.ssa = ssa or SSAConfig()
        self.hfm = hfm or HFMTrainConfig()
        self.seed = int(seed)
        self.device = str(device)
        self.batch_size = int(batch_size)
        self.cache_dtype = cache_dtype
        self.progress = progress
        self.members = [self._make_member(spec, i) for i, spec in enumerate(self.preset.predictors)]
        self._feature_extractor: Any = None
        self._feature_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        self._trainer: HFMTrainer | None = None
        self._cache: tuple[Tensor, Tensor] | None = None  # (S, M, h, w) normalised maps, (S, 1, h, w) targets
        self._labels: Tensor | None = None  # (S, 1, H, W) bool masks when the HFM works below (H, W)
        self._train_idx: np.ndarray | None = None
        self._val_idx: np.ndarray | None = None
        self._fusion_stale = True
        # learned state
        self.input_mean_: tuple[float, ...] | None = None
        self.input_std_: tuple[float, ...] | None = None
        self.image_size_: tuple[int, int] | None = None
        self.bank_idx_: np.ndarray | None = None
        self.fusion_idx_: np.ndarray | None = None
        self.stats_mean_: Tensor | None = None  # (M,)
        self.stats_std_: Tensor | None = None  # (M,)
        self.fusion_: UNet | None = None
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
            "seed": self.seed,
            "device": self.device,
            "batch_size": self.batch_size,
            "cache_dtype": self.cache_dtype,
        }

    @staticmethod
    def params_from_dict(params: Mapping[str, Any]) -> dict[str, Any]:
        """Turn :meth:`get_params`' output back into constructor arguments."""
        out = dict(params)
        out["ssa"] = SSAConfig.from_dict(out["ssa"])
        out["hfm"] = HFMTrainConfig.from_dict(out["hfm"])
        return out

    def _make_member(self, spec: PredictorSpec, index: int) -> PatchCorePlus:
        return PatchCorePlus(
            patch_size=spec.patch_size,
            stride=spec.stride,
            distance=spec.distance,
            coreset_size=self.coreset_size,
            k=self.k,
            backbone=self.backbone,
            backbone_weights=self.backbone_weights,
            feature_dim=self.feature_dim,
            feature_aggregation=self.feature_aggregation,
            seed=self.seed + index,
            device=self.device,
            progress=self.progress,
        )

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
        """Fit the banks, the normalisation statistics and the synthetic cache; set up HFM training.

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

        # 1. memory banks from clean bank-share images, one backbone pass per image for all members
        bank_images = train_images[self.bank_idx_]
        bank_features = [
            [f.cpu() for f in self._features(bank_images[s : s + self.batch_size])]
            for s in self._batches(len(bank_images), "Bank features")
        ]
        for key, member in zip(self.member_keys, self.members):
            logger.info("Fitting the memory bank of %s", key)
            member.fit_features([[f.to(self.device) for f in batch] for batch in bank_features])
        del bank_features

        # 2. normalisation statistics from the clean fusion-share images
        fusion_images = train_images[self.fusion_idx_]
        clean = torch.cat(
            [
                self.member_maps(fusion_images[s : s + self.batch_size])[0]
                for s in self._batches(len(fusion_images), "Clean fusion maps")
            ]
        )  # (F, M, H, W)
        self.stats_mean_ = clean.double().mean(dim=(0, 2, 3)).float()  # (M,)
        self.stats_std_ = clean.double().std(dim=(0, 2, 3)).float().clamp_min(_STD_FLOOR)  # (M,)
        logger.info(
            "Member normalisation (mean, std): %s",
            {
                k: (round(float(m), 5), round(float(s), 5))
                for k, m, s in zip(self.member_keys, self.stats_mean_, self.stats_std_)
            },
        )

        # 3. synthetic set from fusion-share images only, scored by every member, cached normalised
        # masks drawn at the model input size (non-square inputs: at ssa.size, resized NEAREST by the set)
        square = self.image_size_[0] == self.image_size_[1]
        ssa = dataclasses.replace(self.ssa, size=self.image_size_[0]) if square else self.ssa
        mask_set = generate_masks(ssa, seed=self.seed, progress=self.progress)
        synthetic = SyntheticAnomalySet(
            fusion_images,
            self.input_mean_,
            self.input_std_,
            mask_set,
            size=self.hfm.synthetic_size,
            noise_std=ssa.noise_std,
            per_channel=ssa.per_channel,
            seed=self.seed,
        )
        n_members, (height, width) = len(self.members), self.image_size_
        work = (self.hfm.work_size, self.hfm.work_size) if self.hfm.work_size else (height, width)
        dtype = torch.float16 if self.cache_dtype == "float16" else torch.float32
        cache_maps = torch.empty((len(synthetic), n_members, *work), dtype=dtype)  # (S, M, h, w)
        cache_targets = torch.empty((len(synthetic), 1, *work), dtype=torch.float16)  # (S, 1, h, w) in [0, 1]
        labels = (
            torch.empty((len(synthetic), 1, height, width), dtype=torch.bool) if self.hfm.work_size else None
        )  # full-size masks for the validation AUROC when the HFM works at a lower resolution
        logger.info(
            "Scoring %d synthetic images with %d members (cache %.1f MB at %dx%d)",
            len(synthetic),
            n_members,
            cache_maps.numel() * cache_maps.element_size() / 2**20,
            *work,
        )
        for s in self._batches(len(synthetic), "Synthetic maps"):
            idx = list(range(s, min(s + self.batch_size, len(synthetic))))
            images, masks = synthetic.tensors(idx)  # (b, 3, H, W), (b, 1, H, W)
            normalised = self._normalise(self.member_maps(images)[0])  # (b, M, H, W)
            if labels is not None:
                labels[s : s + len(idx)] = masks > 0.5
                normalised = F.interpolate(normalised, size=work, mode="area")
                masks = F.interpolate(masks, size=work, mode="area")  # soft targets at the work size
            cache_maps[s : s + len(idx)] = normalised.to(dtype)
            cache_targets[s : s + len(idx)] = masks.to(torch.float16)
        self._cache = (cache_maps, cache_targets)
        self._labels = labels
        self._train_idx, self._val_idx = split_train_validation(
            len(synthetic), self.hfm.validation_fraction, self.seed
        )

        # 4. the fusion module
        self._trainer = HFMTrainer(n_members, self.hfm, self.device)
        self.fusion_ = self._trainer.best_model()
        self.hfm_best_epoch_ = None
        self.hfm_epochs_ = 0
        self._fusion_stale = False
        return self

    @property
    def is_prepared(self) -> bool:
        """Whether :meth:`prepare` ran in this instance (training is possible)."""
        return self._trainer is not None

    def _normalise(self, maps: Tensor) -> Tensor:
        """``(B, M, H, W)`` raw member maps -> per-member standardised maps."""
        if self.stats_mean_ is None or self.stats_std_ is None:
            raise RuntimeError("MultiCore is not fitted: call prepare() or load_state_dict() first")
        return (maps - self.stats_mean_[None, :, None, None]) / self.stats_std_[None, :, None, None]

    # ------------------------------------------------------------------ HFM training
    def train_epoch(self) -> EpochRecord:
        """Train the HFM for one epoch on the synthetic cache (after :meth:`prepare`)."""
        if self._trainer is None or self._cache is None or self._train_idx is None or self._val_idx is None:
            raise RuntimeError(
                "MultiCore.train_epoch: call prepare() first (a loaded model cannot be trained)"
            )
        record = self._trainer.run_epoch(
            *self._cache, self._train_idx, self._val_idx, progress=self.progress, labels=self._labels
        )
        self.hfm_epochs_ = self._trainer.epoch
        self._fusion_stale = True
        return record

    @property
    def history(self) -> list[EpochRecord]:
        """Records of the HFM epochs run in this instance."""
        return [] if self._trainer is None else list(self._trainer.history)

    def finalize(self) -> None:
        """Load the best-validation HFM checkpoint into the inference UNet (cheap; called before predict)."""
        if self._trainer is not None and self._fusion_stale:
            self.fusion_ = self._trainer.best_model()
            self.hfm_best_epoch_ = self._trainer.best_epoch
            self._fusion_stale = False

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
        if self.fusion_ is None or self.stats_mean_ is None:
            raise RuntimeError("MultiCore is not fitted: call prepare() or load_state_dict() first")
        if raw.ndim != 4 or raw.shape[1] != len(self.members) or len(member_scores) != len(self.members):
            raise ValueError(
                f"MultiCore.fuse: expected ({len(self.members)} members) maps (B, {len(self.members)}, H, W) and "
                f"{len(self.members)} score vectors, got {tuple(raw.shape)} and {len(member_scores)}"
            )
        raw = raw.float().cpu()
        normalised = self._normalise(raw)
        self.fusion_.eval()
        fused = self.fusion_(normalised.to(self.device)).float().cpu()[:, 0]  # (B, H, W)
        mean = normalised.mean(dim=1)  # (B, H, W)
        return MultiCoreOutput(
            fused=fused,
            fused_scores=fused.amax(dim=(1, 2)),
            mean=mean,
            mean_scores=mean.amax(dim=(1, 2)),
            member_heatmaps={key: raw[:, i] for i, key in enumerate(self.member_keys)},
            member_scores={
                key: torch.as_tensor(v).float().cpu() for key, v in zip(self.member_keys, member_scores)
            },
        )

    def subset(self, n_members: int, name: str | None = None) -> MultiCore:
        """A prepared ensemble of the first ``n_members`` members that reuses this one's work.

        The fitted banks, the normalisation statistics, the synthetic cache (its first ``n_members`` channels)
        and its train / validation split are shared; the HFM is new and untrained. Because members are
        seeded by position, ``MultiCore("mc4").prepare(x).subset(2)`` has exactly the banks, statistics and
        cache that ``MultiCore("mc2").prepare(x)`` would build; only the HFM differs if trained differently.

        Args:
            n_members: Number of leading members kept (1 .. M).
            name: Name of the new preset (default ``<name>_first<n>``).
        """
        if not self.is_prepared or self._cache is None:
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
        other.input_mean_, other.input_std_, other.image_size_ = (
            self.input_mean_,
            self.input_std_,
            self.image_size_,
        )
        other.bank_idx_, other.fusion_idx_ = self.bank_idx_, self.fusion_idx_
        assert self.stats_mean_ is not None and self.stats_std_ is not None
        other.stats_mean_ = self.stats_mean_[:n_members].clone()
        other.stats_std_ = self.stats_std_[:n_members].clone()
        other._cache = (self._cache[0][:, :n_members], self._cache[1])
        other._labels, other._train_idx, other._val_idx = self._labels, self._train_idx, self._val_idx
        other._trainer = HFMTrainer(n_members, self.hfm, self.device)
        other.fusion_ = other._trainer.best_model()
        other._fusion_stale = False
        return other

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`predict` needs: params, banks, statistics and the inference UNet's weights.

        The synthetic cache and the optimiser are not saved: a loaded model predicts but does not train.
        """
        self.finalize()
        if self.fusion_ is None or self.stats_mean_ is None or self.stats_std_ is None:
            raise RuntimeError("MultiCore.state_dict: nothing to save, the model is not fitted")
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
            "unet": {k: v.detach().cpu().clone() for k, v in self.fusion_.state_dict().items()},
            "hfm_best_epoch": -1 if self.hfm_best_epoch_ is None else self.hfm_best_epoch_,
            "hfm_epochs": self.hfm_epochs_,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> MultiCore:
        """Restore a :meth:`state_dict` into this instance (built with the same params)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"MultiCore.load_state_dict: unsupported state format {state.get('format')!r}")
        saved = MultiCore.params_from_dict(state["params"])
        saved.pop("device", None)
        mine = MultiCore.params_from_dict(self.get_params())
        mine.pop("device", None)
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
        fusion = UNet(
            len(self.members),
            self.hfm.unet_width,
            self.hfm.unet_depth,
            self.hfm.residual_mean,
            seed=self.hfm.seed,
            work_size=self.hfm.work_size,
        )
        fusion.load_state_dict(state["unet"])
        self.fusion_ = fusion.to(self.device).eval()
        best = int(state.get("hfm_best_epoch", -1))
        self.hfm_best_epoch_ = None if best < 0 else best
        self.hfm_epochs_ = int(state.get("hfm_epochs", 0))
        self._trainer, self._cache, self._labels, self._train_idx, self._val_idx = (
            None,
            None,
            None,
            None,
            None,
        )
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
