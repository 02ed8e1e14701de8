"""Detector networks on VoVNet-FPN backbones: torchvision's detectors and CenterMask, built from a
:class:`DetectorConfig` (never from a file: weights are composed on by :mod:`vovnet.factory`)."""

from .builders import ARCHS, HEAD_SIZES, DetectorConfig, build_detector, default_lite
from .centermask import DIALECTS, CenterMask
from .maskiou import MaskIoUHead
from .poolers import AreaRuleRoIAlign, LevelRoIAlign, assign_levels_by_area
from .sag_mask import SAG_Mask, SAGMaskHead, SpatialAttention
from .transform import DetectorTransform

__all__ = [
    "ARCHS", "HEAD_SIZES", "DetectorConfig", "build_detector", "default_lite",
    "DIALECTS", "AreaRuleRoIAlign", "CenterMask", "LevelRoIAlign", "assign_levels_by_area",
    "MaskIoUHead", "SAG_Mask", "SAGMaskHead", "SpatialAttention", "DetectorTransform",
]
