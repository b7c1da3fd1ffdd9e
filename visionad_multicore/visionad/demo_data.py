"""The embedded demo dataset: MVTec-layout classes made from photographs that ship inside scikit-image.

Each class is a texture photograph from ``skimage.data`` (``brick``, ``grass``, ``gravel``, 512 x 512 grayscale)
cut into random crops (with random 90-degree rotations, flips and a small gain change). Defective test images
carry one defect rendered by this module, never noise:

- ``scratch``: a thin curved line (quadratic Bezier), dark or bright, anti-aliased, fading at its ends;
- ``hole``: an irregular dark blob shaded as a pit lit from one side, with a bright rim on the lit edge;
- ``foreign``: a patch of another texture pasted through a soft irregular mask.

The ground truth is ``ground_truth/<defect>/<name>_mask.png`` (0 / 255). The same seed gives byte-identical
files, and a class does not depend on which other classes are written. Keys ``demo_brick`` / ``demo_grass`` /
``demo_gravel`` in ``algorithm_configs/datasets.yaml`` resolve under ``--data_root`` or ``$VISIONAD_DEMO_ROOT``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

logger = logging.getLogger(__name__)

TEXTURES: tuple[str, ...] = ("brick", "grass", "gravel")
DEFECT_KINDS: tuple[str, ...] = ("scratch", "hole", "foreign")


@dataclass(frozen=True)
class DemoConfig:
    """What ``write_demo_dataset`` writes per class.

    Attributes:
        size: side of the square images in pixels.
        n_train, n_good, n_defective: images in train/good, test/good and test/<defect> (all defects).
        seed: master seed; each class draws from ``numpy.random.default_rng([seed, texture index])``.
        textures: which of ``TEXTURES`` to write, as classes ``demo_<texture>``.
    """

    size: int = 256
    n_train: int = 24
    n_good: int = 8
    n_defective: int = 12
    seed: int = 0
    textures: tuple[str, ...] = TEXTURES

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"size must be at least 32 pixels, got {self.size}")
        for name in ("n_train", "n_good", "n_defective"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        unknown = [t for t in self.textures if t not in TEXTURES]
        if unknown or not self.textures:
            raise ValueError(f"unknown texture(s) {unknown}; valid textures: {', '.join(TEXTURES)}")


def load_texture(name: str, min_side: int = 0) -> np.ndarray:
    """Photograph ``skimage.data.<name>()`` as float32 (H, W) in [0, 1], upscaled (bicubic) to ``min_side``."""
    import skimage.data

    if name not in TEXTURES:
        raise ValueError(f"unknown texture {name!r}; valid textures: {', '.join(TEXTURES)}")
    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 3:
        image = np.asarray(Image.fromarray(image).convert("L"))
    if min(image.shape) < min_side:
        factor = int(np.ceil(min_side / min(image.shape)))
        image = np.asarray(
            Image.fromarray(image).resize(
                (image.shape[1] * factor, image.shape[0] * factor), Image.Resampling.BICUBIC
            )
        )
    return image.astype(np.float32) / 255.0


def random_crop(texture: np.ndarray, size: int, rng: np.random.Generator, augment: bool = True) -> np.ndarray:
    """A (size, size) crop of ``texture`` at a random place, randomly rotated / flipped / scaled in gain."""
    y = int(rng.integers(0, texture.shape[0] - size + 1))
    x = int(rng.integers(0, texture.shape[1] - size + 1))
    crop = texture[y : y + size, x : x + size]
    if augment:
        crop = np.rot90(crop, int(rng.integers(0, 4)))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = crop * rng.uniform(0.92, 1.08)
    return np.clip(crop, 0.0, 1.0).astype(np.float32)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def irregular_blob(
    size: int, centre: tuple[float, float], radius: float, rng: np.random.Generator, roughness: float = 0.12
) -> tuple[np.ndarray, np.ndarray]:
    """An irregular star-shaped region.

    Returns:
        ``(signed, angle)``: signed distance in pixels to the boundary, positive inside (size, size), and the
        angle of each pixel around ``centre``.
    """
    yy, xx = _grid(size)
    dy, dx = yy - centre[0], xx - centre[1]
    dist = np.hypot(dy, dx)
    angle = np.arctan2(dy, dx)
    r = np.ones_like(angle)
    for k in range(2, 6):  # low-frequency wobble of the outline
        r += rng.uniform(0.0, roughness) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    return radius * r - dist, angle


def render_scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw a thin curved dark or bright line.

    Args:
        image: float (H, W) in [0, 1], square.
        rng: numpy Generator.

    Returns:
        ``(defective image (H, W), mask (H, W) bool)``.
    """
    size = image.shape[0]
    scale = size / 256
    length = rng.uniform(0.25, 0.55) * size
    p0 = rng.uniform(0.2, 0.8, size=2) * size
    theta = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.sin(theta), np.cos(theta)])
    p2 = np.clip(p0 + direction * length, 2, size - 3)
    bend = rng.uniform(-0.35, 0.35) * length
    p1 = (p0 + p2) / 2 + np.array([-direction[1], direction[0]]) * bend
    t = np.linspace(0.0, 1.0, int(4 * length) + 2)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # (n, 2) points (y, x)
    line = np.zeros(image.shape, dtype=bool)
    t_map = np.zeros(image.shape, dtype=np.float32)
    iy, ix = np.clip(np.round(curve).astype(int), 0, size - 1).T
    line[iy, ix] = True
    t_map[iy, ix] = t[:, 0]
    dist, (ny, nx) = ndimage.distance_transform_edt(~line, return_indices=True)
    width = rng.uniform(0.6, 1.6) * scale  # half width in pixels
    taper = np.clip(np.sin(np.pi * t_map[ny, nx]), 0.0, 1.0) ** 0.4  # fades at both ends
    alpha = np.clip(width + 0.5 - dist, 0.0, 1.0) * taper * rng.uniform(0.8, 1.0)
    target = rng.uniform(0.02, 0.15) if rng.random() < 0.6 else rng.uniform(0.85, 1.0)
    out = image * (1 - alpha) + target * alpha
    mask = ndimage.binary_dilation(alpha >= 0.25, iterations=max(1, round(scale)))
    return out.astype(np.float32), mask


