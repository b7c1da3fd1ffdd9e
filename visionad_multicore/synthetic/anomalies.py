"""What fills a synthetic-anomaly mask: a seeded mixture of anomaly kinds (the SSA *content*).

The paper fills every SSA mask with zero-mean Gaussian noise of std 0.5 in [0, 1] pixel units. Such noise is
so far from anything in a training image that every member scores it as extremely anomalous, so a fusion
module trained on it learns little that carries over to real defects, which are mostly subtle. The mask
schema stays the paper's (:mod:`visionad_multicore.synthetic.masks`); what goes inside can be a mixture:

- ``noise``: Gaussian noise, std log-uniform in ``noise_std`` (one grey field, or per channel).
- ``cutpaste``: content from another image of the same (fusion) share, shifted, possibly flipped or turned by
  90 degrees, rescaled by ``cutpaste_scale`` and colour-jittered (CutPaste / NSA style).
- ``texture``: a smooth random texture field (a sum of bilinearly upsampled random grids, Perlin-like) added
  to the image with amplitude ``texture_amplitude``, or mixed with a random grey level.
- ``blur``: the image blurred (gaussian, sigma in ``blur_sigma``) inside the mask.
- ``colour``: a brightness / colour shift (per-channel offsets in ``colour_shift``, gain in ``colour_gain``).

The anomaly is blended in with a soft edge: ``x' = x + alpha * (anomaly - x)`` with ``alpha`` the mask times
the mask blurred by ``edge_sigma`` pixels, scaled to peak at 1 (``0``: a hard edge, the paper's), so a defect
does not announce itself by a sharp outline alone. Pixels outside the mask never change; the target stays the
binary mask. Every draw comes from the item's own ``torch.Generator``.

:data:`PRESETS` names the mixtures: ``paper`` (noise std 0.5 only, hard edge: the paper's recipe, for
fidelity runs), ``mixed`` (every kind, the default for training) and ``subtle`` (every kind at weaker
strengths: the default for validation, which must not be saturated).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["ANOMALY_KINDS", "PRESETS", "AnomalyMix", "apply_anomaly", "resolve_mix"]

ANOMALY_KINDS = ("noise", "cutpaste", "texture", "blur", "colour")


@dataclass(frozen=True)
class AnomalyMix:
    """A mixture of anomaly kinds and the ranges their strengths are drawn from.

    Attributes:
        weights: Relative frequency of each kind in :data:`ANOMALY_KINDS` (missing kinds: 0).
        noise_std: (low, high) of the noise std in [0, 1] pixel units, drawn log-uniformly.
        per_channel: Independent noise per colour channel instead of one grey field.
        cutpaste_scale: (low, high) of the scale factor of pasted content, drawn log-uniformly.
        cutpaste_jitter: Largest relative brightness / contrast change of pasted content.
        texture_amplitude: (low, high) of the texture field's amplitude in [0, 1] pixel units.
        blur_sigma: (low, high) of the blur's sigma in pixels.
        colour_shift: Largest absolute per-channel offset in [0, 1] pixel units.
        colour_gain: (low, high) of the brightness gain.
        edge_sigma: (low, high) of the soft edge's blur in pixels (``(0, 0)``: hard edges).
    """

    weights: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"noise": 1.0, "cutpaste": 1.0, "texture": 1.0, "blur": 0.5, "colour": 1.0}
    )
    noise_std: tuple[float, float] = (0.05, 0.5)
    per_channel: bool = False
    cutpaste_scale: tuple[float, float] = (0.5, 2.0)
    cutpaste_jitter: float = 0.3
    texture_amplitude: tuple[float, float] = (0.1, 0.5)
    blur_sigma: tuple[float, float] = (1.5, 4.0)
    colour_shift: float = 0.3
    colour_gain: tuple[float, float] = (0.6, 1.4)
    edge_sigma: tuple[float, float] = (0.0, 2.0)

    def __post_init__(self) -> None:
        weights = dict(self.weights)
        unknown = sorted(set(weights) - set(ANOMALY_KINDS))
        if unknown:
            raise ValueError(f"AnomalyMix: unknown anomaly kinds {unknown}; valid: {list(ANOMALY_KINDS)}")
        if any(not w >= 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"AnomalyMix: weights must be >= 0 with a positive sum, got {weights}")
        object.__setattr__(self, "weights", {k: float(weights.get(k, 0.0)) for k in ANOMALY_KINDS})
        for name in (
            "noise_std",
            "cutpaste_scale",
            "texture_amplitude",
            "blur_sigma",
            "colour_gain",
            "edge_sigma",
        ):
            low, high = (float(v) for v in getattr(self, name))
            if not 0 <= low <= high:
                raise ValueError(
                    f"AnomalyMix.{name} must be (low, high) with 0 <= low <= high, got {(low, high)}"
                )
            object.__setattr__(self, name, (low, high))
        if self.cutpaste_scale[0] <= 0 or self.colour_gain[0] <= 0:
            raise ValueError("AnomalyMix: cutpaste_scale and colour_gain must be > 0")
        if not 0 <= self.cutpaste_jitter < 1 or self.colour_shift < 0:
            raise ValueError("AnomalyMix: cutpaste_jitter must be in [0, 1) and colour_shift >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form (tuples as lists)."""
        out = dataclasses.asdict(self)
        out["weights"] = dict(self.weights)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AnomalyMix:
        """Build from a mapping; unknown keys are an error listing the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(f"AnomalyMix: unknown keys {unknown}; valid keys are {valid}")
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**kwargs)


PRESETS: dict[str, AnomalyMix] = {
    "paper": AnomalyMix(weights={"noise": 1.0}, noise_std=(0.5, 0.5), edge_sigma=(0.0, 0.0)),
    "mixed": AnomalyMix(),
    "subtle": AnomalyMix(
        noise_std=(0.03, 0.2),
        cutpaste_scale=(0.7, 1.5),
        texture_amplitude=(0.05, 0.25),
        blur_sigma=(1.0, 2.5),
        colour_shift=0.15,
        colour_gain=(0.8, 1.25),
        edge_sigma=(0.5, 2.0),
    ),
}


def resolve_mix(mix: str | AnomalyMix | Mapping[str, Any]) -> AnomalyMix:
    """A preset name (``paper``, ``mixed``, ``subtle``), an :class:`AnomalyMix` or its dict form."""
    if isinstance(mix, AnomalyMix):
        return mix
    if isinstance(mix, str):
        if mix not in PRESETS:
            raise ValueError(
                f"unknown anomaly mix {mix!r}; presets: {', '.join(PRESETS)} (or a dict of settings)"
            )
        return PRESETS[mix]
    if isinstance(mix, Mapping):
        return AnomalyMix.from_dict(mix)
    raise TypeError(
        f"an anomaly mix must be a preset name, an AnomalyMix or a dict, got {type(mix).__name__}"
    )


# ---------------------------------------------------------------------------------------------- drawing
def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _log_uniform(generator: torch.Generator, low: float, high: float) -> float:
    if low == high or low <= 0:
        return _uniform(generator, low, high)
    return math.exp(_uniform(generator, math.log(low), math.log(high)))


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable gaussian blur of ``(C, H, W)`` with reflected borders (radius ``ceil(3 sigma)``)."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    y = F.pad(x[None], (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0]


def _smooth_field(shape: tuple[int, int], generator: torch.Generator, octaves: int = 4) -> torch.Tensor:
    """A smooth random field in [-1, 1] of ``shape``: upsampled random grids of 2..16 cells, halving weights."""
    h, w = shape
    field = torch.zeros(1, 1, h, w)
    cells = 2 ** int(_uniform(generator, 1, 3.999))  # 2, 4 or 8 cells on the coarsest octave
    weight, total = 1.0, 0.0
    for _ in range(octaves):
        grid = torch.rand((1, 1, cells + 1, cells + 1), generator=generator) * 2 - 1
        field += weight * F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=True)
        total += weight
        weight, cells = weight / 2, cells * 2
    field = field[0, 0] / total
    return field / field.abs().max().clamp_min(1e-6)


def _noise(image: torch.Tensor, mix: AnomalyMix, generator: torch.Generator) -> torch.Tensor:
    std = _log_uniform(generator, *mix.noise_std)
    channels = image.shape[0] if mix.per_channel else 1
    return image + std * torch.randn((channels, *image.shape[1:]), generator=generator)


def _cutpaste(
    image: torch.Tensor, donor: torch.Tensor, mix: AnomalyMix, generator: torch.Generator
) -> torch.Tensor:
    h, w = image.shape[1:]
    source = donor
    if float(torch.rand((), generator=generator)) < 0.5:
        source = source.flip(-1)
    turns = int(torch.randint(0, 4, (), generator=generator))
    if turns and h == w:
        source = torch.rot90(source, turns, dims=(1, 2))
    scale = _log_uniform(generator, *mix.cutpaste_scale)
    if abs(scale - 1.0) > 1e-3:
        size = (max(2, round(h * scale)), max(2, round(w * scale)))
        source = F.interpolate(source[None], size=size, mode="bilinear", align_corners=False, antialias=True)[
            0
        ]
        reps = (1, -(-h // size[0]) + 1, -(-w // size[1]) + 1)
        source = source.repeat(*reps)  # tile so that any shift still covers the image
    dy = int(torch.randint(0, source.shape[1] - h + 1, (), generator=generator)) if source.shape[1] > h else 0
    dx = int(torch.randint(0, source.shape[2] - w + 1, (), generator=generator)) if source.shape[2] > w else 0
    source = source[:, dy : dy + h, dx : dx + w]
    shift = (
        int(torch.randint(0, h, (), generator=generator)),
        int(torch.randint(0, w, (), generator=generator)),
    )
    source = torch.roll(source, shifts=shift, dims=(1, 2))
    jitter = mix.cutpaste_jitter
    gain = _uniform(generator, 1 - jitter, 1 + jitter)
    offset = _uniform(generator, -jitter / 2, jitter / 2)
    return (source - source.mean()) * gain + source.mean() + offset


def _texture(image: torch.Tensor, mix: AnomalyMix, generator: torch.Generator) -> torch.Tensor:
    field = _smooth_field((int(image.shape[1]), int(image.shape[2])), generator)  # (H, W) in [-1, 1]
    amplitude = _uniform(generator, *mix.texture_amplitude)
    if float(torch.rand((), generator=generator)) < 0.5:
        return image + amplitude * field[None]
    level = float(torch.rand((), generator=generator))
    weight = (field[None] + 1) / 2 * min(1.0, 2 * amplitude)
    return image * (1 - weight) + level * weight


def _blur(image: torch.Tensor, mix: AnomalyMix, generator: torch.Generator) -> torch.Tensor:
    return _gaussian_blur(image, _uniform(generator, *mix.blur_sigma))


def _colour(image: torch.Tensor, mix: AnomalyMix, generator: torch.Generator) -> torch.Tensor:
    gain = _uniform(generator, *mix.colour_gain)
    shift = (torch.rand((image.shape[0], 1, 1), generator=generator) * 2 - 1) * mix.colour_shift
    return image * gain + shift


def choose_kind(mix: AnomalyMix, generator: torch.Generator) -> str:
    """Draw one kind with the mixture's weights."""
    weights = torch.tensor([mix.weights[k] for k in ANOMALY_KINDS], dtype=torch.float64)
    return ANOMALY_KINDS[int(torch.multinomial(weights, 1, generator=generator))]


