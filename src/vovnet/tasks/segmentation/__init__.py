"""Semantic segmentation on VoVNet backbones: Panoptic-FPN semantic head, DeepLabV3 and DeepLabV3+, shapes and mask folders."""

from .checkpoint import load_segmenter, save_segmenter
from .heads import DeepLabV3Head, DeepLabV3PlusHead, SemanticFPNHead
from .losses import segmentation_losses, soft_dice_loss
from .metrics import SegmentationMetrics
from .model import ARCHS, Segmenter, SegmenterConfig, build_segmenter, create_segmenter
from .predict import overlay, palette, predict_files, write_prediction
from .task import SegmentationTask

__all__ = [
    "load_segmenter", "save_segmenter",
    "DeepLabV3Head", "DeepLabV3PlusHead", "SemanticFPNHead",
    "segmentation_losses", "soft_dice_loss",
    "SegmentationMetrics",
    "ARCHS", "Segmenter", "SegmenterConfig", "build_segmenter", "create_segmenter",
    "overlay", "palette", "predict_files", "write_prediction",
    "SegmentationTask",
]
