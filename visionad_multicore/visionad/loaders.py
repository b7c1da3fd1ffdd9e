"""VisionAD-compatible image datasets and data loaders.

Items are VisionAD's tuples: training and regular test ``(image, name, callback_info)``, anomalous test
``(image, mask, name, callback_info)``. Order of operations per item, as in VisionAD's
``data/load_image_data.py``: open with PIL -> ``pre_normalisation_transform`` hook (if set) -> ToTensor ->
RGBA to RGB, one channel to three -> ``pre_pro_transforms`` (Normalize with the dataset mean/std) ->
``identical_transforms`` (e.g. Resize 256 NEAREST; masks too) -> ``training_transformations`` (train only).

Deliberate differences from VisionAD (none changes a metric):
- a folder argument may be a list of folders (MVTec defect folders indexed in place); items are then named
  ``<folder name>_<file>`` and sorted by that name, exactly as in VisionAD's grouped copies;
- only image files are indexed (VisionAD lists every file in the folder);
- a mask of another size but the same aspect ratio as its image is resized with NEAREST, so it stays binary
  (VisionAD: bilinear), with a warning; a mask of another aspect ratio is an error (VisionAD stretches it);
- a mask counts as anomalous wherever any channel is > 0 (VisionAD's rule: non-binary masks are thresholded);
- an alpha channel is dropped, as in VisionAD, with a warning the first time; an RGBA image returned by the
  hook keeps the hook's pixels (VisionAD re-reads the file and loses them);
- unreadable images and missing masks raise errors naming the file (VisionAD prints and yields None), and
  masks are checked when the dataset is built;
- images of different sizes in one batch (no fixed-size resize in ``identical_transforms``) raise an error
  naming the files and their sizes instead of torch's bare ``stack`` error;
- an image-level-only dataset (``pixel_labels: False``) has no masks: its anomalous items carry a mask full of
  NaN ("unknown"), so that nothing can mistake it for a real mask (pixel metrics are not computed for it);
- only the training loader is shuffled, with a seeded ``torch.Generator``; the test loaders keep file order
  (VisionAD shuffles them too; paths and masks travel with their images, so metrics are the same);
- ``num_workers`` worker processes decode images in parallel (VisionAD: 0); workers are not persistent, so a
  ``pre_normalisation_transform`` set between epochs reaches them.

``image_interpolation`` (a model-dict key of ours, not VisionAD's): VisionAD's configs resize images and masks
with the same ``Resize(..., NEAREST)``, which for a 1024 px image keeps every fourth pixel (aliasing). With
``image_interpolation="bilinear"`` (or ``"bicubic"``) every ``Resize`` in ``identical_transforms`` resizes the
*images* with that filter, antialiased, while masks keep the transform as written (NEAREST stays binary). The
default ``None`` is VisionAD's behaviour, for comparable leaderboard numbers.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from visionad_multicore.constants import IMAGENET_MEAN, IMAGENET_STD
from visionad_multicore.visionad.datasets import DATASET_DICT_KEYS

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
Transform = Callable[[torch.Tensor], torch.Tensor]
FolderArg = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


@dataclass(frozen=True)
class Split:
    """Where one split's images live in a dataset dict: folder key, slicing keys, mask key (anomalous only)."""

    name: str
    folder_key: str
    start_key: str
    end_key: str
    skip_key: str
    mask_key: str | None = None


SPLITS = (
    Split(
        "train", "folder_path_regular_train", "regular_train_start", "regular_train_end", "skip_train_regular"
    ),
    Split(
        "regular_test",
        "folder_path_regular_test",
        "regular_test_start",
        "regular_test_end",
        "skip_test_regular",
    ),
    Split(
        "novel_test",
        "folder_path_novel_test",
        "novel_test_start",
        "novel_test_end",
        "skip_test_novel",
        "folder_path_novel_masks",
    ),
)
"""VisionAD's three splits, in loader order."""


def default_identical_transforms(size: int = 256) -> transforms.Compose:
    """Resize to ``(size, size)`` with NEAREST interpolation, as in VisionAD's own configs."""
    return transforms.Compose([transforms.Resize((size, size), interpolation=InterpolationMode.NEAREST)])


IMAGE_INTERPOLATIONS: dict[str, InterpolationMode] = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


