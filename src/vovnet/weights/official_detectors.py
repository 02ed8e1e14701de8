"""Published CenterMask2 and vovnet-detectron2 models as our detectors: ``vovnet convert --from official
centermask2-*.pth cm.safetensors``, ``vovnet convert --from official mask_V_39_eSE_ms_3x.pth mask.safetensors``.

A centermask2 checkpoint (``{"model": {...}}`` from detectron2, often with solver state) is read with
``torch.load(weights_only=True)``, renamed by :mod:`vovnet.weights.detector_convert`, and its architecture
(backbone variant, lite or full heads, tower and mask-head depth, class count) read off the shapes. The
detector it becomes is a ``centermask`` in the ``centermask2`` dialect, with the official test size
(short side 600, long side 1000 for the Lite models; 800 and 1333 for the others) and the official
backbone norm (frozen batch norm); 80 classes get the COCO names.

A vovnet-detectron2 checkpoint (Faster R-CNN, Mask R-CNN, Panoptic FPN: detectron2's ``GeneralizedRCNN`` /
``PanopticFPN``) becomes a ``faster_rcnn``, ``mask_rcnn`` or ``panoptic_fpn`` in the ``detectron2`` dialect, read off
its keys and shapes the same way (:func:`detectron2_config`): the backbone variant, FPN (256) or FPNLite (128), the
class count and, for Panoptic FPN, the semantic head's classes (54 get COCO's stuff names); test size 800 / 1333 and
the multi-scale training sizes of ``Base-RCNN-VoVNet-FPN.yaml``. :func:`convert_official_detector` takes either kind.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.detection.builders import HEAD_SIZES, DetectorConfig, build_detector
from .checkpoint import convert_file, torch_load_weights
from .convert import unwrap_tensors
from .detector_checkpoint import load_detector_weights, save_detector
from .detector_convert import (
    centermask2_shapes,
    centermask2_to_ours,
    detectron2_shapes,
    detectron2_to_ours,
    is_centermask2,
    is_detectron2_rcnn,
)
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
# detectron2's stuff_classes of coco_2017_*_panoptic_separated (builtin_meta.py): channel k of a COCO Panoptic FPN's
# semantic head; "things" first, then COCO's 53 stuff categories in id order, "-other" and "-merged" cut.
COCO_STUFF_CLASSES = (
    "things", "banner", "blanket", "bridge", "cardboard", "counter", "curtain", "door-stuff", "floor-wood", "flower",
    "fruit", "gravel", "house", "light", "mirror-stuff", "net", "pillow", "platform", "playingfield", "railroad", "river",
    "road", "roof", "sand", "sea", "shelf", "snow", "stairs", "tent", "towel", "wall-brick", "wall-stone", "wall-tile",
    "wall-wood", "water", "window-blind", "window", "tree", "fence", "ceiling", "sky", "cabinet", "table", "floor",
    "pavement", "mountain", "grass", "dirt", "paper", "food", "building", "rock", "wall", "rug",
)
# centermask2's INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST and MIN_SIZE_TRAIN
TEST_SIZES = {"lite": (600, 1000), "full": (800, 1333)}
TRAIN_SIZES = {"lite": (580, 600), "full": (640, 672, 704, 736, 768, 800)}


def read_model_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pth`` file's ``model`` dict, with every prefix kept (``torch.load(weights_only=True)``)."""
    obj = torch_load_weights(path)
    try:
        return unwrap_tensors(obj)[0]
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _class_names(count: int, names: list[str] | None) -> list[str]:
    """``names`` checked against the checkpoint's class count; else COCO's for 80 classes, ``class1..`` otherwise."""
    if names is None:
        return list(COCO_CLASSES) if count == len(COCO_CLASSES) else [f"class{k}" for k in range(1, count + 1)]
    if len(names) != count:
        raise CheckpointError(f"the checkpoint has {count} classes, {len(names)} names were given")
    return list(names)


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
    class_names = _class_names(shapes.num_classes, class_names)
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
    return _write_converted(ours, centermask2_config(ours, class_names), src, dst, "centermask2", metadata)


