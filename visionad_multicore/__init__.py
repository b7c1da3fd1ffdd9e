"""visionad_multicore: the MultiCore anomaly detector (Taylor et al., BMVC 2024) for VisionAD."""

__version__ = "0.1.0"
