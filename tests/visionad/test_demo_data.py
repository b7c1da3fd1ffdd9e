"""Embedded demo dataset: layout, determinism, defects that are local, aligned with their masks, not noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionad_multicore.cli import main
from visionad_multicore.visionad.datasets import load_dataset
from visionad_multicore.visionad.demo_data import (
    DEFECT_KINDS,
    TEXTURES,
    DemoConfig,
    load_texture,
    random_crop,
    render_defect,
    write_demo_dataset,
)
from visionad_multicore.visionad.loaders import create_dataloaders, default_identical_transforms

SMALL = DemoConfig(size=64, n_train=3, n_good=2, n_defective=3, seed=0, textures=("brick",))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_masks(tmp_path: Path) -> None:
    (cls,) = write_demo_dataset(tmp_path, SMALL)
    assert cls == tmp_path / "demo_brick"
    assert sorted(p.name for p in (cls / "train" / "good").iterdir()) == ["000.png", "001.png", "002.png"]
    assert len(list((cls / "test" / "good").iterdir())) == 2
    assert sorted(p.name for p in (cls / "test").iterdir()) == sorted(["good", *DEFECT_KINDS])
    for kind in DEFECT_KINDS:
        image = np.asarray(Image.open(cls / "test" / kind / "000.png"))
        mask = np.asarray(Image.open(cls / "ground_truth" / kind / "000_mask.png"))
        assert image.shape == (64, 64) and mask.shape == (64, 64)
        assert set(np.unique(mask).tolist()) == {0, 255}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_registry_and_loaders_read_the_demo(tmp_path: Path) -> None:
    write_demo_dataset(tmp_path, SMALL)
    d = load_dataset("demo_brick", data_root=tmp_path)
    _, _, novel = create_dataloaders(None, None, default_identical_transforms(32), 3, **d)
    images, masks, names, _ = next(iter(novel))
    assert images.shape == (3, 3, 32, 32) and masks.shape == (3, 1, 32, 32)
    assert list(names) == ["foreign_000.png", "hole_000.png", "scratch_000.png"]
    assert (masks.flatten(1).sum(1) > 0).all()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    write_demo_dataset(tmp_path / "a", SMALL)
    write_demo_dataset(tmp_path / "b", SMALL)
    write_demo_dataset(tmp_path / "c", DemoConfig(**{**SMALL.__dict__, "seed": 1}))
    a, b, c = (_files(tmp_path / x / "demo_brick") for x in "abc")
    assert a == b
    assert a.keys() == c.keys() and a["train/good/000.png"] != c["train/good/000.png"]


def test_class_does_not_depend_on_other_classes(tmp_path: Path) -> None:
    cfg = DemoConfig(size=48, n_train=1, n_good=1, n_defective=3)
    write_demo_dataset(tmp_path / "one", DemoConfig(**{**cfg.__dict__, "textures": ("gravel",)}))
    write_demo_dataset(tmp_path / "all", cfg)
    assert _files(tmp_path / "one" / "demo_gravel") != {}
    one = _files(tmp_path / "one" / "demo_gravel")
    one.pop("demo_info.json")
    every = _files(tmp_path / "all" / "demo_gravel")
    every.pop("demo_info.json")
    assert one == every


def test_existing_class_needs_overwrite(tmp_path: Path) -> None:
    write_demo_dataset(tmp_path, SMALL)
    with pytest.raises(FileExistsError, match="demo_brick"):
        write_demo_dataset(tmp_path, SMALL)
    write_demo_dataset(tmp_path, DemoConfig(**{**SMALL.__dict__, "n_train": 1}), overwrite=True)
    assert len(list((tmp_path / "demo_brick" / "train" / "good").iterdir())) == 1


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_defects_are_local_aligned_and_not_noise(kind: str) -> None:
    size = 128
    textures = {t: load_texture(t, size) for t in TEXTURES}
    for seed in range(6):
        rng = np.random.default_rng(seed)
        clean = random_crop(textures["grass"], size, rng)
        out, mask = render_defect(clean, kind, rng, foreign=textures["brick"])
        assert mask.dtype == bool and 0 < mask.sum() < 0.25 * size * size
        diff = out - clean
        changed = np.abs(diff) > 4 / 255
        assert (changed & mask).sum() / changed.sum() > 0.85  # changes sit inside the mask ...
        assert (changed & mask).sum() / mask.sum() > 0.3  # ... and the mask is mostly changed
        inside = diff[mask]
        if kind in ("scratch", "hole"):
            # a dark / bright mark: one sign dominates (zero-mean noise would give about 0)
            assert abs(inside.mean()) / np.abs(inside).mean() > 0.6
        else:
            # a pasted texture is spatially smooth (i.i.d. noise has neighbour correlation about 0)
            both = mask[:, :-1] & mask[:, 1:]
            corr = np.corrcoef(diff[:, :-1][both], diff[:, 1:][both])[0, 1]
            assert corr > 0.5


def test_invalid_config() -> None:
    with pytest.raises(ValueError, match="unknown texture"):
        DemoConfig(textures=("marble",))
    with pytest.raises(ValueError, match="n_train"):
        DemoConfig(n_train=0)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "demo-data",
        str(tmp_path),
        "--size",
        "48",
        "--n_train",
        "2",
        "--n_good",
        "1",
        "--n_defective",
        "3",
        "--textures",
        "grass",
    ]
    assert main(args) == 0
    assert "demo_grass" in capsys.readouterr().out
    assert (tmp_path / "demo_grass" / "ground_truth" / "hole" / "000_mask.png").is_file()
    assert main(args) == 1  # exists, no --overwrite
    assert main([*args, "--overwrite"]) == 0
