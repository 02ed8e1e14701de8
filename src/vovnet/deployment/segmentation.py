"""Whole semantic segmenters to ONNX: :class:`SegmenterGraph` (the eval forward, traceable at any image size)
and :func:`export_segmenter`, written only after onnxruntime agrees with the eval model at two sizes."""

from __future__ import annotations

import os

from torch import nn

from ..errors import UsageError


def segmenter_onnx(model: nn.Module, example) -> bytes:
    """Not yet (see :func:`export_segmenter`)."""
    raise UsageError("a whole segmenter cannot be exported to ONNX yet (--runtime onnxruntime measures detectors)")


def export_segmenter(model: nn.Module, path: str | os.PathLike, *, metadata: dict | None = None) -> dict:
    """Not yet: the segmenter's input resizing and the guided filter resize with antialiasing, which the
    TorchScript-based ONNX exporter has no form for."""
    raise UsageError("exporting a whole segmenter is not supported yet; --features exports its backbone")
