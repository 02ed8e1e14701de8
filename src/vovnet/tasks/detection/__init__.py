"""Detection and instance segmentation on VoVNet-FPN backbones: torchvision detectors and CenterMask."""

from .builders import ARCHS, DetectorConfig, build_detector, create_detector, default_lite
from .centermask import AreaRuleRoIAlign, CenterMask, assign_levels_by_area
from .checkpoint import load_detector, save_detector
from .draw import draw_detections, prediction_record
from .metrics import DetectionMetrics
from .sag_mask import SAG_Mask, SAGMaskHead, SpatialAttention
from .task import DetectionTask

__all__ = [
    "ARCHS",
    "DetectorConfig",
    "build_detector",
    "create_detector",
    "default_lite",
    "AreaRuleRoIAlign",
    "CenterMask",
    "assign_levels_by_area",
    "load_detector",
    "save_detector",
    "draw_detections",
    "prediction_record",
    "DetectionMetrics",
    "DetectionTask",
    "SAG_Mask",
    "SAGMaskHead",
    "SpatialAttention",
]
