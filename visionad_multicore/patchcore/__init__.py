"""Patchcore+: the nearest-neighbour predictor MultiCore is built from (SPEC section 3)."""

from visionad_multicore.patchcore.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FeatureExtractor,
    build_backbone,
)
from visionad_multicore.patchcore.coreset import greedy_coreset_indices
from visionad_multicore.patchcore.distances import DISTANCES, NearestNeighbourIndex
from visionad_multicore.patchcore.patches import patch_features
from visionad_multicore.patchcore.predictor import PatchCorePlus, Prediction, gaussian_smooth

__all__ = [
    "DISTANCES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FeatureExtractor",
    "NearestNeighbourIndex",
    "PatchCorePlus",
    "Prediction",
    "build_backbone",
    "gaussian_smooth",
    "greedy_coreset_indices",
    "patch_features",
]
