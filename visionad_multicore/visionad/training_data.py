"""What an algorithm may rely on from a VisionAD training loader, checked in one place.

Works on our loaders and on the ones a VisionAD checkout builds (``data/load_image_data.ImageDataset``), which
share the attributes used here: ``pre_normalisation_transform`` (the synthetic-anomaly hook) and
``pp_transforms`` (the ``Normalize`` VisionAD's ``run.py`` builds from the dataset's mean / std).
"""

from __future__ import annotations

from typing import Any

__all__ = ["require_clean_training_set"]


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
