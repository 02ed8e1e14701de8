"""Semantic segmenter networks on VoVNet backbones: Panoptic FPN's semantic head, DeepLabV3 and DeepLabV3+,
built from a :class:`SegmenterConfig` (never from a file: weights are composed on by :mod:`vovnet.factory`)."""

from .heads import DeepLabV3Head, DeepLabV3PlusHead, SemanticFPNHead
from .model import ARCHS, Segmenter, SegmenterConfig, build_segmenter

__all__ = ["DeepLabV3Head", "DeepLabV3PlusHead", "SemanticFPNHead", "ARCHS", "Segmenter", "SegmenterConfig", "build_segmenter"]
