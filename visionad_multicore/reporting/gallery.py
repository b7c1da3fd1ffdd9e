"""Heatmap gallery: for chosen test images, the input, the ground truth and every method's heatmap.

Reads VisionAD's saved predictions, ``heatmaps.pk`` (in an epoch folder) or ``best.pk`` (in the dataset
folder): a pickle of ``(heatmap_set, image_score_set, targets_set, paths_set)`` with
``heatmap_set = {"heatmap_set_regular": {method: (N, 1, H, W)}, "heatmap_set_novel": {...}}``,
``image_score_set = {"image_score_set_regular": {method: (N,)}, "image_score_set_novel": {...}}``,
``targets_set = {"targets_novel": (N, 1, H, W)}`` and
``paths_set = {"paths_regular": [...], "paths_novel": [...]}``.

The input image is found from its path: the path itself when it exists (our loaders give full paths), else the
file name inside the test folders of ``description.json`` (written beside the pickle) or of our dataset
registry; when none is found the input column is omitted for that image.

Colour scale: each method's heatmaps are scaled by that method's minimum and maximum over all its test
heatmaps in the file, so images of one method are comparable; methods are not on a common scale.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .leaderboard import matches
from .results import atomic_savefig

logger = logging.getLogger(__name__)


@dataclass
class SavedPredictions:
    """One saved prediction pickle, as arrays.

    Attributes:
        path: the pickle file.
        heatmaps: ``{"regular" | "novel": {method: (N, H, W) float32}}``.
        scores: ``{"regular" | "novel": {method: (N,) float}}`` (empty when absent).
        targets_novel: ``(N_novel, H, W)`` float mask in {0, 1}, or None.
        paths: ``{"regular": [...], "novel": [...]}``.
        description: contents of ``description.json`` beside the pickle ({} when absent).
    """

    path: Path
    heatmaps: dict[str, dict[str, np.ndarray]]
    scores: dict[str, dict[str, np.ndarray]]
    targets_novel: np.ndarray | None
    paths: dict[str, list[str]]
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        """Methods with heatmaps for the anomalous test set."""
        return list(self.heatmaps.get("novel", {}))


def _maps(array: Any) -> np.ndarray:
    """(N, 1, H, W) or (N, H, W) array-like -> (N, H, W) float32."""
    a = np.asarray(array, dtype=np.float32)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise ValueError(f"expected heatmaps of shape (N, 1, H, W) or (N, H, W), got {a.shape}")
    return a


def load_predictions(path: str | os.PathLike[str]) -> SavedPredictions:
    """Read a ``heatmaps.pk`` / ``best.pk`` file (and its ``description.json``).

    Raises:
        ValueError: the file is not a readable pickle of VisionAD's 4-tuple (the message names the file).
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            payload = pickle.load(f)  # noqa: S301  (results written by VisionAD / our runner)
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated or foreign pickles raise many kinds of errors
        raise ValueError(f"{path}: unreadable heatmap pickle ({type(exc).__name__}: {exc})") from exc
    if not (isinstance(payload, tuple | list) and len(payload) == 4):
        raise ValueError(
            f"{path}: expected a pickle of (heatmap_set, image_score_set, targets_set, paths_set), "
            f"got {type(payload).__name__}"
        )
    heatmap_set, score_set, targets_set, paths_set = payload
    try:
        heatmaps = {
            "regular": {m: _maps(v) for m, v in heatmap_set.get("heatmap_set_regular", {}).items()},
            "novel": {m: _maps(v) for m, v in heatmap_set["heatmap_set_novel"].items()},
        }
        paths = {
            "regular": [str(p) for p in paths_set.get("paths_regular", [])],
            "novel": [str(p) for p in paths_set["paths_novel"]],
        }
    except (KeyError, AttributeError, TypeError) as exc:
        raise ValueError(f"{path}: malformed heatmap pickle ({type(exc).__name__}: {exc})") from exc
    scores: dict[str, dict[str, np.ndarray]] = {"regular": {}, "novel": {}}
    if isinstance(score_set, dict):
        for part, key in (("regular", "image_score_set_regular"), ("novel", "image_score_set_novel")):
            for m, v in (score_set.get(key) or {}).items():
                scores[part][m] = np.asarray(v, dtype=np.float64).reshape(-1)
    targets = None
    if isinstance(targets_set, dict) and targets_set.get("targets_novel") is not None:
        raw = _maps(targets_set["targets_novel"])
        if not np.isnan(raw).all():  # all NaN: an image-level-only dataset has no masks
            targets = (raw > 0.5).astype(np.float32)
    description: dict[str, Any] = {}
    desc_path = path.parent / "description.json"
    if desc_path.is_file():
        try:
            description = json.loads(desc_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning(
                "%s: unreadable description.json (%s); input images looked up elsewhere", desc_path, exc
            )
    return SavedPredictions(path, heatmaps, scores, targets, paths, description)


def prediction_file_for(epoch_dir: str | os.PathLike[str], prefer_best: bool = False) -> Path | None:
    """The saved-predictions file for a selected epoch folder.

    Order: with ``prefer_best``, the dataset folder's ``best.pk``, then the epoch's ``heatmaps.pk``; otherwise
    the epoch's ``heatmaps.pk``, the newest other epoch's ``heatmaps.pk``, then ``best.pk``. None if none exist.
    """
    epoch_dir = Path(epoch_dir)
    best = epoch_dir.parent / "best.pk"
    own = epoch_dir / "heatmaps.pk"
    if prefer_best and best.is_file():
        return best
    if own.is_file():
        return own
    others = sorted(
        (p for p in epoch_dir.parent.glob("*/heatmaps.pk") if p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name),
    )
    if others:
        return others[-1]
    return best if best.is_file() else None


def _folders(value: Any) -> list[Path]:
    if isinstance(value, str | os.PathLike):
        return [Path(value)]
    if isinstance(value, list | tuple):
        return [Path(v) for v in value if isinstance(v, str | os.PathLike)]
    return []


def find_input_image(
    image_path: str,
    description: dict[str, Any],
    dataset_key: str | None,
    use_registry: bool = True,
    data_root: str | os.PathLike[str] | None = None,
) -> Path | None:
    """Locate the input image file of a test path, or None.

    Tries: the path itself; its file name inside the test folders of ``description["dataset"]`` (for the
    flattened MVTec names ``<defect>_<file>`` of a list of defect folders, ``<defect folder>/<file>``); the same
    inside the folders of our dataset registry entry ``dataset_key`` (only when ``use_registry``).
    """
    direct = Path(image_path)
    if direct.is_file():
        return direct
    dataset_dicts = []
    if isinstance(description.get("dataset"), dict):
        dataset_dicts.append(description["dataset"])
    if use_registry and dataset_key:
        try:
            from visionad_multicore.visionad.datasets import load_dataset

            dataset_dicts.append(load_dataset(dataset_key, data_root=data_root))
        except Exception as exc:  # registry missing, key unknown, data root unset: input column omitted
            logger.info("dataset %r not resolvable through the registry (%s)", dataset_key, exc)
    name = direct.name
    for dataset in dataset_dicts:
        for key in ("folder_path_novel_test", "folder_path_regular_test"):
            for folder in _folders(dataset.get(key)):
                candidates = [folder / image_path, folder / name]
                if name.startswith(folder.name + "_"):  # flattened MVTec name "<defect>_<file>"
                    candidates.append(folder / name[len(folder.name) + 1 :])
                for candidate in candidates:
                    if candidate.is_file():
                        return candidate
    return None


def _match_index(paths: list[str], wanted: str) -> int | None:
    """Index of ``wanted`` in ``paths``: exact, then unique file name, then unique substring match."""
    if wanted in paths:
        return paths.index(wanted)
    by_name = [i for i, p in enumerate(paths) if Path(p).name == Path(wanted).name]
    if len(by_name) == 1:
        return by_name[0]
    by_sub = [i for i, p in enumerate(paths) if wanted in p]
    if len(by_sub) == 1:
        return by_sub[0]
    return None


def choose_images(reference: SavedPredictions, images: int | Sequence[str]) -> list[tuple[str, str]]:
    """Pick gallery images as ``(part, path)`` with part ``"novel"`` or ``"regular"``.

    Args:
        reference: predictions whose path lists define the images.
        images: a count (evenly spaced anomalous test images) or names / paths / unique substrings.

    Raises:
        ValueError: a name matches no test image (or several): the message lists a few available names.
    """
    novel = reference.paths["novel"]
    if isinstance(images, int):
        if images < 1:
            raise ValueError(f"--gallery-images must be >= 1, got {images}")
        n = min(images, len(novel))
        picks = np.unique(np.linspace(0, len(novel) - 1, n).round().astype(int))
        return [("novel", novel[i]) for i in picks]
    chosen = []
    for wanted in images:
        for part in ("novel", "regular"):
            idx = _match_index(reference.paths[part], wanted)
            if idx is not None:
                chosen.append((part, reference.paths[part][idx]))
                break
        else:
            sample = ", ".join(Path(p).name for p in novel[:8])
            raise ValueError(
                f"gallery image {wanted!r} not found (or ambiguous) in {reference.path}; anomalous test images "
                f"include: {sample}"
            )
    return chosen


def make_gallery(
    sources: Sequence[tuple[str, str | os.PathLike[str]]],
    out_path: str | os.PathLike[str],
    images: int | Sequence[str] = 4,
    dataset_key: str | None = None,
    methods: Sequence[str] | None = None,
    use_registry: bool = True,
    data_root: str | os.PathLike[str] | None = None,
    dpi: int = 110,
) -> Path:
    """Write a gallery PNG: one row per image; columns input (when found), ground truth, each heatmap.

    Args:
        sources: ``(algorithm label, prediction file)`` pairs, all for the same dataset; the first defines
            which images exist.
        out_path: PNG to write (atomically).
        images: number of anomalous images (evenly spaced) or a list of names / paths.
        dataset_key: dataset key, used to find input images through our registry.
        methods: optional ``fnmatch`` patterns on ``algorithm/method`` or ``method`` to keep.
        use_registry: look input images up in our dataset registry when other ways fail.
        data_root: ``data_root`` passed to the registry lookup.
        dpi: output resolution.

    Returns:
        The written path.
    """
    from matplotlib.figure import Figure

    if not sources:
        raise ValueError("no saved heatmaps (heatmaps.pk / best.pk) to draw a gallery from")
    loaded = [(label, load_predictions(p)) for label, p in sources]
    chosen = choose_images(loaded[0][1], images)

    columns: list[tuple[str, str, SavedPredictions]] = [
        (label, m, preds) for label, preds in loaded for m in preds.methods if matches(label, m, methods)
    ]
    if not columns:
        raise ValueError(f"no method matches {list(methods or [])}")
    scale: dict[tuple[str, str], tuple[float, float]] = {}
    for label, m, preds in columns:
        stack = [preds.heatmaps["novel"][m].ravel()]
        if m in preds.heatmaps["regular"]:
            stack.append(preds.heatmaps["regular"][m].ravel())
        values = np.concatenate(stack)
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        scale[(label, m)] = (lo, hi if hi > lo else lo + 1.0)

    reference = loaded[0][1]
    inputs = [
        find_input_image(p, reference.description, dataset_key, use_registry, data_root) for _, p in chosen
    ]
    show_input = any(x is not None for x in inputs)
    n_cols = len(columns) + 1 + int(show_input)
    cell = 1.9
    fig = Figure(figsize=(cell * n_cols, cell * len(chosen) + 0.9))
    axes = fig.subplots(len(chosen), n_cols, squeeze=False)
    for row, (part, img_path) in enumerate(chosen):
        idx = reference.paths[part].index(img_path)
        h, w = next(iter(reference.heatmaps[part].values())).shape[1:]
        target = (
            reference.targets_novel[idx]
            if part == "novel" and reference.targets_novel is not None
            else np.zeros((h, w), np.float32)
        )
        col = 0
        if show_input:
            ax = axes[row, col]
            input_path = inputs[row]
            if input_path is not None:
                with Image.open(input_path) as im:
                    ax.imshow(np.asarray(im.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)))
            else:
                ax.text(0.5, 0.5, "input\nnot found", ha="center", va="center", fontsize=8)
            col += 1
        axes[row, col].imshow(target, cmap="gray", vmin=0, vmax=1)
        col += 1
        for label, m, preds in columns:
            ax = axes[row, col]
            j = _match_index(preds.paths[part], img_path)
            if j is None or m not in preds.heatmaps[part]:
                ax.text(0.5, 0.5, "image not\nin this run", ha="center", va="center", fontsize=8)
            else:
                lo, hi = scale[(label, m)]
                ax.imshow(preds.heatmaps[part][m][j], cmap="inferno", vmin=lo, vmax=hi)
                if target.any():
                    ax.contour(target, levels=[0.5], colors="cyan", linewidths=0.8)
                score = preds.scores[part].get(m)
                if score is not None and j < len(score) and not math.isnan(score[j]):
                    ax.text(
                        0.02,
                        0.98,
                        f"{score[j]:.3g}",
                        transform=ax.transAxes,
                        ha="left",
                        va="top",
                        fontsize=7,
                        color="white",
                        bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0},
                    )
            col += 1
        shown = Path(img_path)
        name = f"{shown.parent.name}/{shown.name}" if shown.parent.name else shown.name
        axes[row, 0].set_ylabel(
            name[-32:] + ("" if part == "novel" else "\n(regular test image)"), fontsize=7
        )
    titles = (
        (["input"] if show_input else []) + ["ground truth"] + [f"{label}\n{m}" for label, m, _ in columns]
    )
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"{dataset_key or ''} heatmaps\ncolour: min..max of each method's test maps; cyan: ground truth;\n"
        "corner: image score",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return atomic_savefig(fig, out_path, dpi=dpi)
