"""Seeded image streams for the scale benchmarks: N images of S px made from the real development images.

The training images of the four development classes (``../shared/data``: 48 + 700 + 239 + 250 = 1,237) are
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

from visionad_multicore.patchcore.backbone import IMAGENET_MEAN, IMAGENET_STD

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