def render_hole(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cut a dark irregular pit, shaded from a random light direction, with a bright rim on the lit edge.

    Args:
        image: float (H, W) in [0, 1], square.
        rng: numpy Generator.

    Returns:
        ``(defective image (H, W), mask (H, W) bool)``.
    """
    size = image.shape[0]
    radius = rng.uniform(0.035, 0.09) * size
    centre = (
        float(rng.uniform(radius * 1.5, size - radius * 1.5)),
        float(rng.uniform(radius * 1.5, size - radius * 1.5)),
    )
    signed, angle = irregular_blob(size, centre, radius, rng, roughness=0.15)
    light = rng.uniform(0, 2 * np.pi)
    facing = np.cos(angle - light)  # +1 on the side the light comes from
    depth = np.clip(signed / radius, 0.0, 1.0)  # 0 at the edge, 1 at the centre
    # inside: dark floor; the wall opposite the light catches some light
    floor = 0.06 + 0.22 * np.clip(-facing, 0, 1) * (1 - depth) + 0.04 * image
    inside = np.clip(signed + 0.5, 0.0, 1.0)  # anti-aliased edge
    out = image * (1 - inside) + floor * inside
    rim_width = 1.5 * size / 256
    rim = np.clip(1 - np.abs(signed + rim_width) / rim_width, 0, 1) * np.clip(facing, 0, 1)
    out = np.clip(out + 0.35 * rim * (1 - inside), 0.0, 1.0)
    mask = signed > -2 * rim_width
    return out.astype(np.float32), mask


def render_foreign(
    image: np.ndarray, foreign: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Paste a patch of another texture through a soft irregular mask.

    Args:
        image: float (H, W) in [0, 1], square.
        foreign: float texture to cut the patch from, at least (H, W).
        rng: numpy Generator.

    Returns:
        ``(defective image (H, W), mask (H, W) bool)``, the mask where the patch weighs 0.3 or more.
    """
    size = image.shape[0]
    radius = rng.uniform(0.07, 0.15) * size
    centre = (float(rng.uniform(radius, size - radius)), float(rng.uniform(radius, size - radius)))
    signed, _ = irregular_blob(size, centre, radius, rng, roughness=0.25)
    alpha = ndimage.gaussian_filter((signed > 0).astype(np.float32), sigma=1.5 * size / 256)
    patch = random_crop(foreign, size, rng)
    core = alpha > 0.5
    shift = float(image[core].mean() - patch[core].mean()) + rng.choice([-1, 1]) * rng.uniform(0.08, 0.2)
    patch = np.clip(patch + shift, 0.0, 1.0)
    out = image * (1 - alpha) + patch * alpha
    return out.astype(np.float32), alpha >= 0.3


def render_defect(
    image: np.ndarray, kind: str, rng: np.random.Generator, foreign: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render defect ``kind`` (one of ``DEFECT_KINDS``) on ``image``; see the ``render_*`` functions."""
    if kind == "scratch":
        return render_scratch(image, rng)
    if kind == "hole":
        return render_hole(image, rng)
    if kind == "foreign":
        if foreign is None:
            raise ValueError("a 'foreign' defect needs a foreign texture")
        return render_foreign(image, foreign, rng)
    raise ValueError(f"unknown defect kind {kind!r}; valid kinds: {', '.join(DEFECT_KINDS)}")


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def class_images(texture: str, config: DemoConfig) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(relative path, uint8 array)`` for every file of class ``demo_<texture>``."""
    textures = {name: load_texture(name, config.size) for name in TEXTURES}
    rng = np.random.default_rng([config.seed, TEXTURES.index(texture)])
    source = textures[texture]
    for i in range(config.n_train):
        yield f"train/good/{i:03d}.png", _to_uint8(random_crop(source, config.size, rng))
    for i in range(config.n_good):
        yield f"test/good/{i:03d}.png", _to_uint8(random_crop(source, config.size, rng))
    counts = dict.fromkeys(DEFECT_KINDS, 0)
    for i in range(config.n_defective):
        kind = DEFECT_KINDS[i % len(DEFECT_KINDS)]
        others = [t for t in TEXTURES if t != texture]
        foreign = textures[others[int(rng.integers(0, len(others)))]]
        for _ in range(20):  # a defect whose mask is empty (e.g. all clipped) is redrawn
            clean = random_crop(source, config.size, rng)
            defective, mask = render_defect(clean, kind, rng, foreign)
            if mask.any():
                break
        n = counts[kind]
        counts[kind] += 1
        yield f"test/{kind}/{n:03d}.png", _to_uint8(defective)
        yield f"ground_truth/{kind}/{n:03d}_mask.png", mask.astype(np.uint8) * 255


def write_demo_dataset(
    out_dir: str | os.PathLike[str], config: DemoConfig | None = None, overwrite: bool = False
) -> list[Path]:
    """Write classes ``demo_<texture>`` under ``out_dir`` (each via a temporary folder renamed into place).

    Args:
        out_dir: the demo root (``--data_root`` / ``$VISIONAD_DEMO_ROOT`` for keys ``demo_*``).
        config: sizes, counts, seed and textures (default ``DemoConfig()``).
        overwrite: replace classes that already exist (otherwise that is an error).

    Returns:
        The class folders written.
    """
    config = config or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    finals = [out / f"demo_{t}" for t in config.textures]
    existing = [str(f) for f in finals if f.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"demo class folder(s) already exist: {', '.join(existing)} (pass overwrite)")
    n_files = config.n_train + config.n_good + 2 * config.n_defective
    for texture, final in zip(config.textures, finals):
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=out))
        try:
            for rel, array in tqdm(class_images(texture, config), total=n_files, desc=final.name, unit="img"):
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(tmp / rel)
            info = {
                "class": final.name,
                "source": f"skimage.data.{texture}",
                "defects": list(DEFECT_KINDS),
                **asdict(config),
                "textures": list(config.textures),
            }
            (tmp / "demo_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("wrote %s", final)
    return finals
