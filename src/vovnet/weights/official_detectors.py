"""Published CenterMask2 models as our detectors: ``vovnet convert --from official centermask2-*.pth cm.safetensors``.

A centermask2 checkpoint (``{"model": {...}}`` from detectron2, often with solver state) is read with
``torch.load(weights_only=True)``, renamed by :mod:`vovnet.weights.detector_convert`, and its architecture
(backbone variant, lite or full heads, tower and mask-head depth, class count) read off the shapes. The
detector it becomes is a ``centermask`` in the ``centermask2`` dialect, with the official test size
(short side 600, long side 1000 for the Lite models; 800 and 1333 for the others) and the official
backbone norm (frozen batch norm); 80 classes get the COCO names.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.detection.builders import HEAD_SIZES, DetectorConfig, build_detector
from .checkpoint import convert_file, torch_load_weights
from .detector_checkpoint import load_detector_weights, save_detector
from .detector_convert import centermask2_shapes, centermask2_to_ours, is_centermask2
from .hub import pull
from .pretrained import as_tag

# detectron2's COCO categories in id order: label k (1-based) is COCO_CLASSES[k - 1].
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
# COCO's category id of each of COCO_CLASSES (the 2017 instances files number 80 classes from 1 to 90, with gaps).
COCO_CATEGORY_IDS = (*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83), *range(84, 91))
# centermask2's INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST and MIN_SIZE_TRAIN
TEST_SIZES = {"lite": (600, 1000), "full": (800, 1333)}
TRAIN_SIZES = {"lite": (580, 600), "full": (640, 672, 704, 736, 768, 800)}


def read_model_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pth`` file's ``model`` dict, with every prefix kept (``torch.load(weights_only=True)``)."""
    obj = torch_load_weights(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds no state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def centermask2_config(ours: dict[str, torch.Tensor], class_names: list[str] | None = None) -> DetectorConfig:
    """The :class:`DetectorConfig` of a renamed centermask2 state dict, from its shapes."""
    shapes = centermask2_shapes(ours)
    found = (shapes.fpn_channels, shapes.tower_convs, shapes.mask_convs, shapes.mask_dims, shapes.maskiou_convs, shapes.maskiou_dims)
    kind = next(
        (k for k, s in HEAD_SIZES.items() if found == (s.fpn_channels, s.tower_convs, s.mask_convs, s.mask_dims, s.maskiou_convs, s.maskiou_dims)),
        None,
    )
    if kind is None:
        raise CheckpointError(
            f"heads of FPN width {found[0]}, {found[1]} tower convs, {found[2]} x {found[3]} mask convs and "
            f"{found[4]} x {found[5]} MaskIoU convs are neither CenterMask's nor CenterMask-Lite's"
        )
    if shapes.num_levels != 5:
        raise CheckpointError(f"the FCOS head has {shapes.num_levels} level scales; CenterMask uses P3..P7 (5)")
    if class_names is None:
        class_names = list(COCO_CLASSES) if shapes.num_classes == len(COCO_CLASSES) else [f"class{k}" for k in range(1, shapes.num_classes + 1)]
    elif len(class_names) != shapes.num_classes:
        raise CheckpointError(f"the checkpoint has {shapes.num_classes} classes, {len(class_names)} names were given")
    short, long = TEST_SIZES[kind]
    return DetectorConfig(
        "centermask",
        shapes.model,
        tuple(class_names),
        kind == "lite",
        min_size=short,
        max_size=long,
        norm="frozen_batch",
        backbone_config=shapes.backbone.to_dict(),
        mask_detections_per_gt=None,
        dialect="centermask2",
        train_sizes=TRAIN_SIZES[kind],
    )


def convert_centermask2(
    src: str | os.PathLike, dst: str | os.PathLike, class_names: list[str] | None = None, *, state_dict: dict | None = None,
    **metadata,
) -> dict:
    """Convert a centermask2 checkpoint to our detector checkpoint at ``dst`` (atomically). Returns a summary.

    ``state_dict``: the file's ``model`` dict when already read; ``metadata``: more for the checkpoint's
    metadata (a pretrained tag's source URL and sha256). Raises CheckpointError naming the keys that fit no
    rule or do not fit the detector the shapes describe.
    """
    ours = centermask2_to_ours(state_dict if state_dict is not None else read_model_dict(src))
    cfg = centermask2_config(ours, class_names)
    model = build_detector(cfg)
    load_detector_weights(model, ours, source=str(src))
    save_detector(model, dst, converted_from="centermask2", **metadata)
    return {
        "model": cfg.model, "source": "centermask2", "lite": cfg.lite, "num_classes": len(cfg.class_names),
        "image_size": [cfg.min_size, cfg.max_size], "keys": len(ours), "dst": str(dst),
    }


def pull_centermask2(tag: str, *, progress: bool = True) -> Path:
    """A centermask2 detector tag's (``centermask2_vovnet39.coco``) detector checkpoint, downloaded and
    converted by :func:`convert_centermask2` into the pretrained cache first if needed."""
    return pull(tag, progress=progress, convert=lambda src, dst, provenance: convert_centermask2(src, dst, **provenance))


def detector_file(path_or_tag: str | os.PathLike) -> Path:
    """The detector checkpoint a path or a detector tag names (a tag is pulled first)."""
    tag = as_tag(path_or_tag)
    return pull_centermask2(tag) if tag else Path(path_or_tag)


def convert_official_file(src: str | os.PathLike, dst: str | os.PathLike, *, backbone_only: bool = False, model_name: str | None = None) -> dict:
    """``vovnet convert --from official``: a whole centermask2 detector becomes a detector checkpoint, anything
    else (or any file with ``backbone_only``) a backbone checkpoint (:func:`vovnet.weights.checkpoint.convert_file`)."""
    if not backbone_only and Path(src).suffix != ".safetensors":
        raw = read_model_dict(src)
        if is_centermask2(raw):
            if model_name is not None:
                found = centermask2_config(centermask2_to_ours(raw)).model
                if found != model_name:
                    raise CheckpointError(f"{src} holds a CenterMask on {found}, not {model_name}")
            return convert_centermask2(src, dst, state_dict=raw)
    return convert_file(src, dst, "official", model_name)
