"""Detection and instance segmentation on VoVNet-FPN backbones (torchvision detectors, CenterMask)."""

from .backbone import FPNBackbone, ShapeSpec, fpn_backbone
from .builders import ARCHS, DetectorConfig, build_detector, create_detector, default_lite
from .centermask import AreaRuleRoIAlign, CenterMask, assign_levels_by_area
from .sag_mask import SAG_Mask, SAGMaskHead, SpatialAttention

__all__ = [
    "FPNBackbone", "ShapeSpec", "fpn_backbone",
    "ARCHS", "DetectorConfig", "build_detector", "create_detector", "default_lite",
    "AreaRuleRoIAlign", "CenterMask", "assign_levels_by_area",
    "SAG_Mask", "SAGMaskHead", "SpatialAttention",
]
