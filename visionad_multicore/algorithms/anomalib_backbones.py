"""Backbones of the ``anomalib_<model>`` baselines: which pretrained CNN a model gets, with which weights.

Resolves the ``backbone`` options (:class:`BackboneChoice`), translates anomalib's ResNet layer names by stride,
routes the ``timm.create_model`` calls anomalib makes while a model is built and loads the local weights into them,
and lifts encoder maps isometrically (``_IsometricLift``). Also holds what the recipes and the wrapper share below
them: the seeded RNG block (:func:`seeded`) and the guarded ``anomalib`` import.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from visionad_multicore.patchcore.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_efficientnet_lite0_classifier,
)

LITE0 = "efficientnet_lite0"
LITE0_TIMM = "tf_efficientnet_lite0"
ANOMALIB_DEFAULT = "anomalib_default"
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
