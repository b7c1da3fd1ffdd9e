"""Constants shared by the algorithm core and the VisionAD harness.

This module imports nothing from the package, so every layer (``patchcore``, ``algorithms``, ``visionad``,
``reporting``) may import it without breaking the one-way import rule (see ``docs/architecture.md``).
"""

from __future__ import annotations

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel mean of ImageNet in [0, 1] RGB: VisionAD's default dataset ``mean`` and WRN50's input mean."""

IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of ImageNet in [0, 1] RGB: VisionAD's default dataset ``std``."""

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD"]
