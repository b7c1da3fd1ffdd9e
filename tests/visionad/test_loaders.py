"""VisionAD-compatible loaders on the tiny MVTec-layout fixture."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as TF

from tests.conftest import SHARED_DATA
from visionad_multicore.visionad.datasets import load_dataset
from visionad_multicore.visionad.loaders import (
    ImageDataset,
    create_dataloaders,
    default_identical_transforms,
    default_pre_pro_transforms,
    find_mask,
    index_images,
)

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def _dataset(cls: Path, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    """The registry dict of an MVTec-layout class at ``cls`` (through a user YAML entry)."""
    yaml_file = tmp_path / "reg.yaml"
    lines = ["datasets:", "  tiny:", f"    path: {cls}"] + [f"    {k}: {v}" for k, v in extra.items()]
    yaml_file.write_text("\n".join(lines) + "\n")
    return load_dataset("tiny", registry_path=yaml_file)


def _loaders(dataset: dict[str, Any], size: int | None = 32, **kw: Any):
    ident = default_identical_transforms(size) if size else None
    return create_dataloaders(
        default_pre_pro_transforms(dataset["mean"], dataset["std"]),
        None,
        ident,
        batch_size=4,
        test_batch_size=3,
        **{**dataset, **kw},
    )


def _normalised(path: Path) -> torch.Tensor:
    """The expected loader image at full size: (ToTensor(RGB) - mean) / std, (3, H, W)."""
    t = TF.to_tensor(Image.open(path).convert("RGB"))
    return (t - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def test_item_tuples_and_shapes(tiny_mvtec: Path, tmp_path: Path) -> None:
    train, regular, novel = _loaders(_dataset(tiny_mvtec, tmp_path))
    images, names, info = next(iter(train))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert all(isinstance(n, str) for n in names) and torch.equal(info, torch.zeros(4, dtype=torch.long))
    images, names, info = next(iter(regular))
    assert images.shape == (3, 3, 32, 32) and list(names) == ["000.png", "001.png", "002.png"]
    images, masks, names, info = next(iter(novel))
    assert images.shape == (3, 3, 32, 32) and masks.shape == (3, 1, 32, 32)
    assert list(names) == ["defect_000.png", "defect_001.png", "defect_002.png"]  # VisionAD's grouped names
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    assert len(train.dataset) == 8 and len(regular.dataset) == 4 and len(novel.dataset) == 4
    assert novel.dataset.image_paths[0] == str(tiny_mvtec / "test" / "defect" / "000.png")
    assert novel.dataset.mask_paths[0] == str(tiny_mvtec / "ground_truth" / "defect" / "000_mask.png")
    assert train.dataset.mean == MEAN and train.dataset.std == STD
    assert len(train.dataset.image_paths) == 8 and Path(train.dataset.image_paths[0]).is_file()


def test_normalisation_and_nearest_resize(tiny_mvtec: Path, tmp_path: Path) -> None:
    d = _dataset(tiny_mvtec, tmp_path)
    _, regular_full, novel_full = _loaders(d, size=None)
    _, regular_32, novel_32 = _loaders(d, size=32)
    expected = _normalised(tiny_mvtec / "test" / "good" / "000.png")
    full = regular_full.dataset[0][0]
    assert torch.allclose(full, expected, atol=1e-6)
    assert torch.equal(regular_32.dataset[0][0], full[:, ::2, ::2])  # NEAREST 64 -> 32 picks every 2nd pixel
    image, mask, _, _ = novel_32.dataset[1]
    raw = np.asarray(Image.open(tiny_mvtec / "ground_truth" / "defect" / "001_mask.png")) > 0
    assert torch.equal(mask[0], torch.from_numpy(raw[::2, ::2]).float())


def test_custom_mean_std_from_registry(tiny_mvtec: Path, tmp_path: Path) -> None:
    d = _dataset(tiny_mvtec, tmp_path, mean="[0.5, 0.5, 0.5]", std="[0.5, 0.5, 0.5]")
    _, regular, _ = create_dataloaders(None, None, None, batch_size=2, **d)  # None -> Normalize(mean, std)
    t = TF.to_tensor(Image.open(tiny_mvtec / "test" / "good" / "000.png").convert("RGB"))
    assert torch.allclose(regular.dataset[0][0], (t - 0.5) / 0.5, atol=1e-6)
    assert isinstance(regular.dataset, ImageDataset) and regular.dataset.mean == [0.5, 0.5, 0.5]


def test_slicing(tiny_mvtec: Path, tmp_path: Path) -> None:
    d = _dataset(
        tiny_mvtec,
        tmp_path,
        regular_train_start=1,
        regular_train_end=7,
        skip_train_regular=2,
        novel_test_start=2,
        skip_test_regular=3,
    )
    train, regular, novel = _loaders(d, shuffle=False)
    assert train.dataset.image_names == ["001.png", "003.png", "005.png"]
    assert regular.dataset.image_names == ["000.png", "003.png"]
    assert novel.dataset.image_names == ["defect_002.png", "defect_003.png"]


def test_training_transformations_only_on_train(tiny_mvtec: Path, tmp_path: Path) -> None:
    d = _dataset(tiny_mvtec, tmp_path)
    flip = transforms.Compose([transforms.RandomHorizontalFlip(p=1.0)])
    train, regular, _ = create_dataloaders(None, flip, None, batch_size=2, shuffle=False, **d)
    expected = _normalised(tiny_mvtec / "train" / "good" / "000.png")
    assert torch.allclose(train.dataset[0][0], expected.flip(-1), atol=1e-6)
    assert torch.allclose(
        regular.dataset[0][0], _normalised(tiny_mvtec / "test" / "good" / "000.png"), atol=1e-6
    )


def test_mask_lookup_by_name_and_binarisation(tmp_path: Path) -> None:
    images, masks = tmp_path / "img", tmp_path / "gt"
    images.mkdir()
    masks.mkdir()
    rgb = np.full((16, 16, 3), 100, np.uint8)
    m = np.zeros((16, 16), np.uint8)
    m[2:5, 3:9] = 7  # faint but nonzero: counts as anomalous, as in VisionAD
    m[10, 10] = 255
    for name, mask_name in (("a.png", "a.png"), ("b.png", "b_mask.png"), ("c.png", "c.jpg")):
        Image.fromarray(rgb).save(images / name)
        Image.fromarray(m).save(masks / mask_name)
    (masks / "c.jpg").unlink()
    Image.fromarray(m).save(masks / "c.png", format="PNG")  # c.png found for c.png first
    assert find_mask(masks, "a.png") == masks / "a.png"
    assert find_mask(masks, "b.png") == masks / "b_mask.png"
    assert find_mask(masks, "c.jpg") == masks / "c.png"
    assert find_mask(masks, "zzz.png") is None
    ds = ImageDataset(images, mask_folder_path=masks)
    for i in range(3):
        mask = ds[i][1]
        assert mask.shape == (1, 16, 16) and torch.equal(mask[0], torch.from_numpy(m > 0).float())


def test_mask_of_other_size_resized_to_image_nearest(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "gt").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "img" / "x.png")
    m = np.zeros((16, 16), np.uint8)
    m[4:8, 4:8] = 255
    Image.fromarray(m).save(tmp_path / "gt" / "x_mask.png")
    mask = ImageDataset(tmp_path / "img", mask_folder_path=tmp_path / "gt")[0][1]
    assert mask.shape == (1, 32, 32) and mask.sum() == 64 and set(mask.unique().tolist()) == {0.0, 1.0}


def test_grayscale_and_rgba_become_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (20, 24), dtype=np.uint8)
    rgba = rng.integers(0, 256, (20, 24, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: alpha is dropped, not composited
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "r.png")
    ds = ImageDataset(tmp_path, pre_pro_transforms=lambda t: t)
    g, r = ds[0][0], ds[1][0]
    assert g.shape == (3, 20, 24) and torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    assert torch.allclose(g[0], torch.from_numpy(gray / 255.0).float())
    assert r.shape == (3, 20, 24)
    assert torch.allclose(r, torch.from_numpy(rgba[..., :3] / 255.0).permute(2, 0, 1).float())


def test_pre_normalisation_hook(tiny_mvtec: Path, tmp_path: Path) -> None:
    train, _, _ = _loaders(_dataset(tiny_mvtec, tmp_path), shuffle=False)
    seen: list[tuple[int, int]] = []

    def hook(pil: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(pil.size)
        tensor = TF.to_tensor(pil)
        tensor[:, :8, :8] = 1.0  # a "synthetic defect" before normalisation
        mask = torch.zeros(1, *tensor.shape[-2:])
        mask[:, :8, :8] = 1
        return tensor, mask

    train.dataset.pre_normalisation_transform = hook
    images, _, info = next(iter(train))
    assert seen and seen[0] == (64, 64)
    assert info.shape == (4, 1, 64, 64) and info[:, :, :8, :8].min() == 1
    white = (1.0 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(images[0, :, 0, 0], white)  # hook output was normalised, then resized
    train.dataset.pre_normalisation_transform = None
    _, _, info = next(iter(train))
    assert torch.equal(info, torch.zeros(4, dtype=torch.long))


def test_unreadable_image_error_names_file(tiny_mvtec: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    shutil.copytree(tiny_mvtec / "train" / "good", folder)
    (folder / "003.png").write_bytes(b"not a png at all")
    ds = ImageDataset(folder)
    with pytest.raises(OSError, match=r"cannot read image .*003\.png"):
        ds[3]


def test_missing_mask_error_at_construction_names_file(tiny_mvtec: Path, tmp_path: Path) -> None:
    cls = tmp_path / "cls"
    shutil.copytree(tiny_mvtec, cls)
    (cls / "ground_truth" / "defect" / "002_mask.png").unlink()
    d = _dataset(cls, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no mask for 1 image.*defect/002\.png"):
        _loaders(d)


def test_seeded_shuffle_is_reproducible(tiny_mvtec: Path, tmp_path: Path) -> None:
    d = _dataset(tiny_mvtec, tmp_path)

    def order(seed: int, epochs: int = 2) -> list[str]:
        train = _loaders(d, seed=seed)[0]
        return [n for _ in range(epochs) for _, names, _ in train for n in names]

    first = order(3)
    assert first == order(3)
    assert sorted(first[:8]) == [f"{i:03d}.png" for i in range(8)]
    assert order(3) != order(4)
    plain = _loaders(d, shuffle=False)[0]
    assert [n for _, names, _ in plain for n in names] == [f"{i:03d}.png" for i in range(8)]
    _, regular, novel = _loaders(d, seed=5)  # test loaders keep file order
    assert [n for _, names, _ in regular for n in names] == regular.dataset.image_names


def test_unknown_dataset_keyword_is_an_error(tiny_mvtec: Path, tmp_path: Path) -> None:
    d = _dataset(tiny_mvtec, tmp_path)
    with pytest.raises(TypeError, match="folder_path_novl_test"):
        create_dataloaders(None, None, None, 2, folder_path_novl_test="x", **d)


def test_index_images_groups_folders_by_prefixed_name(tmp_path: Path) -> None:
    for defect in ("scratch", "crack"):
        (tmp_path / defect).mkdir()
        for name in ("001.png", "000.png"):
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / defect / name)
    (tmp_path / "crack" / "notes.txt").write_text("not an image")
    items = index_images([tmp_path / "scratch", tmp_path / "crack"])
    assert [n for n, _, _ in items] == [
        "crack_000.png",
        "crack_001.png",
        "scratch_000.png",
        "scratch_001.png",
    ]
    assert [i for _, _, i in items] == [1, 1, 0, 0]


@pytest.mark.skipif(not (SHARED_DATA / "magnetic_tile").is_dir(), reason="shared data not present")
def test_dev_magnetic_tile_grayscale_jpeg() -> None:
    d = load_dataset("dev_magnetic_tile")
    _, _, novel = create_dataloaders(
        None,
        None,
        default_identical_transforms(32),
        2,
        novel_test_end=2,
        **{k: v for k, v in d.items() if k != "novel_test_end"},
    )
    images, masks, names, _ = next(iter(novel))
    assert images.shape == (2, 3, 32, 32) and masks.shape == (2, 1, 32, 32)
    assert all(n.startswith("blowhole_") for n in names) and masks.sum() > 0


def test_image_level_only_split_carries_nan_masks(tiny_mvtec: Path, tmp_path: Path) -> None:
    d = {**_dataset(tiny_mvtec, tmp_path), "pixel_labels": False, "folder_path_novel_masks": None}
    _, regular, novel = _loaders(d)
    images, masks, names, _ = next(iter(novel))
    assert images.shape == (3, 3, 32, 32) and masks.shape == (3, 1, 32, 32)
    assert torch.isnan(masks).all()  # "unknown", never mistaken for an empty mask
    assert novel.dataset.novel and not novel.dataset.pixel_labels and novel.dataset.mask_paths is None
    assert list(names) == ["defect_000.png", "defect_001.png", "defect_002.png"]
    with pytest.raises(TypeError, match=r"needs dataset key\(s\) \['folder_path_novel_masks'\]"):
        _loaders({**d, "pixel_labels": True})


def test_num_workers_decode_in_parallel_with_identical_batches(tiny_mvtec: Path, tmp_path: Path) -> None:
    d = _dataset(tiny_mvtec, tmp_path)
    serial = _loaders(d, seed=2)
    parallel = _loaders(d, seed=2, num_workers=2)
    assert [loader.num_workers for loader in parallel] == [2, 2, 2]
    for a, b in zip(serial, parallel):
        for batch_a, batch_b in zip(a, b):
            assert torch.equal(batch_a[0], batch_b[0]) and list(batch_a[-2]) == list(batch_b[-2])
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0"):
        _loaders(d, num_workers=-1)
