"""Checks before any work: the device, the results folder and every file of every dataset of a config.

A sweep over many (model, dataset) pairs should not lose hours to a problem a look at the files would have
found. :func:`check_dataset` reads every image the loaders will read (the same folders, slicing and mask
lookup) and reports, each with the file and what was expected:

errors (the run does not start)
    a missing or empty folder; an image that does not decode (truncated, empty, not an image); images of
    different sizes when no model resizes to a fixed size; an anomalous image without a mask (unless the
    dataset is image-level only, ``pixel_labels: false``); a mask that does not decode or has another aspect
    ratio than its image; a file in two splits (same path) or the same content in training and test images
    (SHA-256 of the file bytes); a normalisation std of 0;
warnings (the run starts; the behaviour is documented)
    an alpha channel (dropped, as in VisionAD); a mask of another size but the same aspect ratio (resized with
    NEAREST); a non-binary mask (every value > 0 counts as anomalous, VisionAD's rule); an empty mask; files
    that are not images (ignored by our loaders; VisionAD's own loaders would try to read them).

:func:`check_device` and :func:`check_results_folder` find an unusable ``--device`` or an unwritable results
folder the same way, before any work.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from tqdm.auto import tqdm

from visionad_multicore.visionad.config import ConfigError, RunConfig, dataset_keys
from visionad_multicore.visionad.loaders import (
    IMAGE_EXTENSIONS,
    SPLITS,
    Split,
    find_mask,
    mask_folders,
    split_items,
)

__all__ = [
    "CheckReport",
    "PreflightError",
    "Problem",
    "check_dataset",
    "check_run",
    "check_device",
    "check_results_folder",
    "fixed_output_size",
]

ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")
MAX_LISTED = 10  # files named per kind of problem; the rest are counted


@dataclass(frozen=True)
class Problem:
    """One finding: ``level`` is ``"error"`` (the run cannot start) or ``"warning"``."""

    level: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.level.upper()} [{self.where}] {self.message}"


@dataclass
class CheckReport:
    """Everything the checks found, and how much they looked at."""

    problems: list[Problem] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    n_images: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    @property
    def ok(self) -> bool:
        """True when nothing stops the run (warnings allowed)."""
        return not self.errors

    def format(self) -> str:
        """A readable report: the problems, errors first, and a one-line summary."""
        lines = [str(p) for p in self.errors + self.warnings]
        lines.append(
            f"Checked {len(self.datasets)} dataset(s), {self.n_images} image and mask files: "
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        )
        return "\n".join(lines)


class PreflightError(ConfigError):
    """The checks before the run found errors; ``report`` holds them all (nothing was run or written)."""

    def __init__(self, report: CheckReport) -> None:
        super().__init__(
            "the run cannot start; the checks before any work found:\n"
            + report.format()
            + "\n(run with --check to repeat only these checks)"
        )
        self.report = report


# ------------------------------------------------------------------------------------------ device, folder
def check_device(device: str | None) -> list[Problem]:
    """Problems with a torch device string: unparsable, CUDA or MPS absent, a GPU index out of range."""
    if device is None:
        return []
    where = f"device {device}"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        return [Problem("error", where, f"not a torch device ({err}); expected cpu, cuda or cuda:N")]
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
            return [
                Problem(
                    "error",
                    where,
                    f"CUDA is not available on this machine (torch {torch.__version__}, {built}; no usable "
                    "NVIDIA GPU or driver found): run with --device cpu, or install a CUDA build of torch",
                )
            ]
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            return [
                Problem(
                    "error", where, f"this machine has {count} CUDA device(s): cuda:0 to cuda:{count - 1}"
                )
            ]
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            return [
                Problem("error", where, "MPS (Apple GPU) is not available on this machine: use --device cpu")
            ]
    elif dev.type != "cpu":
        return [Problem("warning", where, f"device type {dev.type!r} is not checked before the run")]
    return []


def check_results_folder(folder: Path) -> list[Problem]:
    """Problems writing into ``folder`` (created later by the run): not a folder, not writable."""
    where = "results folder"
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return [Problem("error", where, f"cannot create {folder}: {probe} is a file, not a folder")]
    if probe != folder:
        if not os.access(probe, os.W_OK | os.X_OK):
            return [Problem("error", where, f"cannot create {folder}: no write permission in {probe}")]
        return []
    try:
        with open(folder / f".write_test_{os.getpid()}", "wb") as f:
            f.write(b"")
        os.unlink(f.name)
    except OSError as err:
        return [Problem("error", where, f"cannot write into {folder}: {err.strerror or err}")]
    return []


# ------------------------------------------------------------------------------------------ transforms
def fixed_output_size(pipeline: Any) -> tuple[int, int] | None:
    """The ``(height, width)`` every output of ``pipeline`` has, when a transform fixes it, else None.

    ``Resize((h, w))``, ``CenterCrop``, ``RandomCrop`` and ``RandomResizedCrop`` fix the size; ``Resize(n)``
    keeps the aspect ratio, so it does not. Later transforms that do not change sizes keep a fixed size.
    """
    steps = pipeline.transforms if isinstance(pipeline, transforms.Compose) else [pipeline]
    size: tuple[int, int] | None = None
    for step in steps:
        if isinstance(step, transforms.Compose):
            size = fixed_output_size(step) or size
        elif isinstance(step, transforms.Resize):
            size = _pair(step.size) if isinstance(step.size, Sequence) and len(step.size) == 2 else None
        elif isinstance(step, (transforms.CenterCrop, transforms.RandomCrop, transforms.RandomResizedCrop)):
            size = _pair(step.size)
    return size


def _pair(size: Any) -> tuple[int, int]:
    values = list(size) if isinstance(size, Sequence) else [size]
    return (int(values[0]), int(values[-1]))


# ------------------------------------------------------------------------------------------ files
@dataclass
class _FileInfo:
    size: tuple[int, int] | None = None  # (width, height) as PIL gives it
    mode: str = ""
    alpha: bool = False
    digest: str = ""
    error: str | None = None
    mask_values: tuple[bool, bool, bool] | None = None  # (binary, any anomalous, any normal)


def _inspect(path: Path, mask: bool) -> _FileInfo:
    """Read and fully decode one file; never raises."""
    info = _FileInfo()
    try:
        payload = path.read_bytes()
    except OSError as err:
        info.error = f"cannot read: {err.strerror or err}"
        return info
    if not payload:
        info.error = "empty file (0 bytes)"
        return info
    info.digest = hashlib.sha256(payload).hexdigest()
    try:
        with Image.open(io.BytesIO(payload)) as image:
            image.load()
            info.size, info.mode = image.size, image.mode
            info.alpha = image.mode in ALPHA_MODES or "transparency" in image.info
            if mask:
                plain = image if image.mode in ("1", "L", "I", "I;16", "F", "RGB") else image.convert("RGB")
                values = np.asarray(plain)
                if values.ndim == 3:  # any channel > 0 is anomalous, as the loaders read it
                    values = values.max(axis=2)
                binary = bool(np.isin(values, (0, values.max())).all()) if values.size else True
                positive = values > 0
                info.mask_values = (binary, bool(positive.any()), bool((~positive).any()))
    except Exception as err:  # PIL raises many types for broken files  # noqa: BLE001
        info.error = f"cannot decode as an image: {type(err).__name__}: {err}"
    return info


def _listed(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:MAX_LISTED])
    return shown + (f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else "")


def _stray_files(folders: Iterable[Path]) -> list[str]:
    """Files in the image folders that are not images (our loaders skip them; VisionAD's do not)."""
    stray = []
    for folder in folders:
        if folder.is_dir():
            stray += [
                str(folder / name)
                for name in sorted(os.listdir(folder))
                if (folder / name).is_file() and not name.lower().endswith(IMAGE_EXTENSIONS)
            ]
    return stray


def _as_folders(value: Any) -> list[Path]:
    return [Path(value)] if isinstance(value, (str, os.PathLike)) else [Path(v) for v in value]


def check_dataset(
    key: str,
    dataset: Mapping[str, Any],
    fixed_size: bool = False,
    workers: int = 0,
    progress: bool = True,
    strict_listing: bool = False,
) -> tuple[list[Problem], int]:
    """Check every file one dataset dict's loaders will read.

    Args:
        key: dataset key (names the problems).
        dataset: the dict of ``load_dataset`` (or of a VisionAD checkout's ``load_dataset``).
        fixed_size: every model resizes to a fixed size, so images of different sizes are fine.
        workers: threads decoding files (0: one per CPU core, at most 8).
        progress: show a progress bar.
        strict_listing: files that are not images are errors (VisionAD's loaders read every file).

    Returns:
        ``(problems, number of files read)``.
    """
    problems: list[Problem] = []

    def add(level: str, message: str) -> None:
        problems.append(Problem(level, key, message))

    pixel_labels = bool(dataset.get("pixel_labels", True))
    std = dataset.get("std")
    if std is not None and any(float(s) == 0 for s in std):
        add("error", f"std {list(std)} has a zero: the loaders would divide by zero")
    items: dict[str, list[Path]] = {}
    masks: dict[Path, Path | None] = {}
    for split in SPLITS:
        folders = dataset.get(split.folder_key)
        if folders is None:
            add("error", f"{split.folder_key} is missing from the dataset dict")
            continue
        missing = [str(f) for f in _as_folders(folders) if not f.is_dir()]
        if missing:
            add("error", f"{split.name}: folder(s) not found: {_listed(missing)}")
            continue
        stray = _stray_files(_as_folders(folders))
        if stray:
            add(
                "error" if strict_listing else "warning",
                f"{split.name}: {len(stray)} file(s) that are not images ("
                + _listed(stray)
                + ")"
                + ("" if strict_listing else ": skipped by these loaders, read by VisionAD's"),
            )
        try:
            found = split_items(dataset, split)
        except (OSError, ValueError) as err:
            add("error", f"{split.name}: {err}")
            continue
        if not found:
            add("error", f"{split.name}: no images in {folders} (after slicing)")
            continue
        items[split.name] = [path for _, path, _ in found]
        if split.mask_key is not None and pixel_labels:
            _find_masks(split, dataset, found, masks, add)

    files = [(p, False) for paths in items.values() for p in paths] + [(m, True) for m in masks.values() if m]
    n_workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        infos = list(
            tqdm(
                pool.map(lambda job: _inspect(*job), files),
                total=len(files),
                desc=f"checking {key}",
                unit="file",
                disable=not progress,
                leave=False,
            )
        )
    info = {path: found for (path, _), found in zip(files, infos)}
    _report_images(items, info, fixed_size, add)
    _report_masks(masks, info, add)
    _report_overlap(items, info, add)
    return problems, len(files)


def _find_masks(split: Split, dataset: Mapping[str, Any], found: list, masks: dict, add: Any) -> None:
    mask_key = split.mask_key
    assert mask_key is not None
    if dataset.get(mask_key) is None:
        add("error", f"{mask_key} is missing (set pixel_labels: false for a dataset without masks)")
        return
    try:
        folders = mask_folders(dataset[split.folder_key], dataset[mask_key])
    except ValueError as err:
        add("error", str(err))
        return
    missing = []
    for _, path, i in found:
        masks[path] = find_mask(folders[i], path.name) if folders[i].is_dir() else None
        if masks[path] is None:
            missing.append(f"{path} (looked in {folders[i]})")
    if missing:
        add(
            "error",
            f"no mask for {len(missing)} anomalous image(s); expected <name>.png, <name>_mask.png or <name>.jpg "
            f"beside the image's name in the mask folder (or pixel_labels: false): {_listed(missing)}",
        )


def _report_images(items: dict, info: dict, fixed_size: bool, add: Any) -> None:
    broken = [f"{p} ({info[p].error})" for paths in items.values() for p in paths if info[p].error]
    if broken:
        add("error", f"{len(broken)} image(s) cannot be used: {_listed(broken)}")
    alpha = [str(p) for paths in items.values() for p in paths if info[p].alpha]
    if alpha:
        add(
            "warning",
            f"{len(alpha)} image(s) with an alpha channel, dropped as in VisionAD: {_listed(alpha)}",
        )
    sizes: dict[tuple[int, int], Path] = {}
    for paths in items.values():
        for p in paths:
            if info[p].size is not None:
                sizes.setdefault(info[p].size, p)
    if len(sizes) > 1 and not fixed_size:
        examples = ", ".join(f"{w}x{h} ({p})" for (w, h), p in list(sizes.items())[:4])
        add(
            "error",
            f"images of {len(sizes)} different sizes (width x height: {examples}) and no model resizes to a fixed "
            "size: add transforms.Resize((256, 256)) to identical_transforms",
        )


def _report_masks(masks: dict, info: dict, add: Any) -> None:
    problems: dict[str, list[str]] = defaultdict(list)
    for image, mask in masks.items():
        if mask is None:
            continue
        m, i = info[mask], info[image]
        if m.error:
            problems["broken"].append(f"{mask} ({m.error})")
            continue
        if m.size and i.size and m.size != i.size:
            same_ratio = m.size[0] * i.size[1] == m.size[1] * i.size[0]
            entry = f"{mask} {m.size[0]}x{m.size[1]} for {image} {i.size[0]}x{i.size[1]}"
            problems["resized" if same_ratio else "aspect"].append(entry)
        if m.mask_values is not None:
            binary, any_anomalous, _ = m.mask_values
            if not binary:
                problems["non_binary"].append(str(mask))
            if not any_anomalous:
                problems["empty"].append(str(mask))
    texts = {
        "broken": ("error", "mask(s) cannot be used"),
        "aspect": ("error", "mask(s) with another aspect ratio than their image (cannot be aligned)"),
        "resized": ("warning", "mask(s) of another size than their image, resized with NEAREST"),
        "non_binary": (
            "warning",
            "non-binary mask(s): every value > 0 counts as anomalous (VisionAD's rule)",
        ),
        "empty": (
            "warning",
            "empty mask(s): the image counts as anomalous with no anomalous pixel (PL leaves it out; if every "
            "mask is empty, pixel metrics are not computable)",
        ),
    }
    for kind, (level, text) in texts.items():
        if problems[kind]:
            add(level, f"{len(problems[kind])} {text}: {_listed(problems[kind])}")


def _report_overlap(items: dict, info: dict, add: Any) -> None:
    names = list(items)
    for a_index, a in enumerate(names):
        for b in names[a_index + 1 :]:
            paths_a = {p.resolve(): p for p in items[a]}
            shared = [str(paths_a[p.resolve()]) for p in items[b] if p.resolve() in paths_a]
            if shared:
                add("error", f"{len(shared)} file(s) in both {a} and {b}: {_listed(shared)}")
            digests_a: dict[str, Path] = {}
            for p in items[a]:
                if info[p].digest:
                    digests_a.setdefault(info[p].digest, p)
            same = [
                f"{digests_a[info[p].digest]} = {p}"
                for p in items[b]
                if info[p].digest in digests_a and digests_a[info[p].digest].resolve() != p.resolve()
            ]
            if same:
                add("error", f"{len(same)} image(s) with the same content in {a} and {b}: {_listed(same)}")


# ------------------------------------------------------------------------------------------ a whole run
def check_run(
    config: RunConfig,
    device: str | None,
    load_dataset: Callable[[str], Mapping[str, Any]],
    results_parent: Path,
    strict_listing: bool = False,
    progress: bool = True,
) -> CheckReport:
    """Every check for a config before any work: devices, the results folder, every dataset's files.

    Args:
        config: the loaded config.
        device: the ``--device`` override (else each model's ``device``).
        load_dataset: key -> dataset dict (our registry, or a VisionAD checkout's ``load_dataset``).
        results_parent: the folder the run folder will be created in.
        strict_listing: files that are not images are errors (runs through VisionAD's loaders).
        progress: progress bars while decoding.

    Returns:
        The :class:`CheckReport`; ``report.ok`` is False when the run must not start.
    """
    report = CheckReport()
    devices = dict.fromkeys(
        str(device or m.get("device")) for m in config.model_list if device or m.get("device")
    )
    for name in devices:
        report.problems += check_device(name)
    report.problems += check_results_folder(results_parent)
    sizes: dict[str, list[bool]] = defaultdict(list)
    workers: dict[str, int] = {}
    for model in config.model_list:
        for key in dataset_keys(model, config):
            sizes[key].append(fixed_output_size(model.get("identical_transforms")) is not None)
            value = model.get("num_workers")
            workers[key] = value if isinstance(value, int) and not isinstance(value, bool) else 0
    for key, fixed in sizes.items():
        report.datasets.append(key)
        try:
            dataset = load_dataset(key)
        except Exception as err:  # unknown key, missing folder, malformed registry: reported, not raised
            report.problems.append(Problem("error", key, f"{type(err).__name__}: {err}"))
            continue
        problems, n_files = check_dataset(
            key, dataset, all(fixed), workers[key], progress=progress, strict_listing=strict_listing
        )
        report.problems += problems
        report.n_images += n_files
    return report
