"""Heatmap Fusion Module (HFM): a UNet that fuses normalised member heatmaps, its loss and its training."""

from visionad_multicore.fusion.losses import FusionLoss, cldice_loss, soft_skeleton, ssim_loss
from visionad_multicore.fusion.train import HFMTrainConfig, HFMTrainer
from visionad_multicore.fusion.unet import UNet

__all__ = ["FusionLoss", "HFMTrainConfig", "HFMTrainer", "UNet", "cldice_loss", "soft_skeleton", "ssim_loss"]
