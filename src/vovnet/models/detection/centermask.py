"""CenterMask: FCOS plus a SAG-Mask branch on its boxes, in two dialects of one implementation.

``torchvision`` (the default, what ``vovnet train --arch centermask`` trains): torchvision's FCOS with its
anchors, box coder, losses and post-processing. Training adds ``loss_mask``: RoIs are the ground-truth
boxes plus the (detached) FCOS detections that overlap a ground-truth box by IoU >= 0.5, each matched to
its best ground truth (at most ``mask_detections_per_gt`` of them per ground truth, the best-overlapping
first: the mask head's cost grows with its RoIs, and on a CPU it is most of a training step), and the mask
targets and loss are torchvision's Mask R-CNN ones (``maskrcnn_loss``). At inference the top FCOS
detections get the mask of their class, pasted into the image by torchvision's transform.

``centermask2`` (what converted official models run, ``DIALECTS`` lists every difference): detectron2's
input (BGR 0..255 minus its means) and resizing, centermask2's FCOS (per-level scales, points at
``k * s + s // 2``, foreground-only class logits, its candidate selection, losses and center sampling:
:mod:`.fcos`), RoIAlign with ``aligned=True`` and adaptive sampling, the MaskIoU head (:mod:`.maskiou`)
giving ``mask_scores``, at most 50 detections, and detectron2's post-processing: boxes scaled to the
input image and clipped, empty ones dropped, masks pasted by ``grid_sample`` (:func:`.paste.paste_masks`)
and thresholded at 0.5.

RoIs are pooled from P3..P5 by CenterMask's area rule, ``ceil(5 - log2(image_area / box_area))`` with the
unpadded image area and the unclipped boxes, which sends boxes by their share of the image, not by the FPN
paper's absolute canonical size.

At inference every size comes from tensor arithmetic on the image's shape (the resize, the candidate
selection, the cut to the best detections, the RoI levels' image area), so a trace stays dynamic: both
dialects export whole to ONNX (:mod:`vovnet.deployment.detection`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.roi_heads import maskrcnn_loss
from torchvision.ops import box_iou

from .fcos import fcos_losses, fcos_points, select_detections
from .maskiou import MaskIoUHead, gt_share_inside, maskiou_loss, maskiou_targets
from .poolers import AreaRuleRoIAlign, binary_mask_targets
from .sag_mask import SAGMaskHead
from .stages import DetectorStages, detectron2_postprocess
from .transform import DetectorTransform, InputFormat

POSITIVE_IOU = 0.5
TRAIN_DETECTIONS = 100  # centermask2's POST_NMS_TOPK_TRAIN: FCOS detections per image offered to the mask head


@dataclass(frozen=True)
class CenterMaskDialect:
    """Every setting in which the official CenterMask (centermask2 on detectron2) differs from ours.

    Attributes:
        input_format: a key of :data:`~vovnet.models.detection.transform.INPUT_FORMATS`.
        resize_rule: ``torchvision`` or ``detectron2`` (see :mod:`.transform`).
        fcos: ``torchvision`` (its FCOS, with a background class channel) or ``centermask2`` (:mod:`.fcos`:
            per-level scales, shifted points, foreground-only logits, candidate selection, losses).
        roi_aligned: RoIAlign with the half-pixel offset (detectron2's ROIAlignV2).
        roi_sampling_ratio: RoIAlign samples per bin side (0: adaptive).
        mask_loss: ``torchvision`` (soft targets pooled without alignment) or ``detectron2`` (targets pooled
            with ``aligned=True`` and binarised at 0.5).
        mask_rois_per_image: at most this many training RoIs per image for the mask head, drawn at random
            (detectron2's ROI_HEADS: 512 sampled RoIs, a quarter of them positive); None: all.
        maskiou: the MaskIoU head, giving ``mask_scores``.
        max_detections: detections per image.
        postprocess: ``torchvision`` (clip before NMS, masks pasted as probabilities by torchvision's paste) or
            ``detectron2`` (clip after the heads, drop empty boxes, paste by ``grid_sample``, threshold 0.5).
    """

    input_format: str
    resize_rule: str
    fcos: str
    roi_aligned: bool
    roi_sampling_ratio: int
    mask_loss: str
    mask_rois_per_image: int | None
    maskiou: bool
    max_detections: int
    postprocess: str

    @property
    def background_channel(self) -> bool:
        """Class logits and masks have a (never predicted) channel 0 for the background, torchvision's way."""
        return self.fcos == "torchvision"


DIALECTS = {
    "torchvision": CenterMaskDialect("rgb", "torchvision", "torchvision", False, 2, "torchvision", None, False, 100, "torchvision"),
    "centermask2": CenterMaskDialect("bgr255", "detectron2", "centermask2", True, 0, "detectron2", 128, True, 50, "detectron2"),
}


def _best_per_group(index: Tensor, group: Tensor, score: Tensor, k: int) -> Tensor:
    """The entries of ``index`` with the ``k`` highest ``score`` within each ``group`` value."""
    order = torch.argsort(score, descending=True)
    order = order[torch.argsort(group[order], stable=True)]  # by group, best first within each
    sorted_groups = group[order]
    first_of_group = torch.searchsorted(sorted_groups, sorted_groups)  # position of each group's first entry
    rank = torch.arange(len(order), device=index.device) - first_of_group
    return index[order[rank < k]]


def sample_rois(rois: list[Tensor], matched: list[Tensor], cap: int | None) -> tuple[list[Tensor], list[Tensor]]:
    """At most ``cap`` of each image's RoIs (with their ground-truth indices), drawn at random; None keeps all."""
    if cap is None:
        return rois, matched
    picks = [torch.randperm(len(r), device=r.device)[:cap] for r in rois]
    return [r[p] for r, p in zip(rois, picks)], [m[p] for m, p in zip(matched, picks)]


class CenterMask(DetectorStages, FCOS):
    """FCOS with a SAG-Mask branch, and in the ``centermask2`` dialect the MaskIoU head.

    Args:
        backbone: an FPN backbone returning p3..p7 (see :func:`~vovnet.models.backbone.fpn_backbone`).
        num_classes: classes including background at index 0 (torchvision convention; the ``centermask2``
            dialect's heads have channels for the ``num_classes - 1`` foreground classes only).
        mask_head: a :class:`SAGMaskHead` with one channel per class channel.
        mask_levels: the levels RoIs are pooled from, with their strides.
        mask_roi_size: pooled RoI side (masks are twice that).
        mask_detections_per_gt: detections per ground-truth box added to the mask head's training RoIs
            (None: every matching detection, as the official code).
        dialect: a key of ``DIALECTS``.
        maskiou_head: the :class:`MaskIoUHead` (dialects with ``maskiou`` only).
        train_sizes: short sides drawn from at random per training image (multi-scale training).
        input_format: the pixel format the backbone gets (None: the dialect's).
        **kwargs: anything :class:`torchvision.models.detection.FCOS` takes (``head``, ``min_size``, ...);
            ``min_size=None`` keeps images at their own size.

    Input/output as torchvision detectors: a list of ``[3, H, W]`` RGB images in 0..1 (and targets with
    ``boxes``, ``labels``, ``masks`` ``[N, H, W]`` when training) -> losses (``classification``,
    ``bbox_regression``, ``bbox_ctrness``, ``loss_mask``, and ``loss_maskiou``) or per-image dicts with
    ``boxes``, ``scores``, ``labels`` and ``masks`` ``[N, 1, H, W]`` (probabilities; 0/1 in the
    ``centermask2`` dialect, which thresholds as detectron2 does), plus ``mask_scores`` with the MaskIoU head.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        mask_head: SAGMaskHead,
        mask_levels: dict[str, int],
        mask_roi_size: int = 14,
        mask_detections_per_gt: int | None = None,
        dialect: str = "torchvision",
        maskiou_head: MaskIoUHead | None = None,
        train_sizes: tuple[int, ...] | None = None,
        input_format: InputFormat | str | None = None,
        **kwargs,
    ):
        self.dialect = DIALECTS[dialect]
        if (maskiou_head is not None) != self.dialect.maskiou:
            raise ValueError(f"the {dialect} dialect {'needs' if self.dialect.maskiou else 'has no'} MaskIoU head")
        min_size, max_size = kwargs.pop("min_size", 800), kwargs.pop("max_size", 1333)
        kwargs.setdefault("detections_per_img", self.dialect.max_detections)
        super().__init__(backbone, num_classes, **kwargs)
        self.transform = DetectorTransform(
            min_size, max_size, input_format=input_format or self.dialect.input_format, resize_rule=self.dialect.resize_rule,
            train_sizes=train_sizes,
        )
        self.strides = [s.stride for s in backbone.output_shape().values()]
        self.mask_detections_per_gt = mask_detections_per_gt
        self.mask_roi_pool = AreaRuleRoIAlign(
            list(mask_levels), list(mask_levels.values()), mask_roi_size, self.dialect.roi_sampling_ratio, self.dialect.roi_aligned
        )
        self.mask_head = mask_head
        self.maskiou_head = maskiou_head
        self.first_channel_label = 0 if self.dialect.background_channel else 1  # the label of class channel 0

    # ---- FCOS -----------------------------------------------------------------------------------------------
    def detect(self, batch, features: OrderedDict[str, Tensor]) -> list[dict]:
        """The inference stage after the backbone: the FCOS head, then the dialect's decoding and NMS (see
        :mod:`~vovnet.models.detection.stages`)."""
        maps = list(features.values())
        with self.autocast(maps[0].device):
            head_outputs = {k: v.float() for k, v in self.head(maps).items()}
        return self._decode(head_outputs, maps, batch, self.detections_per_img)

    def _decode(self, head_outputs: dict[str, Tensor], features: list[Tensor], images, max_detections: int) -> list[dict]:
        """Per-image ``boxes``, ``scores``, ``labels`` from the head's outputs, in the dialect's way
        (``max_detections``: centermask2's cut; torchvision's post-processing keeps ``detections_per_img``)."""
        if self.dialect.fcos == "centermask2":
            points = fcos_points([f.shape[-2:] for f in features], self.strides, features[0].device)
            return select_detections(
                head_outputs, points, self.strides, score_thresh=self.score_thresh, topk_candidates=self.topk_candidates,
                nms_thresh=self.nms_thresh, max_detections=max_detections,
            )
        anchors = self.anchor_generator(images, features)
        level_sizes = [x.size(2) * x.size(3) for x in features]
        split_outputs = {k: list(v.split(level_sizes, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(level_sizes)) for a in anchors]
        return self.postprocess_detections(split_outputs, split_anchors, images.image_sizes)

    def _fcos_losses(self, head_outputs: dict[str, Tensor], features: list[Tensor], images, targets) -> dict[str, Tensor]:
        if self.dialect.fcos == "centermask2":
            points = fcos_points([f.shape[-2:] for f in features], self.strides, features[0].device)
            return fcos_losses(head_outputs, points, self.strides, targets)
        anchors = self.anchor_generator(images, features)
        return self.compute_loss(targets, head_outputs, anchors, [x.size(2) * x.size(3) for x in features])

    # ---- masks ----------------------------------------------------------------------------------------------
    def _mask_training_rois(self, targets: list[dict], detections: list[dict]) -> tuple[list[Tensor], list[Tensor]]:
        """Ground-truth boxes plus detections matching one at IoU >= 0.5; with each RoI's ground-truth index."""
        rois, matched = [], []
        for target, det in zip(targets, detections):
            gt = target["boxes"]
            own = torch.arange(len(gt), device=gt.device)
            if len(gt) and len(det["boxes"]):
                best_iou, best_gt = box_iou(det["boxes"], gt).max(dim=1)
                keep = torch.where(best_iou >= POSITIVE_IOU)[0]
                if self.mask_detections_per_gt is not None:
                    keep = _best_per_group(keep, best_gt[keep], best_iou[keep], self.mask_detections_per_gt)
                rois.append(torch.cat([gt, det["boxes"][keep]]))
                matched.append(torch.cat([own, best_gt[keep]]))
            else:
                rois.append(gt)
                matched.append(own)
        return rois, matched

    def _channels(self, labels: Tensor) -> Tensor:
        """The class channel of the mask (and MaskIoU) outputs for each 1-based label."""
        return labels - self.first_channel_label

    def _mask_losses(self, features, rois: list[Tensor], matched: list[Tensor], targets: list[dict], image_sizes) -> dict[str, Tensor]:
        pooled = self.mask_roi_pool(features, rois, image_sizes)
        logits = self.mask_head(pooled)
        if self.dialect.mask_loss == "torchvision":
            masks, labels = [t["masks"] for t in targets], [t["labels"] for t in targets]
            return {"loss_mask": maskrcnn_loss(logits, rois, masks, labels, matched)}
        size = logits.shape[-1]
        gt_masks, channels, shares = [], [], []
        for t, r, m in zip(targets, rois, matched):
            if len(r):
                gt_masks.append(binary_mask_targets(t["masks"], r, m, size))
                channels.append(self._channels(t["labels"][m]))
                shares.append(gt_share_inside(t["masks"], r, m))
        if not gt_masks:
            zero = logits.sum() * 0
            return {"loss_mask": zero, **({"loss_maskiou": zero} if self.maskiou_head is not None else {})}
        gt_masks, channels, shares = torch.cat(gt_masks), torch.cat(channels), torch.cat(shares)
        selected = logits[torch.arange(len(channels), device=logits.device), channels]
        losses = {"loss_mask": F.binary_cross_entropy_with_logits(selected, gt_masks.to(selected.dtype))}
        if self.maskiou_head is not None:
            # As the official code: the MaskIoU loss reaches the mask head through the predicted mask.
            pred_iou = self.maskiou_head(pooled, selected.sigmoid()[:, None])
            iou_targets = maskiou_targets(selected.detach(), gt_masks, shares)
            losses["loss_maskiou"] = maskiou_loss(pred_iou, channels, iou_targets)
        return losses

    def mask_parts(self):
        return self.mask_roi_pool, self.mask_head, None

    def postprocess(self, detections: list[dict], image_sizes, original_sizes) -> list[dict]:
        """The dialect's: torchvision's (:meth:`DetectorStages.postprocess`), or in the ``centermask2`` dialect
        detectron2's ``detector_postprocess``: boxes scaled to the input image and clipped, empty ones dropped,
        masks pasted into the clipped boxes by ``grid_sample`` and thresholded at 0.5 (``[D, 1, H, W]`` of 0/1)."""
        if self.dialect.postprocess != "detectron2":
            return super().postprocess(detections, image_sizes, original_sizes)
        return detectron2_postprocess(detections, image_sizes, original_sizes)

    # ---- forward --------------------------------------------------------------------------------------------
    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if not self.training:
            return self.infer(images)
        if targets is None or any("masks" not in t for t in targets):
            raise ValueError("CenterMask needs targets with boxes, labels and masks in training mode")
        images, targets = self.transform(images, targets)
        feature_maps = self.backbone(images.tensors)
        features = list(feature_maps.values())
        head_outputs = self.head(features)
        losses = self._fcos_losses(head_outputs, features, images, targets)
        with torch.no_grad():
            detached = {k: v.detach() for k, v in head_outputs.items()}
            detections = self._decode(detached, features, images, TRAIN_DETECTIONS)
        rois, matched = sample_rois(*self._mask_training_rois(targets, detections), self.dialect.mask_rois_per_image)
        losses.update(self._mask_losses(feature_maps, rois, matched, targets, images.image_sizes))
        return losses