def check_image_interpolation(name: str | None) -> str | None:
    """``name`` if it is ``None`` or a key of :data:`IMAGE_INTERPOLATIONS`, else a ValueError listing them."""
    if name is not None and name not in IMAGE_INTERPOLATIONS:
        raise ValueError(
            f"unknown image_interpolation {name!r}; valid: None (as identical_transforms says), "
            + ", ".join(IMAGE_INTERPOLATIONS)
        )
    return name


def with_image_interpolation(transform: Transform | None, name: str | None) -> Transform | None:
    """A copy of ``transform`` whose every ``Resize`` uses interpolation ``name`` (antialiased unless nearest).

    Args:
        transform: ``identical_transforms`` (a ``Resize`` or a ``Compose`` holding some).
        name: a key of :data:`IMAGE_INTERPOLATIONS`, or ``None`` to return ``transform`` itself.

    Raises:
        ValueError: ``name`` is unknown, or ``transform`` holds no ``Resize`` for it to act on.
    """
    if name is None or check_image_interpolation(name) is None or transform is None:
        return transform
    out = copy.deepcopy(transform)
    resizes = [t for t in getattr(out, "transforms", [out]) if isinstance(t, transforms.Resize)]
    if not resizes:
        raise ValueError(
            f"image_interpolation={name!r} needs a transforms.Resize in identical_transforms, got {transform!r}"
        )
    for resize in resizes:
        resize.interpolation = IMAGE_INTERPOLATIONS[name]
        resize.antialias = name != "nearest"
    return out


def default_pre_pro_transforms(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> transforms.Compose:
    """Normalize with the dataset ``mean`` / ``std``: what VisionAD's ``run.py`` builds for each dataset."""
    return transforms.Compose([transforms.Normalize(mean=list(mean), std=list(std))])


def _folders(folder_path: FolderArg) -> tuple[list[Path], bool]:
    """``(folders, grouped)``: a single folder, or a list of folders to group."""
    if isinstance(folder_path, (str, os.PathLike)):
        return [Path(folder_path)], False
    return [Path(p) for p in folder_path], True


def index_images(folder_path: FolderArg) -> list[tuple[str, Path, int]]:
    """List the images of one folder, or of several folders as if grouped into one.

    Args:
        folder_path: a folder (items named by file name), or a list of folders (items named
            ``<folder name>_<file>``, VisionAD's name for the grouped copy of an MVTec defect image).

    Returns:
        ``(name, path, folder index)`` per image, sorted by name.
    """
    folders, grouped = _folders(folder_path)
    items: list[tuple[str, Path, int]] = []
    for i, folder in enumerate(folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {folder}")
        for file in os.listdir(folder):
            if file.lower().endswith(IMAGE_EXTENSIONS) and (folder / file).is_file():
                items.append((f"{folder.name}_{file}" if grouped else file, folder / file, i))
    items.sort(key=lambda t: t[0])
    names = [t[0] for t in items]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"folders {[str(f) for f in folders]} give duplicate image names {dup[:5]}")
    return items


def select_items(
    folder_path: FolderArg, start: int | None = None, end: int | None = None, skip: int = 1
) -> list[tuple[str, Path, int]]:
    """VisionAD's slicing of a split: ``index_images(folder_path)[start:end][::skip]``.

    Raises:
        ValueError: ``skip`` is not an integer >= 1.
    """
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 1:
        raise ValueError(f"skip must be an integer >= 1, got {skip!r}")
    return index_images(folder_path)[slice(start, end)][::skip]


def split_items(dataset: Mapping[str, Any], split: Split) -> list[tuple[str, Path, int]]:
    """The items (name, path, folder index) one split of a dataset dict will load, in order."""
    return select_items(
        dataset[split.folder_key],
        dataset.get(split.start_key),
        dataset.get(split.end_key),
        dataset.get(split.skip_key, 1),
    )


def mask_folders(folder_path: FolderArg, mask_folder_path: FolderArg) -> list[Path]:
    """The mask folders aligned with the image folders (one per image folder).

    Raises:
        ValueError: the two lists have different lengths.
    """
    masks, n_images = _folders(mask_folder_path)[0], len(_folders(folder_path)[0])
    if len(masks) != n_images:
        raise ValueError(
            f"{n_images} image folder(s) but {len(masks)} mask folder(s): {folder_path} vs {mask_folder_path}"
        )
    return masks


def find_mask(mask_folder: str | os.PathLike[str], file_name: str) -> Path | None:
    """The mask of image ``file_name`` in ``mask_folder``: ``x.png``, ``x_mask.png``, ``x.jpg`` (or None)."""
    stem = os.path.splitext(file_name)[0]
    for cand in (file_name, f"{stem}.png", f"{stem}_mask.png", f"{stem}.jpg", f"{stem}_mask.jpg"):
        if (Path(mask_folder) / cand).is_file():
            return Path(mask_folder) / cand
    return None


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except Exception as err:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError)
        raise OSError(f"cannot read image {path}: {err}") from err
    return image


