"""Every model, created or loaded: the one layer that composes building (:mod:`vovnet.models`, which never
reads a file) with weights (:mod:`vovnet.weights`).

- ``create_model`` / ``create_detector`` / ``create_segmenter``: a new network, with published or given
  backbone weights when asked for;
- ``load_detector`` / ``load_segmenter`` (and :func:`vovnet.load_checkpoint` for classifiers): one of our
  checkpoints, or a tag, as an eval-mode model; ``load``: any of them, of whichever kind it is.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from torch import nn

from .errors import CheckpointError, UsageError
from .models.backbone import TIMM_PREFIX
from .models.detection.builders import ARCHS as DETECTOR_ARCHS
from .models.detection.builders import DetectorConfig, build_detector, default_lite
from .models.registry import build_registered, get_spec, registered_names
from .models.segmentation.model import ARCHS as SEGMENTER_ARCHS
from .models.segmentation.model import Segmenter, SegmenterConfig, build_segmenter
from .models.specs import MODEL_SPECS
from .models.vovnet import VoVNet
from .weights import checkpoint as checkpoint_files
from .weights.checkpoint import load_pretrained, read_checkpoint
from .weights.detector_checkpoint import CHECKPOINT_SIZE, detector_from_checkpoint, read_detector_checkpoint
from .weights.hub import pretrained_file, pull, weights_input_format
from .weights.official_detectors import detector_file
from .weights.pretrained import as_tag, get_pretrained, pretrained_options
from .weights.segmenter_checkpoint import read_segmenter_checkpoint, segmenter_from_checkpoint

TASKS = ("classify", "detect", "segment")


def list_models(pattern: str | None = None, *, task: str | None = None) -> list[str]:
    """What can be created: classifier / backbone variants (``task="classify"``, for :func:`create_model`),
    detector architectures (``"detect"``, for :func:`create_detector`) and segmenter architectures
    (``"segment"``, for :func:`create_segmenter`); every kind in that order when ``task`` is None. ``pattern``
    keeps the names containing it."""
    tables = {"classify": registered_names(), "detect": list(DETECTOR_ARCHS), "segment": list(SEGMENTER_ARCHS)}
    if task is not None and task not in tables:
        raise UsageError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    names = [n for t in ([task] if task else TASKS) for n in tables[t]]
    return [n for n in names if pattern is None or pattern in n]

def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    pretrained: bool | str | os.PathLike | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] = (1, 2, 3, 4),
    **overrides,
) -> VoVNet:
    """Build a registered variant, optionally with pretrained weights.

    Args:
        name: a name from :func:`vovnet.list_models` (``task="classify"``).
        num_classes: classifier outputs (0 = no classifier; ``forward`` gives pooled features).
        in_chans: input channels.
        pretrained: True for ``name``'s default published weights, a tag (``vovnet39.timm_ra_in1k``,
            see :func:`vovnet.list_pretrained`; downloaded once, verified, converted and cached), or a
            path to a checkpoint (ours, or an official / timm / blog file, detected by its keys). A tag's
            dialect options (timm's ``ese="last"``) apply before building. Backbone weights must match
            exactly; a classifier of another size, or none, leaves a freshly initialised head. The
            model's ``preprocessing`` becomes the one the weights were trained with.
        features_only: return feature maps (see :class:`VoVNet`).
        out_indices: which maps ``features_only`` returns.
        **overrides: any :class:`VoVNetConfig` field (``norm="frozen_batch"``, ``ese="last"``, ...) and
            ``drop_rate`` / ``drop_path_rate``.
    """
    tag = as_tag(pretrained, name)
    if tag is not None:
        weights = get_pretrained(tag)
        if weights.task != "classify":
            raise UsageError(f"{tag} is a whole {weights.detector} detector; load it with vovnet.load_detector({tag!r})")
        if weights.model != name:
            raise UsageError(f"{tag} holds {weights.model} weights, not {name}")
        clash = [f"{k}={overrides[k]!r}" for k, v in weights.options.items() if k in overrides and overrides[k] != v]
        if clash:
            raise UsageError(f"{tag} needs {weights.options}; drop {', '.join(clash)}")
        overrides = {**weights.options, **overrides}
        pretrained = pull(tag)
    model = build_registered(
        name, num_classes=num_classes, in_chans=in_chans, features_only=features_only, out_indices=out_indices, **overrides
    )
    if pretrained is not None and pretrained is not False:
        load_pretrained(model, pretrained)
    return model



def build_with_backbone_weights(cfg: DetectorConfig | SegmenterConfig, pretrained: bool | str | os.PathLike | None = None) -> nn.Module:
    """The dense model (detector or segmenter) that ``cfg`` describes, its backbone body loaded with ``pretrained``
    (True: the backbone's default tag; a tag; or a classification checkpoint in any layout ``create_model`` reads).

    The record is made to fit the weights first: their dialect (timm's ``ese="last"``, V1's shortcuts) and,
    unless ``cfg`` sets one, the input format they were trained on (detectron2's BGR 0..255 for the official
    weights)."""
    build = build_detector if isinstance(cfg, DetectorConfig) else build_segmenter
    pretrained = as_tag(pretrained, cfg.model) or pretrained or None
    if not pretrained:
        return build(cfg)
    if cfg.model.startswith(TIMM_PREFIX):
        raise UsageError("--pretrained is for vovnet backbones; timm models are built without weights here")
    options = pretrained_options(pretrained)
    if options and cfg.backbone_config is None:
        cfg = dataclasses.replace(cfg, backbone_config=get_spec(cfg.model).config.replace(norm=cfg.norm, **options).to_dict())
    if cfg.input_format is None:
        cfg = dataclasses.replace(cfg, input_format=weights_input_format(pretrained))
    model = build(cfg)
    load_pretrained(model.backbone.body, pretrained_file(pretrained))
    return model


def create_detector(
    arch: str,
    backbone: str,
    class_names: Sequence[str],
    *,
    pretrained: str | os.PathLike | None = None,
    lite: bool | None = None,
    image_size: int = 800,
    max_size: int | None = None,
    **options,
) -> nn.Module:
    """A detector (see :func:`vovnet.list_models` with ``task="detect"``) on a VoVNet-FPN backbone.

    ``create_detector("centermask", "vovnet19_slim_dw", ["circle", ...], pretrained=True)``.

    Args:
        arch: ``faster_rcnn``, ``mask_rcnn_sag``, ``fcos``, ``retinanet`` or ``centermask``.
        backbone: a registered VoVNet (or ``timm:NAME``).
        class_names: the foreground classes; label ``k`` (1-based) is ``class_names[k - 1]``.
        pretrained: backbone weights: True for ``backbone``'s default tag, a tag (:func:`vovnet.list_pretrained`)
            or a classification checkpoint in any layout ``create_model`` reads. The detector takes the input
            these weights were trained on (unless ``input_format`` is given).
        lite: the 128-channel FPN and lite heads (default: V-19 backbones, as CenterMask-Lite).
        image_size, max_size: the short side images are resized to, and the long side's limit (default
            ``image_size * 1333 / 800``).
        **options: other :class:`~vovnet.models.detection.DetectorConfig` fields (``freeze_at``, ``norm``,
            ``score_thresh``, ``nms_thresh``, ``detections_per_img``, ``dialect``, ``input_format``).
    Returns:
        a torchvision-style detector in training mode, its record as ``model.config``.
    """
    cfg = DetectorConfig(
        arch,
        backbone,
        tuple(class_names),
        default_lite(backbone) if lite is None else lite,
        min_size=image_size,
        max_size=max_size if max_size is not None else round(image_size * 1333 / 800),
        **options,
    )
    return build_with_backbone_weights(cfg, pretrained)


def create_segmenter(arch: str, backbone: str, class_names: Sequence[str], *, pretrained: str | os.PathLike | None = None,
                     **options) -> Segmenter:
    """A semantic segmenter (see :func:`vovnet.list_models` with ``task="segment"``) on a VoVNet backbone.

    ``create_segmenter("fpn_semantic", "vovnet19_slim_dw", ["background", "circle"], pretrained=True)``.

    Args:
        arch: ``fpn_semantic``, ``deeplabv3`` or ``deeplabv3plus``.
        backbone: a registered VoVNet (or ``timm:NAME``).
        class_names: one name per output channel (the background included).
        pretrained: backbone weights, as for :func:`create_detector`.
        **options: other :class:`~vovnet.models.segmentation.SegmenterConfig` fields (``fpn_channels``,
            ``head_channels``, ``input_size``, ``refine_radius``, ...).
    """
    return build_with_backbone_weights(SegmenterConfig(arch, backbone, tuple(class_names), **options), pretrained)


def load_checkpoint(path_or_tag: str | os.PathLike, *, features_only: bool = False,
                    out_indices: Sequence[int] = (1, 2, 3, 4)) -> VoVNet:
    """A classifier or backbone checkpoint of ours (``save_checkpoint``, ``vovnet train``, ``vovnet convert``) or a
    classification tag (pulled and converted first), rebuilt exactly, in eval mode; ``features_only``: its maps
    at ``out_indices``."""
    tag = as_tag(path_or_tag)
    if tag is not None:
        weights = get_pretrained(tag)
        if weights.task != "classify":
            raise UsageError(f"{tag} is a whole {weights.detector} detector; load it with vovnet.load_detector({tag!r})")
        path_or_tag = pull(tag)
    return checkpoint_files.load_checkpoint(path_or_tag, features_only=features_only, out_indices=out_indices)


def load_detector(path_or_tag: str | os.PathLike, *, image_size: int | tuple[int, int] | None | str = CHECKPOINT_SIZE,
                  **selection) -> nn.Module:
    """A detector checkpoint (trained here, or converted by ``vovnet convert --from official``) in eval mode; a
    tag (``centermask2_vovnet39.coco``, see ``vovnet weights``) is pulled and converted first.

    ``image_size``: ``"checkpoint"`` (its test size: 600/1000 for CenterMask-Lite, 800/1333 for CenterMask), a
    short side, a ``(short, long)`` pair, or None (every image at its own size, as the official model called
    directly). ``selection``: ``score_thresh``, ``nms_thresh``, ``detections_per_img`` instead of the checkpoint's
    (:class:`~vovnet.models.detection.DetectorConfig`). Input and output
    as torchvision's detectors: ``model([image, ...])`` with ``[3, H, W]`` RGB floats in 0..1 -> per image
    ``boxes`` ``[N, 4]``, ``scores``, ``labels`` (1-based; the names are ``model.class_names``), ``masks``
    ``[N, 1, H, W]`` and, with CenterMask's MaskIoU head, ``mask_scores``.
    """
    path = detector_file(path_or_tag)
    state_dict, meta = read_detector_checkpoint(path)
    return detector_from_checkpoint(state_dict, meta, source=str(path), image_size=image_size, **selection)


def load_segmenter(path: str | os.PathLike, **overrides) -> Segmenter:
    """A segmenter checkpoint in eval mode; ``overrides`` are :class:`~vovnet.models.segmentation.SegmenterConfig`
    fields that change inference only (``refine_radius``, ``refine_eps``, ``input_size``)."""
    if as_tag(path) is not None:
        raise UsageError(f"{path} is a tag of {get_pretrained(str(path)).task} weights; no segmenter is published")
    state_dict, meta = read_segmenter_checkpoint(path)
    return segmenter_from_checkpoint(state_dict, meta, source=str(path), **overrides)


def load(path_or_tag: str | os.PathLike, **options) -> nn.Module:
    """Any of our checkpoints, or any tag, as an eval-mode model of its kind: a classifier
    (:func:`vovnet.load_checkpoint`), a detector (:func:`load_detector`) or a segmenter (:func:`load_segmenter`);
    ``options`` go to that function (a classification tag's to :func:`create_model`)."""
    tag = as_tag(path_or_tag)
    if tag is not None:
        weights = get_pretrained(tag)
        return load_detector(tag, **options) if weights.task == "detect" else load_checkpoint(tag, **options)
    _, meta = read_checkpoint(path_or_tag)
    task = (meta or {}).get("task", "classify" if meta else None)
    if task == "detect":
        return load_detector(path_or_tag, **options)
    if task == "segment":
        return load_segmenter(path_or_tag, **options)
    if task == "classify":
        return load_checkpoint(path_or_tag, **options)
    raise CheckpointError(f"{path_or_tag}: not one of our checkpoints (no vovnet metadata); create_model(name, pretrained=path) "
                          "reads a foreign backbone file, `vovnet convert` a foreign detector")

def _entry_point(name: str):
    def factory(**kwargs) -> VoVNet:
        return create_model(name, **kwargs)

    factory.__name__ = name
    factory.__doc__ = f"{MODEL_SPECS[name].official_name}: ``create_model({name!r}, **kwargs)``."
    return factory


# The seed blog's public names (its factories ignored their arguments; ours honour them).
vovnet27_slim = _entry_point("vovnet27_slim")
vovnet39 = _entry_point("vovnet39")
vovnet57 = _entry_point("vovnet57")
