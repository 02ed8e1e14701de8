"""Segmenter checkpoints: safetensors weights plus JSON metadata (the :class:`SegmenterConfig`), written atomically.

The file is read by :func:`vovnet.weights.checkpoint.read_checkpoint` like every checkpoint of ours;
its ``format`` tells segmenters from classifiers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..models.segmentation.model import Segmenter, SegmenterConfig, build_segmenter
from .checkpoint import load_exact, read_checkpoint, write_checkpoint

FORMAT = "vovnet-segmenter/1"


def save_segmenter(model: Segmenter, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``model``'s weights and config to ``path`` atomically; ``extra`` (JSON-serialisable) joins the metadata."""
    meta = {"format": FORMAT, "task": "segment", "segmenter": model.config.to_dict(), "class_names": list(model.class_names), **extra}
    return write_checkpoint(path, model, meta)


def read_segmenter_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(state_dict, metadata)`` of a segmenter checkpoint; CheckpointError naming the file for anything else."""
    state_dict, meta = read_checkpoint(path)
    if meta is None or meta.get("format") != FORMAT:
        found = "no vovnet metadata" if meta is None else f"format {meta.get('format')!r}"
        raise CheckpointError(f"{path}: not a segmentation checkpoint ({found}; expected {FORMAT})")
    return state_dict, meta


def segmenter_from_checkpoint(state_dict: dict, meta: dict, *, source: str, **overrides: Any) -> Segmenter:
    """The segmenter (eval mode) that a segmenter checkpoint's ``(state_dict, metadata)`` describes, with its weights.

    ``overrides``: :class:`SegmenterConfig` fields that change inference only (``refine_radius``, ``refine_eps``,
    ``input_size``), applied before the model is built. CheckpointError when the weights do not fit.
    """
    model = build_segmenter(SegmenterConfig.from_dict({**meta["segmenter"], **overrides}))
    load_exact(model, state_dict, source=source, what=f"its {model.config.arch} segmenter")
    return model.eval()
