"""Stratified Synthetic Anomalies (SSA): the paper's mask schema, the noise, and a reproducible synthetic set."""

from visionad_multicore.synthetic.dataset import SyntheticAnomalySet, split_bank_fusion
from visionad_multicore.synthetic.masks import MaskSet, SSAConfig, generate_masks
from visionad_multicore.synthetic.noise import add_noise

__all__ = ["MaskSet", "SSAConfig", "SyntheticAnomalySet", "add_noise", "generate_masks", "split_bank_fusion"]
