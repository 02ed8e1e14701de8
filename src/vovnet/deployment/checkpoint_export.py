"""``vovnet export``: what a checkpoint exports, by its task.

A classification checkpoint exports the classifier (or with ``features`` its feature maps); a detector
checkpoint the whole detector (:func:`~vovnet.deployment.detection.export_detector`), or with ``features``
its FPN backbone; a segmenter checkpoint the whole segmenter
(:func:`~vovnet.deployment.segmentation.export_segmenter`), or with ``features`` its backbone's maps. Every
file is written only after its runtime agrees with PyTorch.
"""

from __future__ import annotations

import os

from ..errors import UsageError
from ..factory import load_detector, load_segmenter
from ..weights.checkpoint import load_checkpoint, read_checkpoint
from .detection import export_detector
from .export import ExportTarget, export_file, fpn_target, vovnet_target
from .segmentation import export_segmenter

DENSE_TASKS = ("detect", "segment")


def checkpoint_task(path: str | os.PathLike) -> tuple[str, dict]:
    """``(task, metadata)``: ``classify``, ``detect`` or ``segment``, the task a checkpoint was written by."""
    _, meta = read_checkpoint(path)
    return (meta or {}).get("task", "classify"), meta or {}


def target_from_checkpoint(path: str | os.PathLike, *, features: bool = False, out_indices=(1, 2, 3, 4)) -> ExportTarget:
    """The tensor-in, tensors-out network ``vovnet export`` checks and writes for ``path``: a classifier (with
    ``features`` its feature extractor), or with ``features`` a detector's or segmenter's backbone maps."""
    task, meta = checkpoint_task(path)
    if task == "detect":
        if not features:
            raise UsageError("a whole detector is exported by export_checkpoint; --features exports its FPN backbone")
        detector = load_detector(path)
        return fpn_target(detector.backbone, int(meta["image_size"]), meta)
    if task == "segment":
        if not features:
            raise UsageError("a whole segmenter is exported by export_checkpoint; --features exports its backbone")
        segmenter = load_segmenter(path)
        size = segmenter.config.input_size or 256
        return fpn_target(segmenter.backbone, size, meta)
    try:
        model = load_checkpoint(path, features_only=features, out_indices=out_indices)
    except ValueError as e:  # e.g. out_indices outside 0..4
        raise UsageError(str(e)) from None
    return vovnet_target(model)


def export_checkpoint(path: str | os.PathLike, out: str | os.PathLike, *, features: bool = False, out_indices=(1, 2, 3, 4),
                      **options) -> dict:
    """Export the checkpoint at ``path`` to ``out`` (see the module's docstring); ``options`` are
    :func:`~vovnet.deployment.export.export_file`'s, for classifiers and backbones. Returns the export's report."""
    task, meta = checkpoint_task(path)
    if task in DENSE_TASKS and not features:
        given = sorted(k for k, v in options.items() if v is not None and v is not False and not (k == "batch" and v == 1))
        if given:
            raise UsageError(f"{', '.join(given)}: options of classifier and backbone exports; a whole {task} model takes "
                             "one image of any size")
        if not str(out).lower().endswith(".onnx"):
            raise UsageError(f"{out}: a whole {task} model exports to ONNX (.onnx)")
        if task == "detect":
            model = load_detector(path)
            return export_detector(model, out, metadata=meta)
        model = load_segmenter(path)
        return export_segmenter(model, out, metadata=meta)
    return export_file(target_from_checkpoint(path, features=features, out_indices=out_indices), out, **options)
