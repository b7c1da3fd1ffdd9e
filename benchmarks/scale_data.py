"""Data and a benchmark-only backbone for the scale benchmarks (``bench_scale.py``, ``bench_gpu.py``).

:class:`ScaleImages`: N images of S px made from the real development images. The training images of the four development classes (``../shared/data``: 48 + 700 + 239 + 250 = 1,237) are
cycled in a seeded order; each copy gets its own seeded random crop (60-100 % of the side, anywhere), flips
and quarter turns, then a bilinear resize to S x S and ImageNet normalisation. The copies are therefore not
duplicates of one another, and their patch features keep the structure of real images (which the coreset's
pruning depends on), unlike noise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from visionad_multicore.patchcore.backbone import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, FeatureExtractor

SHARED_DATA = Path(
    os.environ.get("VISIONAD_MULTICORE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
CLASSES = ("mvtec_toothbrush", "magnetic_tile", "mvtec3d_tire", "kolektor_sdd")


def pool_paths(root: Path = SHARED_DATA) -> list[Path]:
    """Sorted training-image paths of the development classes under ``root``."""
    paths = []
    for name in CLASSES:
        folder = root / name / "train" / "good"
        if not folder.is_dir():
            raise FileNotFoundError(f"development class folder not found: {folder}")
        paths += sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    return paths


class ScaleImages:
    """Iterable of ``(B, 3, S, S)`` ImageNet-normalised batches, ``n`` images in all, the same for a seed.

    Args:
        n: number of images.
        size: side S in pixels.
        batch_size: images per batch.
        seed: seeds the order and every crop / flip / turn.
        root: folder holding the development classes.
    """

    def __init__(self, n: int, size: int = 256, batch_size: int = 8, seed: int = 0, root: Path = SHARED_DATA):
        self.n, self.size, self.batch_size, self.seed = n, size, batch_size, seed
        self.paths = pool_paths(root)
        rng = np.random.default_rng(seed)
        self.order = np.concatenate(
            [rng.permutation(len(self.paths)) for _ in range(-(-n // len(self.paths)))]
        )[:n]
        self.params = rng.random((n, 5))  # crop side, crop x, crop y, flips, turns

    def __len__(self) -> int:
        """Number of batches."""
        return -(-self.n // self.batch_size)

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as a (3, S, S) normalised tensor."""
        with Image.open(self.paths[int(self.order[i])]) as pil:
            arr = np.asarray(pil.convert("RGB"), dtype=np.float32) / 255.0
        h, w = arr.shape[:2]
        side, fx, fy, flips, turns = self.params[i]
        crop = max(8, int(min(h, w) * (0.6 + 0.4 * side)))
        y, x = int(fy * (h - crop)), int(fx * (w - crop))
        t = torch.from_numpy(np.ascontiguousarray(arr[y : y + crop, x : x + crop])).permute(2, 0, 1)
        code = int(flips * 4)
        if code & 1:
            t = t.flip(2)
        if code & 2:
            t = t.flip(1)
        t = torch.rot90(t, int(turns * 4), dims=(1, 2))
        t = F.interpolate(t[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return (t - mean) / std

    def __iter__(self) -> Iterator[torch.Tensor]:
        for start in range(0, self.n, self.batch_size):
            yield torch.stack([self.image(i) for i in range(start, min(start + self.batch_size, self.n))])


def generated_images(n: int, size: int = 256, seed: int = 0) -> torch.Tensor:
    """``n`` procedural texture images (no files needed: for machines without the development data).

    Each image is a smooth random colour field (noise at 1/32 and 1/8 of the side, upsampled bicubically)
    with fine grain, clipped to [0, 1] and ImageNet-normalised; seeded.

    Returns:
        (n, 3, size, size) float32.
    """
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(n, 3, size, size)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for start in range(0, n, 64):
        b = min(64, n - start)
        coarse = torch.rand(b, 3, max(2, size // 32), max(2, size // 32), generator=gen)
        mid = torch.rand(b, 3, max(2, size // 8), max(2, size // 8), generator=gen) * 0.3
        img = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        img = img + F.interpolate(mid, size=(size, size), mode="bicubic", align_corners=False)
        img = img / 1.3 + 0.03 * torch.randn(b, 3, size, size, generator=gen)
        out[start : start + b] = (img.clamp(0, 1) - mean) / std
    return out


RANDOM_WRN50 = "wideresnet50_random_benchmark"


def register_random_wrn50(seed: int = 0) -> str:
    """BENCHMARK ONLY: register ``wideresnet50_random_benchmark`` in the backbone registry and return the name.

    torchvision's WideResNet-50-2 cut after ``layer3`` (maps of 512 and 1024 channels, strides 8 and 16: the
    paper's feature sizes) with seeded random weights; no weights file is read. Good for timing only: its
    features mean nothing. The registry entry lives in this process only.
    """

    def build(
        weights: object, input_mean: tuple[float, ...], input_std: tuple[float, ...]
    ) -> FeatureExtractor:
        import torchvision

        from visionad_multicore.patchcore.backbone import _WRN50Body

        torch.manual_seed(seed)
        net = torchvision.models.wide_resnet50_2(weights=None)
        return FeatureExtractor(_WRN50Body(net), RANDOM_WRN50, (512, 1024), (8, 16), input_mean, input_std)

    BACKBONES[RANDOM_WRN50] = build
    return RANDOM_WRN50
