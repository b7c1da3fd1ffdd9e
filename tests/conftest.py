"""Shared fixtures: a tiny MVTec-layout dataset written once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_SIZE = 64


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random RGB texture in uint8, (size, size, 3)."""
    base = rng.normal(0.5, 0.08, size=(size // 8, size // 8, 3))
    img = np.kron(base, np.ones((8, 8, 1)))  # (size, size, 3)
    img += rng.normal(0.0, 0.02, size=img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_tiny_mvtec(
    root: Path, size: int = TINY_SIZE, n_train: int = 8, n_good: int = 4, n_bad: int = 4, seed: int = 0
) -> Path:
    """Write an MVTec-layout class under ``root`` with square bright defects and their masks."""
    rng = np.random.default_rng(seed)
    for sub in ("train/good", "test/good", "test/defect", "ground_truth/defect"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(_texture(rng, size)).save(root / "train/good" / f"{i:03d}.png")
    for i in range(n_good):
        Image.fromarray(_texture(rng, size)).save(root / "test/good" / f"{i:03d}.png")
    for i in range(n_bad):
        img = _texture(rng, size)
        mask = np.zeros((size, size), dtype=np.uint8)
        s = int(rng.integers(size // 8, size // 4))
        y, x = rng.integers(0, size - s, size=2)
        img[y : y + s, x : x + s] = 255 - img[y : y + s, x : x + s] // 3
        mask[y : y + s, x : x + s] = 255
        Image.fromarray(img).save(root / "test/defect" / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "ground_truth/defect" / f"{i:03d}_mask.png")
    return root


@pytest.fixture(scope="session")
def tiny_mvtec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to a tiny MVTec-layout class (64 px; 8 train, 4 good test, 4 defective test with masks)."""
    return write_tiny_mvtec(tmp_path_factory.mktemp("tiny_mvtec") / "tiny_class")


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
