"""What an algorithm may rely on from a VisionAD training loader, checked in one place.

Works on our loaders and on the ones a VisionAD checkout builds (``data/load_image_data.ImageDataset``), which
share the attributes used here: ``pre_normalisation_transform`` (the synthetic-anomaly hook) and
``pp_transforms`` (the ``Normalize`` VisionAD's ``run.py`` builds from the dataset's mean / std).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torchvision import transforms

__all__ = ["NormalisationUnknownError", "dataset_normalisation", "require_clean_training_set"]

logger = logging.getLogger(__name__)

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]


class NormalisationUnknownError(ValueError):
    """The normalisation a training dataset applies cannot be read from it."""


def require_clean_training_set(dataset: Any, algorithm: str) -> None:
    """Refuse a training dataset with a synthetic-anomaly hook attached.

    Memory banks and normalisation statistics must come from clean training images; VisionAD's
    ``pre_normalisation_transform`` hook (which adds synthetic defects) is left on by some algorithms.

    Args:
        dataset: the training loader's ``dataset``.
        algorithm: name used in the message (e.g. ``"patchcore_plus"``).

    Raises:
        RuntimeError: ``dataset.pre_normalisation_transform`` is set; the message names the hook and the fix.
    """
    hook = getattr(dataset, "pre_normalisation_transform", None)
    if hook is not None:
        raise RuntimeError(
            f"{algorithm}: the training dataset has a pre_normalisation_transform hook attached ({hook!r}); "
            "memory banks must be built from clean training images. Remove the hook first "
            "(dataset.pre_normalisation_transform = None)."
        )


def _three(values: Sequence[float] | Any, what: str) -> tuple[float, float, float]:
    """``values`` as three floats (a single value is repeated, as torch's Normalize broadcasts it)."""
    flat = [float(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]
    if len(flat) == 1:
        flat = flat * 3
    if len(flat) != 3:
        raise NormalisationUnknownError(f"{what}: expected 1 or 3 values, got {flat}")
    return flat[0], flat[1], flat[2]


def _normalize_steps(pipeline: Any) -> list[Any] | None:
    """The transforms of ``pipeline`` flattened through nested ``Compose``; None if one is not a Normalize."""
    if isinstance(pipeline, transforms.Normalize):
        return [pipeline]
    if isinstance(pipeline, transforms.Compose):
        steps: list[Any] = []
        for step in pipeline.transforms:
            inner = _normalize_steps(step)
            if inner is None:
                return None
            steps += inner
        return steps
    return None


def dataset_normalisation(dataset: Any) -> Stats:
    """The per-channel ``(mean, std)`` a training dataset normalises its images with, read from the dataset.

    VisionAD's datasets carry their normalisation as ``pp_transforms = Compose([Normalize(mean, std)])``
    (built by its ``run.py`` from the dataset's ``mean`` / ``std``); ours carry the same, plus ``mean`` / ``std``
    attributes. The transform actually applied wins:

    1. ``pp_transforms`` made only of ``Normalize`` steps (possibly nested in ``Compose``): their composition
       (``Compose([])``: no normalisation, i.e. mean 0 and std 1);
    2. otherwise ``dataset.mean`` / ``dataset.std`` when ``pp_transforms`` is absent or None;
    3. otherwise an error: never a silent default.

    Args:
        dataset: the training loader's ``dataset``.

    Returns:
        ``((m_r, m_g, m_b), (s_r, s_g, s_b))`` in [0, 1] pixel units.

    Raises:
        NormalisationUnknownError: ``pp_transforms`` holds something other than ``Normalize`` steps, or the
            dataset has neither ``pp_transforms`` nor ``mean`` / ``std``; the message says what was found.
    """
    pipeline = getattr(dataset, "pp_transforms", None)
    attributes = getattr(dataset, "mean", None), getattr(dataset, "std", None)
    if pipeline is not None:
        steps = _normalize_steps(pipeline)
        if steps is None:
            raise NormalisationUnknownError(
                f"cannot tell the training images' normalisation: the dataset's pp_transforms is {pipeline!r}, "
                "expected Normalize(mean, std) steps only (what VisionAD's run.py builds from the dataset's "
                "mean / std)"
            )
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
        for step in steps:  # x -> (x - m) / s, applied in order: compose into one affine map
            m, sd = _three(step.mean, "Normalize mean"), _three(step.std, "Normalize std")
            mean = [mean[c] + m[c] * std[c] for c in range(3)]
            std = [std[c] * sd[c] for c in range(3)]
        stats = (_three(mean, "mean"), _three(std, "std"))
        if None not in attributes:
            declared = (_three(attributes[0], "dataset.mean"), _three(attributes[1], "dataset.std"))
            if any(abs(a - b) > 1e-6 for a, b in zip(declared[0] + declared[1], stats[0] + stats[1])):
                logger.warning(
                    "the dataset declares mean %s / std %s but its pp_transforms normalises with mean %s / "
                    "std %s: using what is applied",
                    declared[0],
                    declared[1],
                    stats[0],
                    stats[1],
                )
        return stats
    if None not in attributes:
        return _three(attributes[0], "dataset.mean"), _three(attributes[1], "dataset.std")
    raise NormalisationUnknownError(
        f"cannot tell the training images' normalisation: {type(dataset).__name__} has no pp_transforms "
        "and no mean / std attributes"
    )