def _pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> float tensor (C, H, W) in [0, 1] with C in {1, 3}; alpha dropped as VisionAD does."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float32)
        return torch.from_numpy(arr / (65535.0 if arr.max() > 255 else 255.0))[None]
    if image.mode in ("1", "LA", "La"):
        image = image.convert("L")
    elif image.mode not in ("L", "RGB", "F"):
        image = image.convert("RGB")  # RGBA, P, CMYK, YCbCr, ...
    return TF.to_tensor(image)


def _to_rgb_tensor(image: Image.Image | torch.Tensor | np.ndarray) -> torch.Tensor:
    """Hook output or PIL image -> float tensor (3, H, W)."""
    if isinstance(image, Image.Image):
        tensor = _pil_to_tensor(image)
    elif isinstance(image, torch.Tensor):
        tensor = image.float()
    else:
        tensor = TF.to_tensor(image)
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.shape[0] == 4:
        tensor = tensor[:3]
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1).clone()
    if tensor.shape[0] != 3:
        raise ValueError(f"expected an image with 1, 3 or 4 channels, got shape {tuple(tensor.shape)}")
    return tensor


class ImageDataset(Dataset):
    """Images of one split, optionally with masks; VisionAD's item tuples.

    Attributes:
        image_names: names reported as the "path" of each item (file name, or ``<defect>_<file>``).
        image_paths: full paths of the images, in item order.
        mask_paths: full paths of the masks (anomalous split with pixel labels) or None.
        novel: True for the anomalous split (items carry a mask).
        pixel_labels: False for an anomalous split without masks (items carry a NaN mask).
        pre_normalisation_transform: None, or ``f(pil_image) -> (image, info)``; ``info`` becomes the item's
            callback_info (0 without a hook). Set it on ``dataloader.dataset`` and remove it when done.
        pp_transforms: the normalisation applied to every image (VisionAD's attribute name).
        mean, std: the dataset's normalisation statistics.
    """

    def __init__(
        self,
        folder_path: FolderArg,
        pre_pro_transforms: Transform | None = None,
        identical_transforms: Transform | None = None,
        training_transformations: Transform | None = None,
        mask_folder_path: FolderArg | None = None,
        start: int | None = None,
        end: int | None = None,
        skip: int = 1,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        image_interpolation: str | None = None,
        image_level_only: bool = False,
    ) -> None:
        """Index the images (and masks) of a split.

        Args:
            folder_path: image folder, or a list of folders grouped as one (see ``index_images``).
            pre_pro_transforms: applied to the (3, H, W) tensor in [0, 1]; None = Normalize(mean, std).
            identical_transforms: applied to image and mask alike, after normalisation.
            training_transformations: applied to the image last (give it only for the training split).
            mask_folder_path: mask folder(s) aligned with ``folder_path``; makes this an anomalous split.
            start, end, skip: VisionAD's slicing, ``sorted_names[start:end][::skip]``.
            mean, std: dataset statistics (used by the default ``pre_pro_transforms``, exposed as attributes).
            image_interpolation: resize filter of the images' ``Resize`` steps (masks keep the transform as
                given); ``None``: ``identical_transforms`` as given for both (VisionAD).
            image_level_only: an anomalous split without masks (``mask_folder_path`` must be None); items
                carry a mask of NaN.
        """
        if image_level_only and mask_folder_path is not None:
            raise ValueError("image_level_only=True takes no mask_folder_path (the split has no masks)")
        items = select_items(folder_path, start, end, skip)
        if not items:
            raise ValueError(f"no images in {folder_path} (slice start={start}, end={end}, skip={skip})")
        self.image_names: list[str] = [name for name, _, _ in items]
        self.image_paths: list[str] = [str(path) for _, path, _ in items]
        self.mean = list(mean)
        self.std = list(std)
        self.pp_transforms = pre_pro_transforms or default_pre_pro_transforms(mean, std)
        self.identical_transforms = identical_transforms
        self.image_interpolation = check_image_interpolation(image_interpolation)
        self.image_transforms = with_image_interpolation(identical_transforms, image_interpolation)
        self.training_transformations = training_transformations
        self.pre_normalisation_transform: Callable[[Image.Image], tuple[Any, Any]] | None = None
        self.novel = mask_folder_path is not None or image_level_only
        self.pixel_labels = not image_level_only
        self.mask_paths: list[str] | None = None
        self._warned: set[str] = set()
        if mask_folder_path is not None:
            folders = mask_folders(folder_path, mask_folder_path)
            self.mask_paths = []
            missing = []
            for _, path, i in items:
                mask = find_mask(folders[i], path.name)
                if mask is None:
                    missing.append(f"{path} (looked in {folders[i]})")
                self.mask_paths.append(str(mask))
            if missing:
                raise FileNotFoundError(
                    f"no mask for {len(missing)} image(s), expected <name>.png, <name>_mask.png or <name>.jpg "
                    "(for a dataset with image-level labels only, set pixel_labels: false in its registry "
                    "entry): " + "; ".join(missing[:10])
                )

    def __len__(self) -> int:
        return len(self.image_paths)

    def _warn_once(self, kind: str, message: str, *args: Any) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning(message + " (reported once per split)", *args)

    def _mask(self, idx: int, size: tuple[int, int]) -> torch.Tensor:
        """Binary mask (1, H, W) at the image size ``size``; NaN when the split has no pixel labels."""
        if not self.pixel_labels:
            return torch.full((1, *size), float("nan"))
        assert self.mask_paths is not None
        path = Path(self.mask_paths[idx])
        mask = _pil_to_tensor(_open(path))
        mask = (mask > 0).any(dim=0, keepdim=True).float()  # (1, h, w): any value > 0 is anomalous
        found = (int(mask.shape[-2]), int(mask.shape[-1]))
        if found != size:
            if found[0] * size[1] != found[1] * size[0]:
                raise ValueError(
                    f"mask {path} is {found[1]}x{found[0]} (width x height) but its image "
                    f"{self.image_paths[idx]} is {size[1]}x{size[0]}: a different aspect ratio, so the mask "
                    "cannot be aligned with the image; expected a mask of the image's size"
                )
            self._warn_once(
                "mask_size",
                "mask %s is %dx%d, its image %dx%d: resizing the mask (NEAREST, stays binary)",
                path,
                found[1],
                found[0],
                size[1],
                size[0],
            )
            mask = TF.resize(mask, list(size), interpolation=InterpolationMode.NEAREST)
        return mask

    def __getitem__(self, idx: int) -> tuple[Any, ...]:
        """``(image (3, H, W), name, info)``, or ``(image, mask (1, H, W), name, info)`` for anomalous data."""
        pil = _open(Path(self.image_paths[idx]))
        if pil.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in pil.info:
            self._warn_once(
                "alpha", "image %s has an alpha channel: it is dropped, as in VisionAD", self.image_paths[idx]
            )
        if self.pre_normalisation_transform is not None:
            out, info = self.pre_normalisation_transform(pil)
        else:
            out, info = pil, 0
        image = _to_rgb_tensor(out)
        mask = self._mask(idx, (image.shape[-2], image.shape[-1])) if self.novel else None
        image = self.pp_transforms(image)
        if self.identical_transforms is not None:
            assert self.image_transforms is not None
            image = self.image_transforms(image)
            if mask is not None:
                mask = self.identical_transforms(mask)
        if self.training_transformations is not None:
            image = self.training_transformations(image)
        if mask is not None:
            return image, mask, self.image_names[idx], info
        return image, self.image_names[idx], info


