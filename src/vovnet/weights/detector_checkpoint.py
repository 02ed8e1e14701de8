"""Detector checkpoints: safetensors weights plus JSON metadata that rebuilds the exact detector.

The metadata (under the same key as classification checkpoints) records ``task``, ``arch``, ``model``,
``num_classes``, ``class_names``, ``image_size`` and the full :class:`DetectorConfig`, so
``vovnet.load_detector(path)`` needs nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import CheckpointError, UsageError
from ..models.detection.builders import DetectorConfig, build_detector
from .checkpoint import META_KEY, load_exact, read_checkpoint, write_checkpoint

FORMAT = "vovnet-detector/1"
TASK = "detect"
CHECKPOINT_SIZE = "checkpoint"  # load_detector's default image size: the one the checkpoint records
# Layers whose shape follows the class count (the semantic predictor's: the stuff classes + 1); fine-tuning on other
# classes starts them afresh.
CLASS_LAYERS = (
    "head.classification_head.cls_logits.",
    "mask_head.predictor.",
    "maskiou_head.predictor.",
    "roi_heads.box_predictor.",
    "roi_heads.mask_head.predictor.",
    "roi_heads.mask_predictor.mask_fcn_logits.",
    "sem_seg_head.predictor.",
)


def detector_metadata(model: nn.Module, **extra: Any) -> dict:
    """What a detector checkpoint records besides its weights."""
    cfg: DetectorConfig = model.config
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


def with_image_size(cfg: DetectorConfig, image_size: int | tuple[int, int] | None) -> DetectorConfig:
    """``cfg`` resizing its input to ``image_size``: a short side (the long side limit scaled as in ``cfg``), a
    ``(short, long)`` pair, or None (every image at its own size; ``centermask`` only)."""
    if image_size is None:
        return dataclasses.replace(cfg, min_size=None, max_size=None)
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        ratio = cfg.max_size / cfg.min_size if cfg.min_size and cfg.max_size else 1333 / 800
        return dataclasses.replace(cfg, min_size=image_size, max_size=round(image_size * ratio))
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2 and all(isinstance(s, int) for s in image_size):
        return dataclasses.replace(cfg, min_size=image_size[0], max_size=image_size[1])
    raise UsageError(f"image_size takes a short side, a (short, long) pair or None, got {image_size!r}")


def read_detector_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(state_dict, metadata)`` of a detector checkpoint; CheckpointError for anything else."""
    state_dict, meta = read_checkpoint(path)
    if meta is None or meta.get("task") != TASK:
        found = "no vovnet metadata" if meta is None else f"a {meta.get('task', 'classification')} checkpoint"
        raise CheckpointError(f"{path}: not a detector checkpoint ({found})")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unsupported detector format {meta.get('format')!r} (this version reads {FORMAT})")
    return state_dict, meta


def is_detector_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one of our detector checkpoints (its safetensors header alone is read)."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = (f.metadata() or {}).get(META_KEY)
    except (OSError, SafetensorError):
        return False
    return meta is not None and json.loads(meta).get("task") == TASK


# Record fields that change what inference keeps, not the layers: a loaded checkpoint may take other values.
SELECTION_FIELDS = ("score_thresh", "nms_thresh", "detections_per_img")


def detector_from_checkpoint(state_dict: dict, meta: dict, *, source: str,
                             image_size: int | tuple[int, int] | None | str = CHECKPOINT_SIZE, **selection) -> nn.Module:
    """The detector (eval mode) that a detector checkpoint's ``(state_dict, metadata)`` (as
    :func:`read_detector_checkpoint` gives them) describes, with its weights.

    ``image_size``: the test size the checkpoint records (default), a short side, a ``(short, long)`` pair,
    or None (every image at its own size, as the official model called directly; ``centermask`` only).
    ``selection``: ``score_thresh`` (0 keeps every candidate), ``nms_thresh``, ``detections_per_img`` instead of
    the checkpoint's (None: the checkpoint's).
    """
    unknown = sorted(set(selection) - set(SELECTION_FIELDS))
    if unknown:
        raise UsageError(f"{', '.join(unknown)}: a loaded detector takes {', '.join(SELECTION_FIELDS)}")
    record = {**meta["detector"], **{k: v for k, v in selection.items() if v is not None}}
    cfg = DetectorConfig.from_dict(record)
    if image_size != CHECKPOINT_SIZE:
        cfg = with_image_size(cfg, image_size)
    model = build_detector(cfg)
    load_detector_weights(model, state_dict, source=source)
    return model.eval()


def load_for_finetuning(model: nn.Module, state_dict: dict, *, source: str) -> list[str]:
    """Load a detector checkpoint into ``model`` built for other classes: every tensor whose name and shape fit;
    the class-dependent layers (``CLASS_LAYERS``) that do not fit keep their fresh initialisation.

    Returns the names of the tensors left fresh; CheckpointError names any other misfit.
    """
    own = model.state_dict()
    fresh = [k for k in own if k.startswith(CLASS_LAYERS) and k in state_dict and state_dict[k].shape != own[k].shape]
    load_exact(model, {**state_dict, **{k: own[k] for k in fresh}}, source=source, what="this detector")
    return fresh


def load_detector_weights(model: nn.Module, state_dict: dict, *, source: str) -> None:
    """Load ``state_dict`` exactly (batch-norm counters aside); CheckpointError names what does not fit."""
    load_exact(model, state_dict, source=source, what="this detector")