def apply_anomaly(
    image01: torch.Tensor,
    mask: torch.Tensor,
    mix: AnomalyMix,
    generator: torch.Generator,
    donor01: torch.Tensor | None = None,
    kind: str | None = None,
) -> tuple[torch.Tensor, str]:
    """Fill ``mask`` of one image with an anomaly drawn from ``mix``.

    Args:
        image01: ``(C, H, W)`` float image in [0, 1].
        mask: ``(1, H, W)`` or ``(H, W)``, bool or {0, 1}.
        mix: The mixture.
        generator: Seeded generator; the only source of randomness.
        donor01: ``(C, H, W)`` another image in [0, 1] for ``cutpaste`` (without one, cutpaste uses the image
            itself, shifted).
        kind: Force one kind instead of drawing it.

    Returns:
        ``(image, kind)``: the image with the anomaly blended in, clipped to [0, 1], pixels outside the blurred
        mask unchanged; and the kind used.
    """
    if image01.ndim != 3:
        raise ValueError(f"apply_anomaly: expected an image (C, H, W), got {tuple(image01.shape)}")
    m = mask.reshape(1, *image01.shape[1:]).to(image01.dtype)
    kind = choose_kind(mix, generator) if kind is None else kind
    if kind == "noise":
        anomaly = _noise(image01, mix, generator)
    elif kind == "cutpaste":
        anomaly = _cutpaste(image01, image01 if donor01 is None else donor01, mix, generator)
    elif kind == "texture":
        anomaly = _texture(image01, mix, generator)
    elif kind == "blur":
        anomaly = _blur(image01, mix, generator)
    elif kind == "colour":
        anomaly = _colour(image01, mix, generator)
    else:
        raise ValueError(f"unknown anomaly kind {kind!r}; valid: {list(ANOMALY_KINDS)}")
    # soft edge inside the mask: the blurred mask, scaled so that its peak is 1 (small masks stay strong)
    alpha = m * _gaussian_blur(m, _uniform(generator, *mix.edge_sigma))  # (1, H, W)
    alpha = alpha / alpha.amax().clamp_min(1e-6)
    out = (image01 + alpha * (anomaly.clamp(0, 1) - image01)).clamp(0, 1)
    return torch.where(m > 0, out, image01), kind
