"""Key tables for whole detectors: centermask2 (CenterMask on detectron2) checkpoints <-> our CenterMask, and
vovnet-detectron2 (detectron2's Faster / Mask R-CNN and Panoptic FPN) checkpoints <-> our R-CNNs' ``detectron2``
dialect.

A centermask2 checkpoint is ``{"model": {...}}`` (plus solver state) with the VoVNet under
``backbone.bottom_up.`` (renamed by the backbone's own layout table, :mod:`.convert`), detectron2's FPN
(``backbone.fpn_lateral{3,4,5}``, ``backbone.fpn_output{3,4,5}``, ``backbone.top_block.p6|p7``), the FCOS
head (``proposal_generator.fcos_head.*``), the SAG-Mask head (``roi_heads.mask_head.*``) and the MaskIoU
head (``roi_heads.maskiou_head.*``). Every other key is one row of ``CENTERMASK2_RULES``: a template on
each side with at most one number ``{n}``, ours being ``official * scale + offset`` (the mask heads
number their convs from 1, ours sit at every other index of a Sequential with the ReLUs between).

The architecture is read off the converted tensors' shapes (:func:`centermask2_shapes`).

A vovnet-detectron2 checkpoint has the same backbone, detectron2's FPN on stages 2-5 (``backbone.fpn_lateral{2..5}``,
``backbone.fpn_output{2..5}``; p6 is a max-pool, without weights), the RPN head
(``proposal_generator.rpn_head.{conv,objectness_logits,anchor_deltas}``), the box head and predictor
(``roi_heads.box_head.fc{1,2}``, ``roi_heads.box_predictor.{cls_score,bbox_pred}``: the background column last, kept
as it is since the ``detectron2`` dialect reads it there), the mask head (``roi_heads.mask_head.{mask_fcn1..4,
deconv,predictor}``) and Panoptic FPN's semantic head (``sem_seg_head.p{2..5}.*``, ``sem_seg_head.predictor``);
``DETECTRON2_RULES`` renames them. Checkpoints of 2020's detectron2 also hold the RPN's cell anchors
(``proposal_generator.anchor_generator.cell_anchors.{level}``): they are checked against the dialect's (detectron2's
unrounded anchors) and dropped. :func:`detectron2_shapes` reads the architecture off the shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import torch

from ..errors import CheckpointError
from ..models.detection.rcnn_detectron2 import ANCHOR_RATIOS, ANCHOR_SIZES, cell_anchors
from ..models.specs import VoVNetConfig
from .convert import convert_state_dict, infer_config, match_model_name

OFFICIAL_BACKBONE, OUR_BACKBONE = "backbone.bottom_up.", "backbone.body."
# detectron2 saved its input normalisation with the weights; these are the values the converted model assumes.
DETECTRON2_PIXELS = {"pixel_mean": (103.530, 116.280, 123.675), "pixel_std": (1.0, 1.0, 1.0)}


@dataclass(frozen=True)
class KeyRule:
    """``official`` <-> ``ours`` key templates; ``{n}`` maps as ``ours = official * scale + offset``, ``{param}``
    (a parameter's name) and ``{path}`` (dotted names and indices) are copied."""

    official: str
    ours: str
    scale: int = 1
    offset: int = 0

    @staticmethod
    def _regex(template: str) -> re.Pattern:
        pattern = (re.escape(template).replace(r"\{n\}", r"(?P<n>\d+)").replace(r"\{param\}", r"(?P<param>[A-Za-z_]+)")
                   .replace(r"\{path\}", r"(?P<path>[\w.]+)"))
        return re.compile(pattern + "$")

    @cached_property
    def _official_re(self) -> re.Pattern:
        return self._regex(self.official)

    @cached_property
    def _ours_re(self) -> re.Pattern:
        return self._regex(self.ours)

    def to_ours(self, key: str) -> str | None:
        m = self._official_re.match(key)
        if m is None:
            return None
        g = m.groupdict()
        n = int(g["n"]) * self.scale + self.offset if "n" in g else None
        return self.ours.format(n=n, param=g.get("param"), path=g.get("path"))

    def to_official(self, key: str) -> str | None:
        m = self._ours_re.match(key)
        if m is None:
            return None
        g = m.groupdict()
        n = None
        if "n" in g:
            n, rest = divmod(int(g["n"]) - self.offset, self.scale)
            if rest:
                return None  # a ReLU's slot: no weights there
        return self.official.format(n=n, param=g.get("param"), path=g.get("path"))


CENTERMASK2_RULES = (
    KeyRule("backbone.fpn_lateral{n}.{param}", "backbone.fpn.inner_blocks.{n}.0.{param}", 1, -3),
    KeyRule("backbone.fpn_output{n}.{param}", "backbone.fpn.layer_blocks.{n}.0.{param}", 1, -3),
    KeyRule("backbone.top_block.p{n}.{param}", "backbone.fpn.extra_blocks.p{n}.{param}"),
    KeyRule("proposal_generator.fcos_head.cls_tower.{n}.{param}", "head.classification_head.conv.{n}.{param}"),
    KeyRule("proposal_generator.fcos_head.bbox_tower.{n}.{param}", "head.regression_head.conv.{n}.{param}"),
    KeyRule("proposal_generator.fcos_head.cls_logits.{param}", "head.classification_head.cls_logits.{param}"),
    KeyRule("proposal_generator.fcos_head.bbox_pred.{param}", "head.regression_head.bbox_reg.{param}"),
    KeyRule("proposal_generator.fcos_head.ctrness.{param}", "head.regression_head.bbox_ctrness.{param}"),
    KeyRule("proposal_generator.fcos_head.scales.{n}.scale", "head.regression_head.scales.{n}"),
    KeyRule("roi_heads.mask_head.mask_fcn{n}.{param}", "mask_head.convs.{n}.{param}", 2, -2),
    KeyRule("roi_heads.mask_head.spatialAtt.conv.{param}", "mask_head.attention.conv.{param}"),
    KeyRule("roi_heads.mask_head.deconv.{param}", "mask_head.deconv.{param}"),
    KeyRule("roi_heads.mask_head.predictor.{param}", "mask_head.predictor.{param}"),
    KeyRule("roi_heads.maskiou_head.maskiou_fcn{n}.{param}", "maskiou_head.convs.{n}.{param}", 2, -2),
    KeyRule("roi_heads.maskiou_head.maskiou_fc1.{param}", "maskiou_head.fc1.{param}"),
    KeyRule("roi_heads.maskiou_head.maskiou_fc2.{param}", "maskiou_head.fc2.{param}"),
    KeyRule("roi_heads.maskiou_head.maskiou.{param}", "maskiou_head.predictor.{param}"),
)


def is_centermask2(keys) -> bool:
    """Whether state-dict ``keys`` are a whole centermask2 detector (FCOS head and mask head present)."""
    keys = list(keys)
    return any(k.startswith("proposal_generator.fcos_head.") for k in keys) and any(k.startswith("roi_heads.mask_head.") for k in keys)


def _check_pixels(state_dict: dict[str, torch.Tensor]) -> None:
    for key, expected in DETECTRON2_PIXELS.items():
        if key in state_dict:
            found = tuple(float(v) for v in state_dict[key].flatten())
            if not torch.allclose(torch.tensor(found), torch.tensor(expected)):
                raise CheckpointError(f"checkpoint was trained with {key} {found}; the converted model assumes detectron2's {expected}")


def _official_to_ours(state_dict: dict[str, torch.Tensor], rules: tuple[KeyRule, ...], what: str) -> dict[str, torch.Tensor]:
    """The backbone renamed by its layout table, every other key by one of ``rules``; CheckpointError names the
    first keys that fit none."""
    _check_pixels(state_dict)
    backbone, out, bad = {}, {}, []
    for key, value in state_dict.items():
        if key in DETECTRON2_PIXELS:
            continue
        if key.startswith(OFFICIAL_BACKBONE):
            backbone[key[len(OFFICIAL_BACKBONE):]] = value
            continue
        new = next((k for k in (rule.to_ours(key) for rule in rules) if k is not None), None)
        if new is None:
            bad.append(key)
        else:
            out[new] = value
    if bad:
        raise CheckpointError(f"{len(bad)} key(s) fit no {what} rule, first: {', '.join(bad[:3])}")
    if not backbone:
        raise CheckpointError(f"no backbone weights (keys starting with {OFFICIAL_BACKBONE})")
    try:
        body = convert_state_dict(backbone, "official", "vovnet")
    except CheckpointError as e:
        raise CheckpointError(f"backbone ({OFFICIAL_BACKBONE}*): {e}") from None
    return {**{OUR_BACKBONE + k: v for k, v in body.items()}, **out}


def _ours_to_official(state_dict: dict[str, torch.Tensor], rules: tuple[KeyRule, ...], what: str) -> dict[str, torch.Tensor]:
    body = {k[len(OUR_BACKBONE):]: v for k, v in state_dict.items() if k.startswith(OUR_BACKBONE) and not k.endswith("num_batches_tracked")}
    out = {OFFICIAL_BACKBONE + k: v for k, v in convert_state_dict(body, "vovnet", "official").items()}
    bad = []
    for key, value in state_dict.items():
        if key.startswith(OUR_BACKBONE):
            continue
        new = next((k for k in (rule.to_official(key) for rule in rules) if k is not None), None)
        if new is None:
            bad.append(key)
        else:
            out[new] = value
    if bad:
        raise CheckpointError(f"{len(bad)} key(s) have no {what} name, first: {', '.join(bad[:3])}")
    return out


def centermask2_to_ours(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a centermask2 detector's keys to our CenterMask's (tensors are not copied).

    Raises CheckpointError naming the first keys no rule explains (e.g. deformable convolutions).
    """
    return _official_to_ours(state_dict, CENTERMASK2_RULES, "centermask2")


def ours_to_centermask2(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`centermask2_to_ours` (batch-norm counters dropped, as detectron2 has none)."""
    return _ours_to_official(state_dict, CENTERMASK2_RULES, "centermask2")


@dataclass(frozen=True)
class Centermask2Shapes:
    """A centermask2 detector's architecture as its tensors show it."""

    model: str  # registered backbone variant
    backbone: VoVNetConfig
    num_classes: int  # foreground classes
    fpn_channels: int
    tower_convs: int
    num_levels: int
    mask_convs: int
    mask_dims: int
    maskiou_convs: int
    maskiou_dims: int


def _count(state_dict: dict, prefix: str) -> int:
    """Convs (4-d weights) directly under ``prefix{index}.weight``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.weight$")
    return sum(1 for k, v in state_dict.items() if pattern.match(k) and v.dim() == 4)


def _backbone_variant(ours: dict[str, torch.Tensor]) -> tuple[str, VoVNetConfig]:
    """The registered VoVNet (and its config) whose shapes the converted backbone has."""
    body = {k[len(OUR_BACKBONE):]: v for k, v in ours.items() if k.startswith(OUR_BACKBONE)}
    config, _, _ = infer_config(body, "official")
    model = match_model_name(config)
    if model is None:
        raise CheckpointError("the backbone's shapes match no registered VoVNet")
    return model, config


def centermask2_shapes(ours: dict[str, torch.Tensor]) -> Centermask2Shapes:
    """Read the architecture off a converted (our-layout) centermask2 state dict."""
    model, config = _backbone_variant(ours)
    try:
        return Centermask2Shapes(
            model=model,
            backbone=config,
            num_classes=ours["head.classification_head.cls_logits.weight"].shape[0],
            fpn_channels=ours["backbone.fpn.inner_blocks.0.0.weight"].shape[0],
            tower_convs=_count(ours, "head.classification_head.conv."),
            num_levels=sum(1 for k in ours if k.startswith("head.regression_head.scales.")),
            mask_convs=_count(ours, "mask_head.convs."),
            mask_dims=ours["mask_head.deconv.weight"].shape[1],
            maskiou_convs=_count(ours, "maskiou_head.convs."),
            maskiou_dims=ours["maskiou_head.convs.0.weight"].shape[0],
        )
    except KeyError as e:
        raise CheckpointError(f"a centermask2 checkpoint needs {e.args[0]} (after renaming)") from None


# ---- vovnet-detectron2: Faster / Mask R-CNN and Panoptic FPN ---------------------------------------------------
DETECTRON2_RULES = (
    KeyRule("backbone.fpn_lateral{n}.{param}", "backbone.fpn.inner_blocks.{n}.0.{param}", 1, -2),
    KeyRule("backbone.fpn_output{n}.{param}", "backbone.fpn.layer_blocks.{n}.0.{param}", 1, -2),
    KeyRule("proposal_generator.rpn_head.conv.{param}", "rpn.head.conv.0.0.{param}"),
    KeyRule("proposal_generator.rpn_head.objectness_logits.{param}", "rpn.head.cls_logits.{param}"),
    KeyRule("proposal_generator.rpn_head.anchor_deltas.{param}", "rpn.head.bbox_pred.{param}"),
    KeyRule("roi_heads.box_head.fc{n}.{param}", "roi_heads.box_head.fc{n}.{param}", 1, 5),  # fc1, fc2 -> fc6, fc7
    KeyRule("roi_heads.box_predictor.{path}", "roi_heads.box_predictor.{path}"),
    KeyRule("roi_heads.mask_head.mask_fcn{n}.{param}", "roi_heads.mask_head.{n}.0.{param}", 1, -1),
    KeyRule("roi_heads.mask_head.deconv.{param}", "roi_heads.mask_predictor.conv5_mask.{param}"),
    KeyRule("roi_heads.mask_head.predictor.{param}", "roi_heads.mask_predictor.mask_fcn_logits.{param}"),
    KeyRule("sem_seg_head.p{n}.{path}", "sem_seg_head.scale_heads.p{n}.{path}"),
    KeyRule("sem_seg_head.predictor.{param}", "sem_seg_head.predictor.{param}"),
)
CELL_ANCHORS = "proposal_generator.anchor_generator.cell_anchors."


def is_detectron2_rcnn(keys) -> bool:
    """Whether state-dict ``keys`` are a whole detectron2 R-CNN (an RPN head and a box predictor)."""
    keys = list(keys)
    return any(k.startswith("proposal_generator.rpn_head.") for k in keys) and any(k.startswith("roi_heads.box_predictor.") for k in keys)


def _check_cell_anchors(state_dict: dict[str, torch.Tensor]) -> None:
    """The cell anchors a checkpoint of 2020's detectron2 saved must be the dialect's (unrounded, sizes 32..512)."""
    for key, found in state_dict.items():
        if not key.startswith(CELL_ANCHORS):
            continue
        level = int(key[len(CELL_ANCHORS):])
        want = cell_anchors((ANCHOR_SIZES[level],), ANCHOR_RATIOS) if level < len(ANCHOR_SIZES) else None
        if want is None or found.shape != want.shape or not torch.allclose(found.float(), want, atol=1e-4):
            raise CheckpointError(f"{key} holds anchors {found.tolist()}; the detectron2 dialect generates "
                                  f"{None if want is None else want.tolist()}")


def detectron2_to_ours(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a vovnet-detectron2 Faster / Mask R-CNN or Panoptic FPN's keys to our ``detectron2`` dialect's
    (tensors are not copied; saved cell anchors checked and dropped). CheckpointError names the keys no rule explains."""
    _check_cell_anchors(state_dict)
    return _official_to_ours({k: v for k, v in state_dict.items() if not k.startswith(CELL_ANCHORS)}, DETECTRON2_RULES, "detectron2 R-CNN")


def ours_to_detectron2(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`detectron2_to_ours` (batch-norm counters dropped; no cell anchors, as detectron2 since 2021)."""
    return _ours_to_official(state_dict, DETECTRON2_RULES, "detectron2 R-CNN")


@dataclass(frozen=True)
class Detectron2Shapes:
    """A detectron2 R-CNN's architecture as its (renamed) tensors show it; the rest of its layers is checked when
    the weights are loaded into the detector these describe."""

    arch: str  # faster_rcnn, mask_rcnn or panoptic_fpn
    model: str  # registered backbone variant
    backbone: VoVNetConfig
    num_classes: int  # foreground classes
    fpn_channels: int
    fpn_stages: tuple[int, ...]  # the body stages the FPN reads (2..5)
    stuff_classes: int  # semantic head channels, "things" included (0 without one)


def detectron2_shapes(ours: dict[str, torch.Tensor]) -> Detectron2Shapes:
    """Read the architecture off a converted (our-layout) detectron2 R-CNN state dict."""
    model, config = _backbone_variant(ours)
    if any(k.startswith("sem_seg_head.") for k in ours):
        arch = "panoptic_fpn"
    elif any(k.startswith("roi_heads.mask_") for k in ours):
        arch = "mask_rcnn"
    else:
        arch = "faster_rcnn"
    laterals = {int(m.group(1)): v for k, v in ours.items() if (m := re.match(r"backbone\.fpn\.inner_blocks\.(\d+)\.0\.weight$", k))}
    if not laterals:
        raise CheckpointError("a detectron2 R-CNN checkpoint needs its FPN (backbone.fpn_lateral*)")
    try:
        return Detectron2Shapes(
            arch=arch,
            model=model,
            backbone=config,
            num_classes=ours["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1,
            fpn_channels=laterals[min(laterals)].shape[0],
            fpn_stages=tuple(sorted(i + 2 for i in laterals)),  # the rules number stage s as s - 2
            stuff_classes=ours["sem_seg_head.predictor.weight"].shape[0] if arch == "panoptic_fpn" else 0,
        )
    except KeyError as e:
        raise CheckpointError(f"a detectron2 R-CNN checkpoint needs {e.args[0]} (after renaming)") from None
