"""Recipes of the ``anomalib_<model>`` baselines: how each anomalib torch model is built, trained and fitted.

One :class:`Recipe` per model in :data:`RECIPES`: its builder, its optimisers and scheduler, its training step or
memory-bank fit, as anomalib's Lightning module configures them, and anomalib's default options.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visionad_multicore.algorithms.anomalib_backbones import _import_anomalib, _IsometricLift


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