def collate(batch: list[tuple[Any, ...]]) -> Any:
    """torch's ``default_collate``, with a clear error when the images of a batch differ in size.

    Raises:
        ValueError: images of different sizes; the message names them and the transform that fixes it.
    """
    try:
        return default_collate(batch)
    except RuntimeError as err:
        sizes = {}
        for item in batch:
            image, name = item[0], item[-2]
            if isinstance(image, torch.Tensor):
                sizes[str(name)] = "x".join(str(d) for d in image.shape[-2:][::-1])
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{name} {size}" for name, size in list(sizes.items())[:6])
            raise ValueError(
                f"images of different sizes in one batch ({listed}; width x height): add a fixed-size resize "
                "such as transforms.Resize((256, 256)) to the config's identical_transforms"
            ) from err
        raise


def create_dataloaders(
    pre_pro_transforms: Transform | None,
    training_transformations: Transform | None,
    identical_transforms: Transform | None,
    batch_size: int,
    test_batch_size: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    image_interpolation: str | None = None,
    **dataset: Any,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """VisionAD's three loaders for a dataset dict from ``datasets.load_dataset``.

    Args:
        pre_pro_transforms: usually ``Normalize(dataset mean, dataset std)``; None builds exactly that.
        training_transformations: augmentation for the training split only (None or an empty Compose: none).
        identical_transforms: applied to every image and mask (``default_identical_transforms(256)``).
        batch_size: training batch size.
        test_batch_size: batch size of both test loaders (None: ``batch_size``).
        shuffle: shuffle the training loader, with ``torch.Generator().manual_seed(seed)``.
        seed: seed of that generator (same seed, same order of batches, epoch after epoch).
        num_workers: DataLoader worker processes per loader (0: decode in the main process).
        device: pins memory when it is a CUDA device.
        image_interpolation: resize filter of the images (masks keep ``identical_transforms``); see the module
            docstring. ``None``: VisionAD's behaviour.
        **dataset: the keys of ``load_dataset``'s dict (folder paths, slicing, mean, std, pixel_labels,
            dataset_key); any other key is an error. ``folder_path_novel_masks`` may be None when
            ``pixel_labels`` is False.

    Returns:
        ``(train, regular_test, novel_test)``: items ``(image (3, H, W), name, info)`` for the first two,
        ``(image, mask (1, H, W) in {0, 1}, name, info)`` for the anomalous test loader (mask all NaN without
        pixel labels).
    """
    unknown = sorted(set(dataset) - set(DATASET_DICT_KEYS) - {"unnormalise"})
    if unknown:
        raise TypeError(
            f"create_dataloaders got unknown dataset key(s) {unknown}; "
            f"valid keys: {', '.join(DATASET_DICT_KEYS)}"
        )
    pixel_labels = bool(dataset.get("pixel_labels", True))
    needed = [split.folder_key for split in SPLITS] + (["folder_path_novel_masks"] if pixel_labels else [])
    missing = [k for k in needed if dataset.get(k) is None]
    if missing:
        raise TypeError(f"create_dataloaders needs dataset key(s) {missing}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    if dataset.get("mean") is None or dataset.get("std") is None:
        logger.warning(
            "dataset %s has no mean/std: normalising with ImageNet's", dataset.get("dataset_key", "?")
        )
    mean = dataset.get("mean") or IMAGENET_MEAN
    std = dataset.get("std") or IMAGENET_STD
    if pre_pro_transforms is None:
        pre_pro_transforms = default_pre_pro_transforms(mean, std)
    splits = []
    for split in SPLITS:
        anomalous = split.mask_key is not None
        splits.append(
            ImageDataset(
                dataset[split.folder_key],
                pre_pro_transforms=pre_pro_transforms,
                identical_transforms=identical_transforms,
                training_transformations=training_transformations if split.name == "train" else None,
                mask_folder_path=dataset[split.mask_key] if split.mask_key and pixel_labels else None,
                start=dataset.get(split.start_key),
                end=dataset.get(split.end_key),
                skip=dataset.get(split.skip_key, 1),
                mean=mean,
                std=std,
                image_interpolation=image_interpolation,
                image_level_only=anomalous and not pixel_labels,
            )
        )
    train, regular, novel = splits
    pin = torch.device(device).type == "cuda"
    test_bs = batch_size if test_batch_size is None else test_batch_size
    generator = torch.Generator().manual_seed(seed)
    logger.info(
        "dataset %s: %d train, %d regular test, %d anomalous test images%s",
        dataset.get("dataset_key", "?"),
        len(train),
        len(regular),
        len(novel),
        "" if pixel_labels else " (image-level labels only)",
    )
    common: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin, "collate_fn": collate}
    return (
        DataLoader(train, batch_size, shuffle=shuffle, generator=generator, **common),
        DataLoader(regular, test_bs, shuffle=False, **common),
        DataLoader(novel, test_bs, shuffle=False, **common),
    )
