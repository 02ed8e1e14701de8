"""Segmenter checkpoints: safetensors weights plus JSON metadata (the :class:`SegmenterConfig`), written atomically.

The file is read by :func:`vovnet.weights.checkpoint.read_checkpoint` like every checkpoint of ours;
its ``format`` tells segmenters from classifiers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...errors import CheckpointError
from ...weights.checkpoint import load_exact, read_checkpoint, write_checkpoint
from .model import Segmenter, SegmenterConfig, build_segmenter

FORMAT = "vovnet-segmenter/1"


def save_segmenter(model: Segmenter, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``model``'s weights and config to ``path`` atomically; ``extra`` (JSON-serialisable) joins the metadata."""
    meta = {"format": FORMAT, "task": "segment", "segmenter": model.config.to_dict(), "class_names": list(model.class_names), **extra}
    return write_checkpoint(path, model, meta)


def load_segmenter(path: str | os.PathLike, **overrides: Any) -> tuple[Segmenter, dict]:
    """``(segmenter in eval mode, metadata)`` from a file written by :func:`save_segmenter`.

    ``overrides``: :class:`SegmenterConfig` fields that change inference only (``refine_radius``,
    ``refine_eps``), applied before the model is built.

    Raises CheckpointError naming the file when it is unreadable, not a segmenter, or its weights do not fit.
    """
    state_dict, meta = read_checkpoint(path)
    if meta is None or meta.get("format") != FORMAT:
        found = "no vovnet metadata" if meta is None else f"format {meta.get('format')!r}"
        raise CheckpointError(f"{path}: not a segmentation checkpoint ({found}; expected {FORMAT})")
    model = build_segmenter(SegmenterConfig.from_dict({**meta["segmenter"], **overrides}))
    load_exact(model, state_dict, source=str(path), what=f"its {model.config.arch} segmenter")
    return model.eval(), meta