def detectron2_config(ours: dict[str, torch.Tensor], class_names: list[str] | None = None) -> DetectorConfig:
    """The :class:`DetectorConfig` of a renamed vovnet-detectron2 state dict, from its keys and shapes (the layers
    they do not show are checked when the weights are loaded into the detector it builds)."""
    shapes = detectron2_shapes(ours)
    if shapes.fpn_stages != (2, 3, 4, 5):
        stages = "-".join(str(s) for s in (shapes.fpn_stages[0], shapes.fpn_stages[-1]))
        raise CheckpointError(f"the FPN reads stages {stages}; vovnet-detectron2's R-CNNs read stages 2-5")
    widths = {HEAD_SIZES["full"].fpn_channels: False, HEAD_SIZES["lite"].fpn_channels: True}
    if shapes.fpn_channels not in widths:
        raise CheckpointError(f"an FPN {shapes.fpn_channels} wide is neither vovnet-detectron2's FPN (256) nor its FPNLite (128)")
    class_names = _class_names(shapes.num_classes, class_names)
    stuff = None
    if shapes.arch == "panoptic_fpn":
        n = shapes.stuff_classes
        stuff = COCO_STUFF_CLASSES if n == len(COCO_STUFF_CLASSES) else ("things", *(f"stuff{k}" for k in range(1, n)))
    short, long = TEST_SIZES["full"]
    return DetectorConfig(
        shapes.arch, shapes.model, tuple(class_names), widths[shapes.fpn_channels], min_size=short, max_size=long,
        norm="frozen_batch", backbone_config=shapes.backbone.to_dict(), dialect="detectron2",
        train_sizes=TRAIN_SIZES["full"], stuff_classes=stuff,
    )


def convert_detectron2(
    src: str | os.PathLike, dst: str | os.PathLike, class_names: list[str] | None = None, *, state_dict: dict | None = None,
    **metadata,
) -> dict:
    """Convert a vovnet-detectron2 Faster / Mask R-CNN or Panoptic FPN checkpoint to our detector checkpoint at
    ``dst`` (atomically, nothing written on failure). Returns a summary; ``state_dict`` and ``metadata`` as for
    :func:`convert_centermask2`."""
    ours = detectron2_to_ours(state_dict if state_dict is not None else read_model_dict(src))
    return _write_converted(ours, detectron2_config(ours, class_names), src, dst, "detectron2", metadata)


def _write_converted(ours: dict[str, torch.Tensor], cfg: DetectorConfig, src, dst, source: str, metadata: dict) -> dict:
    """The detector ``cfg`` describes, loaded exactly with the renamed weights ``ours`` and written to ``dst``
    (atomically; CheckpointError naming what does not fit, nothing written). Returns the conversion's summary."""
    model = build_detector(cfg)
    load_detector_weights(model, ours, source=str(src))
    save_detector(model, dst, converted_from=source, **metadata)
    return {
        "model": cfg.model, "source": source, "arch": cfg.arch, "lite": cfg.lite, "num_classes": len(cfg.class_names),
        "image_size": [cfg.min_size, cfg.max_size], "keys": len(ours), "dst": str(dst),
    }


def convert_official_detector(src: str | os.PathLike, dst: str | os.PathLike, *, state_dict: dict | None = None, **metadata) -> dict:
    """A whole official detector (centermask2, or vovnet-detectron2's R-CNNs), converted by the converter its keys call for."""
    raw = state_dict if state_dict is not None else read_model_dict(src)
    if is_centermask2(raw):
        return convert_centermask2(src, dst, state_dict=raw, **metadata)
    if is_detectron2_rcnn(raw):
        return convert_detectron2(src, dst, state_dict=raw, **metadata)
    raise CheckpointError(f"{src}: neither a centermask2 detector nor a detectron2 R-CNN (no FCOS head, no RPN head and box predictor)")


def pull_detector(tag: str, *, progress: bool = True) -> Path:
    """A whole detector tag's (``centermask2_vovnet39.coco``, ``mask_rcnn_vovnet39.coco``) detector checkpoint,
    downloaded and converted by :func:`convert_official_detector` into the pretrained cache first if needed."""
    return pull(tag, progress=progress, convert=lambda src, dst, provenance: convert_official_detector(src, dst, **provenance))


def detector_file(path_or_tag: str | os.PathLike) -> Path:
    """The detector checkpoint a path or a detector tag names (a tag is pulled first)."""
    tag = as_tag(path_or_tag)
    return pull_detector(tag) if tag else Path(path_or_tag)


def convert_official_file(src: str | os.PathLike, dst: str | os.PathLike, *, backbone_only: bool = False, model_name: str | None = None) -> dict:
    """``vovnet convert --from official``: a whole centermask2 detector or vovnet-detectron2 R-CNN becomes a detector
    checkpoint, anything else (or any file with ``backbone_only``) a backbone checkpoint
    (:func:`vovnet.weights.checkpoint.convert_file`)."""
    if not backbone_only and Path(src).suffix != ".safetensors":
        raw = read_model_dict(src)
        if is_centermask2(raw) or is_detectron2_rcnn(raw):
            if model_name is not None:
                found = (centermask2_config(centermask2_to_ours(raw)) if is_centermask2(raw) else detectron2_config(detectron2_to_ours(raw))).model
                if found != model_name:
                    raise CheckpointError(f"{src} holds a detector on {found}, not {model_name}")
            return convert_official_detector(src, dst, state_dict=raw)
    return convert_file(src, dst, "official", model_name)
