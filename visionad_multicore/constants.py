"""Constants shared by the algorithm core, the VisionAD harness and the reporting tools.

This module imports nothing from the package, so every layer (``patchcore``, ``algorithms``, ``visionad``,
``reporting``) may import it without breaking the one-way import rule (see ``docs/architecture.md``).
"""

from __future__ import annotations

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel mean of ImageNet in [0, 1] RGB: VisionAD's default dataset ``mean`` and WRN50's input mean."""

IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of ImageNet in [0, 1] RGB: VisionAD's default dataset ``std``."""

RUN_CONFIG_FILE = "run_config.json"
"""The resolved config and provenance our runner writes into each run folder (read by reporting)."""

MARKER_FILE = "complete.json"
"""Completion marker our runner writes last into each finished epoch and (model, dataset) folder."""

ERROR_FILE = "error.txt"
"""The traceback of a (model, dataset) pair that failed, in its folder."""

__all__ = ["ERROR_FILE", "IMAGENET_MEAN", "IMAGENET_STD", "MARKER_FILE", "RUN_CONFIG_FILE"]
