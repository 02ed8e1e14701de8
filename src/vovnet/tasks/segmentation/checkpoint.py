"""Segmenter checkpoints: safetensors weights plus JSON metadata (the :class:`SegmenterConfig`), written atomically.

The file is read by :func:`vovnet.weights.checkpoint.read_checkpoint` like every checkpoint of ours;
its ``format`` tells segmenters from classifiers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import save as st_save

from ...errors import CheckpointError
from ...io import atomic_write_bytes
from ...weights.checkpoint import META_KEY, read_checkpoint
from .model import Segmenter, SegmenterConfig, build_segmenter

FORMAT = "vovnet-segmenter/1"


def save_segmenter(model: Segmenter, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``model``'s weights and config to ``path`` atomically; ``extra`` (JSON-serialisable) joins the metadata."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "task": "segment", "segmenter": model.config.to_dict(), "class_names": list(model.class_names), **extra}
    return atomic_write_bytes(path, st_save(tensors, metadata={META_KEY: json.dumps(meta)}))


def load_segmenter(path: str | os.PathLike) -> tuple[Segmenter, dict]:
    """``(segmenter in eval mode, metadata)`` from a file written by :func:`save_segmenter`.

    Raises CheckpointError naming the file when it is unreadable, not a segmenter, or its weights do not fit.
    """
    state_dict, meta = read_checkpoint(path)
    if meta is None or meta.get("format") != FORMAT:
        found = "no vovnet metadata" if meta is None else f"format {meta.get('format')!r}"
        raise CheckpointError(f"{path}: not a segmentation checkpoint ({found}; expected {FORMAT})")
    model = build_segmenter(SegmenterConfig.from_dict(meta["segmenter"]))
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        problems = [f"{len(keys)} {label} (first: {', '.join(keys[:3])})" for label, keys in
                    (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)) if keys]
        raise CheckpointError(f"{path}: weights do not fit its {model.config.arch} segmenter: {'; '.join(problems)}")
    return model.eval(), meta
