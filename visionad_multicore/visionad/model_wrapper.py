"""``ModelWrapper``: the base class of every VisionAD algorithm, with VisionAD's semantics.

The runner builds an algorithm as ``AlgoClass(**model_params)`` and then drives it through the hooks below.
The base class owns everything that must be identical across algorithms: storing the loaders, hiding the
targets and paths from the algorithm at test time, collecting them, and checking the outputs.

Output layout returned by :meth:`ModelWrapper.test` (the same nested dicts VisionAD's metrics consume)::

    heatmap_set     = {"heatmap_set_regular": {method: (N_reg, 1, H, W)}, "heatmap_set_novel": {method: (N_nov, 1, H, W)}}
    image_score_set = {"image_score_set_regular": {method: (N_reg,)}, "image_score_set_novel": {method: (N_nov,)}}
    targets_set     = {"targets_novel": (N_nov, 1, 256, 256) float tensor}
    paths_set       = {"paths_regular": [str] * N_reg, "paths_novel": [str] * N_nov}
"""

from __future__ import annotations

import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from visionad_multicore.atomic import atomic_write_text

logger = logging.getLogger(__name__)

TARGET_SIZE = 256  # VisionAD resizes targets to 256 x 256 before the metrics
PARAMS_FILE = "model_params.json"

# key of the per-split dicts in test()'s outputs: (paths_required key, paths_set key)
_SPLITS = (("regular_test", "paths_regular"), ("novel_test", "paths_novel"))


class OutputCheckError(AssertionError):
    """An algorithm's test outputs do not cover the test set (VisionAD raises ``AssertionError`` here)."""


