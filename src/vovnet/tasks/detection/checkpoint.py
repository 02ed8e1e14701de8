"""Detector checkpoints: safetensors weights plus JSON metadata that rebuilds the exact detector.

The metadata (under the same key as classification checkpoints) records ``task``, ``arch``, ``model``,
``num_classes``, ``class_names``, ``image_size`` and the full :class:`DetectorConfig`, so
``load_detector(path)`` needs nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ...errors import CheckpointError
from ...weights.checkpoint import load_exact, read_checkpoint, write_checkpoint
from .builders import DetectorConfig, build_detector

FORMAT = "vovnet-detector/1"
TASK = "detect"


def detector_metadata(model: nn.Module, **extra: Any) -> dict:
    """What a detector checkpoint records besides its weights."""
    cfg: DetectorConfig = model.detector_config
    return {
        "format": FORMAT,
        "task": TASK,
        "arch": cfg.arch,
        "model": cfg.model,
        "num_classes": cfg.num_classes,
        "class_names": list(cfg.class_names),
        "image_size": cfg.min_size,
        "detector": cfg.to_dict(),
        **extra,
    }


def save_detector(model: nn.Module, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``model`` (built by :func:`build_detector`) to ``path`` atomically; ``extra`` goes into the metadata."""
    return write_checkpoint(path, model, detector_metadata(model, **extra))


def load_detector(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """``(detector in eval mode, metadata)`` from a file written by :func:`save_detector`."""
    state_dict, meta = read_checkpoint(path)
    if meta is None or meta.get("task") != TASK:
        found = "no vovnet metadata" if meta is None else f"a {meta.get('task', 'classification')} checkpoint"
        raise CheckpointError(f"{path}: not a detector checkpoint ({found})")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unsupported detector format {meta.get('format')!r} (this version reads {FORMAT})")
    model = build_detector(DetectorConfig.from_dict(meta["detector"]))
    load_detector_weights(model, state_dict, source=str(path))
    return model.eval(), meta


def load_detector_weights(model: nn.Module, state_dict: dict, *, source: str) -> None:
    """Load ``state_dict`` exactly (batch-norm counters aside); CheckpointError names what does not fit."""
    load_exact(model, state_dict, source=source, what="this detector")
