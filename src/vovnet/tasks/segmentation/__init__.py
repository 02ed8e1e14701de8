"""Training and evaluating semantic segmenters: data wiring, losses, metrics, prediction output.
The networks are :mod:`vovnet.models.segmentation`."""

from .losses import segmentation_losses, soft_dice_loss
from .metrics import SegmentationMetrics
from .predict import overlay, palette, predict_files, write_prediction
from .task import SegmentationTask

__all__ = [
    "segmentation_losses", "soft_dice_loss", "SegmentationMetrics",
    "overlay", "palette", "predict_files", "write_prediction", "SegmentationTask",
]