class ModelWrapper(ABC):
    """Base class of VisionAD algorithms.

    Subclasses implement the five hooks (``train_one_epoch``, ``pre_eval_processing``,
    ``eval_outputs_dataloader``, ``save_model``, ``load_model``) and set ``self.params`` (the JSON-serialisable
    constructor arguments) so that ``save_params`` / ``load_params`` can recreate them.

    Attributes set by :meth:`enter_dataloaders`: ``dataloader_train``, ``dataloader_regular_test``,
    ``dataloader_novel_test``, ``len_dataloader_*`` (number of batches) and ``paths_required``
    (``{"regular_test": [path, ...], "novel_test": [path, ...]}``, the paths every output must cover).
    """

    params: dict[str, Any]

    def __init__(self) -> None:
        super().__init__()

    # ------------------------------------------------------------------ loaders
    def enter_dataloaders(
        self,
        dataloader_train: DataLoader,
        dataloader_regular_test: DataLoader,
        dataloader_novel_test: DataLoader,
    ) -> None:
        """Store the three loaders, their lengths and the test paths the outputs must cover.

        Args:
            dataloader_train: yields ``(image (B, 3, H, W), path [B], callback_info)``.
            dataloader_regular_test: yields ``(image (B, 3, H, W), path [B], callback_info)``.
            dataloader_novel_test: yields ``(image (B, 3, H, W), mask (B, 1, H, W), path [B], callback_info)``.
        """
        self.dataloader_train = dataloader_train
        self.dataloader_regular_test = dataloader_regular_test
        self.dataloader_novel_test = dataloader_novel_test
        self.len_dataloader_train = len(dataloader_train)
        self.len_dataloader_regular_test = len(dataloader_regular_test)
        self.len_dataloader_novel_test = len(dataloader_novel_test)
        # Like VisionAD, the paths are collected by iterating the loaders once.
        self.paths_required = {
            "regular_test": [p for _, paths, _ in dataloader_regular_test for p in paths],
            "novel_test": [p for _, _, paths, _ in dataloader_novel_test for p in paths],
        }

    def create_no_target_dataloader(
        self, dataloader: Iterable, data_holder: dict[str, Any], regular: bool
    ) -> Iterator[tuple[torch.Tensor, Any]]:
        """Wrap a test loader so the algorithm sees ``(image_batch, callback_info_batch)`` only.

        Targets (anomalous loader only) and paths are appended to ``data_holder["targets"]`` /
        ``data_holder["paths"]`` as the algorithm consumes the batches, in the order it sees them.

        Args:
            dataloader: a regular test loader (3-tuples) or the anomalous test loader (4-tuples).
            data_holder: dict that receives ``"paths"`` (list of str) and, if not ``regular``, ``"targets"``
                (list of (B, 1, H, W) tensors).
            regular: True for the regular test loader.

        Yields:
            ``(image_batch (B, 3, H, W), callback_info_batch)``.
        """
        data_holder["paths"] = []
        if not regular:
            data_holder["targets"] = []
        for items in dataloader:
            if regular:
                image_batch, paths_batch, callback_info_batch = items
            else:
                image_batch, targets_batch, paths_batch, callback_info_batch = items
                data_holder["targets"].append(targets_batch.detach().cpu())
            data_holder["paths"] += list(paths_batch)
            yield image_batch, callback_info_batch

    # ------------------------------------------------------------------ evaluation
    def test(self) -> tuple[dict, dict, dict, dict]:
        """Run ``eval_outputs_dataloader`` on both test sets and return checked, VisionAD-shaped outputs.

        Returns:
            ``(heatmap_set, image_score_set, targets_set, paths_set)`` as described in the module docstring.
            3-D heatmaps ``(N, H, W)`` get a channel dimension ``(N, 1, H, W)``; targets not at 256 x 256 are
            resized bilinearly with ``align_corners=True`` (as VisionAD does). Methods whose outputs do not
            cover the test set are dropped with a logged message (see :meth:`run_error_test`).

        Raises:
            OutputCheckError: the paths consumed differ from the test set (the generator was not fully
                consumed, or consumed twice).
        """
        self.data_holder_regular_test: dict[str, Any] = {}
        heatmaps_regular, scores_regular = self.eval_outputs_dataloader(
            self.create_no_target_dataloader(
                self.dataloader_regular_test, self.data_holder_regular_test, True
            ),
            self.len_dataloader_regular_test,
        )
        self.data_holder_novel_test: dict[str, Any] = {}
        heatmaps_novel, scores_novel = self.eval_outputs_dataloader(
            self.create_no_target_dataloader(self.dataloader_novel_test, self.data_holder_novel_test, False),
            self.len_dataloader_novel_test,
        )
        targets_list = self.data_holder_novel_test.get("targets", [])
        if not targets_list:
            raise OutputCheckError(
                "eval_outputs_dataloader did not consume the anomalous test loader: no targets were collected"
            )
        targets_novel = torch.cat(targets_list)  # (N_nov, 1, h, w)

        heatmap_set = {
            "heatmap_set_regular": dict(heatmaps_regular),
            "heatmap_set_novel": dict(heatmaps_novel),
        }
        image_score_set = {
            "image_score_set_regular": dict(scores_regular),
            "image_score_set_novel": dict(scores_novel),
        }
        for group in heatmap_set.values():
            for method, result in group.items():
                if len(result.shape) == 3:
                    group[method] = result[:, None, :, :]  # (N, H, W) -> (N, 1, H, W)

        if tuple(targets_novel.shape[-2:]) != (TARGET_SIZE, TARGET_SIZE):
            targets_novel = torch.nn.functional.interpolate(
                targets_novel.float(), size=TARGET_SIZE, mode="bilinear", align_corners=True
            )
        targets_set = {"targets_novel": targets_novel}
        paths_set = {
            "paths_regular": self.data_holder_regular_test.get("paths", []),
            "paths_novel": self.data_holder_novel_test["paths"],
        }
        return self.run_error_test(heatmap_set, image_score_set, targets_set, paths_set)

    def run_error_test(
        self, heatmap_set: dict, image_score_set: dict, targets_set: dict, paths_set: dict
    ) -> tuple[dict, dict, dict, dict]:
        """Check that the outputs cover the test set; drop methods that do not.

        Guards against algorithms that (for example) average over a batch instead of scoring each image.

        Args:
            heatmap_set, image_score_set, targets_set, paths_set: as returned by :meth:`test` before checking.

        Returns:
            The same four dicts, with every method whose heatmap (or score) count differs from the number of
            images of either test set removed from the heatmaps (or scores). Heatmaps whose spatial size differs
            from the targets' are removed too (VisionAD would fail in the pixel metrics instead). Each removal
            is logged as a warning naming the method.

        Raises:
            OutputCheckError: the consumed paths differ from ``paths_required`` (count or set), or the target
                count differs from the anomalous test set's.
        """
        for required_key, set_key in _SPLITS:
            found, desired = paths_set[set_key], self.paths_required[required_key]
            if len(found) != len(desired):
                raise OutputCheckError(
                    f"{required_key}: the algorithm consumed {len(found)} images but the test set has {len(desired)}; "
                    "eval_outputs_dataloader must iterate its generator exactly once"
                )
            if set(found) != set(desired):
                raise OutputCheckError(
                    f"{required_key}: the paths consumed differ from the test set's paths "
                    f"(e.g. {sorted(set(found) ^ set(desired))[:3]})"
                )
        n_required = {
            "regular": len(self.paths_required["regular_test"]),
            "novel": len(self.paths_required["novel_test"]),
        }
        targets = targets_set["targets_novel"]
        if targets.shape[0] != n_required["novel"]:
            raise OutputCheckError(
                f"{targets.shape[0]} targets were collected for {n_required['novel']} anomalous test images"
            )

        heatmap_out = _keep_complete(heatmap_set, "heatmap_set", n_required, "heatmaps", targets.shape[-2:])
        score_out = _keep_complete(image_score_set, "image_score_set", n_required, "image scores", None)
        return heatmap_out, score_out, targets_set, paths_set

    # ------------------------------------------------------------------ parameters
    def save_params(self, location: str | os.PathLike[str]) -> None:
        """Write ``self.params`` to ``<location>/model_params.json`` (atomically), creating ``location``."""
        if not hasattr(self, "params"):
            raise AttributeError(
                f"{type(self).__name__} has no 'params' attribute: set self.params (the constructor arguments) "
                "before save_params"
            )
        os.makedirs(location, exist_ok=True)
        path = Path(location) / PARAMS_FILE
        try:
            text = json.dumps(self.params)
        except TypeError as err:
            raise TypeError(
                f"{type(self).__name__}.params is not JSON-serialisable ({err}); cannot write {path}"
            ) from err
        atomic_write_text(path, text)

    def load_params(self, location: str | os.PathLike[str]) -> dict[str, Any]:
        """Read and return the dict in ``<location>/model_params.json``."""
        path = Path(location) / PARAMS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {PARAMS_FILE} in {location}: was the model saved with save_params?")
        return json.loads(path.read_text())

    # ------------------------------------------------------------------ hooks
    @abstractmethod
    def pre_eval_processing(self) -> None:
        """Work that needs the training data but not every epoch (e.g. a memory bank); called before any
        save or evaluation. Implement with ``pass`` when not needed."""

    @abstractmethod
    def eval_outputs_dataloader(self, dataloader: Iterator, len_dataloader: int) -> tuple[dict, dict]:
        """Score every image the generator yields.

        Args:
            dataloader: generator of ``(image_batch (B, 3, H, W), callback_info_batch)``; iterate it exactly once.
            len_dataloader: number of batches (the generator has no ``len``).

        Returns:
            ``(heatmaps, scores)``: dicts keyed by method name; ``heatmaps[m]`` is ``(N, H, W)`` or
            ``(N, 1, H, W)`` with H = W = 256, ``scores[m]`` is ``(N,)``, in the order the images were yielded.
        """

    @abstractmethod
    def train_one_epoch(self) -> None:
        """Train for one epoch on ``self.dataloader_train``."""

    @abstractmethod
    def save_model(self, location: str | os.PathLike[str]) -> None:
        """Save everything needed to evaluate later into the folder ``location`` (call ``save_params``)."""

    @abstractmethod
    def load_model(self, location: str | os.PathLike[str], **kwargs: Any) -> None:
        """Restore a model saved by ``save_model``; must work on a fresh instance with no training loader."""


def _keep_complete(
    output_set: dict, prefix: str, n_required: dict[str, int], what: str, spatial: torch.Size | None
) -> dict:
    """Keep the methods present in both splits with one output per image (and, for heatmaps, the targets'
    spatial size); log a warning naming each dropped method."""
    regular, novel = output_set[f"{prefix}_regular"], output_set[f"{prefix}_novel"]
    kept: dict[str, dict] = {f"{prefix}_regular": {}, f"{prefix}_novel": {}}
    for method in list(regular) + [m for m in novel if m not in regular]:
        problems, hints = [], set()
        for split, outputs in (("regular", regular), ("novel", novel)):
            if method not in outputs:
                problems.append(f"no {what} for the {split} test set")
                hints.add("a method must be returned for both test sets")
                continue
            count = outputs[method].shape[0] if len(outputs[method].shape) else 0
            if count != n_required[split]:
                problems.append(f"{count} {what} for {n_required[split]} {split} test images")
                hints.add(
                    "one output per test image is required (a common cause is averaging over a batch "
                    "instead of scoring each image)"
                )
            elif spatial is not None and tuple(outputs[method].shape[-2:]) != tuple(spatial):
                problems.append(
                    f"{split} heatmaps of size {tuple(outputs[method].shape[-2:])}, expected {tuple(spatial)}"
                )
                hints.add(f"heatmaps must be {TARGET_SIZE} x {TARGET_SIZE}, the size of the targets")
        if problems:
            logger.warning(
                "Removing method %r from the %s: %s. Keeping it would give invalid results: %s.",
                method,
                what,
                "; ".join(problems),
                "; ".join(sorted(hints)),
            )
            continue
        kept[f"{prefix}_regular"][method] = regular[method]
        kept[f"{prefix}_novel"][method] = novel[method]
    return kept
