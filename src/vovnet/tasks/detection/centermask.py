"""CenterMask: torchvision's FCOS plus a SAG-Mask branch on its boxes.

Training adds ``loss_mask`` to FCOS's losses: RoIs are the ground-truth boxes plus the (detached) FCOS
detections that overlap a ground-truth box by IoU >= 0.5, each matched to its best ground truth (at most
``mask_detections_per_gt`` of them per ground truth, the best-overlapping first: the mask head's cost
grows with its RoIs, and on a CPU it is most of a training step), and the mask targets and loss are
torchvision's Mask R-CNN ones (``maskrcnn_loss``). At inference the top FCOS
detections get the mask of their class, pasted into the image by torchvision's transform
(``paste_masks_in_image``).

RoIs are pooled from P3..P5 by CenterMask's area rule, ``ceil(5 - log2(image_area / box_area))``, which
sends boxes by their share of the image, not by the FPN paper's absolute canonical size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.roi_heads import maskrcnn_inference, maskrcnn_loss
from torchvision.ops import box_iou, roi_align

from .sag_mask import SAGMaskHead

POSITIVE_IOU = 0.5


def assign_levels_by_area(boxes: Tensor, image_areas: Tensor, min_level: int = 3, max_level: int = 5) -> Tensor:
    """Pyramid level of each box by CenterMask's rule.

    ``level = clamp(ceil(max_level - log2(image_area / box_area)), min_level, max_level)``: a box covering
    the whole image goes to ``max_level``, one of a quarter of it to ``max_level - 2``.

    Args:
        boxes: ``[R, 4]`` x1, y1, x2, y2.
        image_areas: ``[R]`` (or a scalar) area of the image each box lies in.
    Returns:
        ``[R]`` int64 levels in ``[min_level, max_level]``.
    """
    box_areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6)
    levels = torch.ceil(max_level - torch.log2(image_areas / box_areas + 1e-8))
    return levels.clamp(min_level, max_level).to(torch.int64)


class AreaRuleRoIAlign(nn.Module):
    """RoIAlign from the pyramid level chosen by :func:`assign_levels_by_area`.

    Args:
        featmap_names: levels to pool from, e.g. ``["p3", "p4", "p5"]``.
        strides: their strides (8, 16, 32); level ``l`` has stride ``2**l``.
        output_size: side of the pooled features (14 in CenterMask).
        sampling_ratio: RoIAlign samples per bin side.

    ``forward(features, boxes, image_sizes)``: ``{name: [N, C, H_l, W_l]}``, per-image boxes ``[R_i, 4]`` and
    per-image ``(h, w)`` -> ``[sum R_i, C, output_size, output_size]`` in the order of the boxes.
    """

    def __init__(self, featmap_names: list[str], strides: list[int], output_size: int = 14, sampling_ratio: int = 2):
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.levels = [round(math.log2(s)) for s in strides]
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]) -> Tensor:
        first = features[self.featmap_names[0]]
        all_boxes = torch.cat(boxes).to(first.dtype)
        image_index = torch.cat([torch.full((len(b),), i, dtype=first.dtype, device=first.device) for i, b in enumerate(boxes)])
        areas = torch.cat([torch.full((len(b),), float(h * w), device=first.device) for b, (h, w) in zip(boxes, image_sizes)])
        levels = assign_levels_by_area(all_boxes, areas, min(self.levels), max(self.levels))
        rois = torch.cat([image_index[:, None], all_boxes], dim=1)
        out = first.new_zeros((len(rois), first.shape[1], self.output_size, self.output_size))
        for name, level in zip(self.featmap_names, self.levels):
            idx = torch.where(levels == level)[0]
            if len(idx):
                out[idx] = roi_align(
                    features[name], rois[idx], self.output_size, spatial_scale=2.0**-level, sampling_ratio=self.sampling_ratio
                )
        return out


def _best_per_group(index: Tensor, group: Tensor, score: Tensor, k: int) -> Tensor:
    """The entries of ``index`` with the ``k`` highest ``score`` within each ``group`` value."""
    order = torch.argsort(score, descending=True)
    order = order[torch.argsort(group[order], stable=True)]  # by group, best first within each
    sorted_groups = group[order]
    first_of_group = torch.searchsorted(sorted_groups, sorted_groups)  # position of each group's first entry
    rank = torch.arange(len(order), device=index.device) - first_of_group
    return index[order[rank < k]]


class CenterMask(FCOS):
    """FCOS with a SAG-Mask branch (CenterMask without the MaskIoU head).

    Args:
        backbone: an FPN backbone returning p3..p7 (see :func:`~vovnet.tasks.detection.backbone.fpn_backbone`).
        num_classes: classes including background at index 0 (torchvision convention).
        mask_head: a :class:`SAGMaskHead` with ``num_classes`` outputs.
        mask_levels: the levels RoIs are pooled from, with their strides.
        mask_roi_size: pooled RoI side (masks are twice that).
        mask_detections_per_gt: detections per ground-truth box added to the mask head's training RoIs
            (None: every matching detection, as the official code).
        **kwargs: anything :class:`torchvision.models.detection.FCOS` takes (``head``, ``min_size``, ...).

    Input/output as torchvision detectors: a list of ``[3, H, W]`` images (and targets with ``boxes``,
    ``labels``, ``masks`` ``[N, H, W]`` when training) -> losses (``classification``, ``bbox_regression``,
    ``bbox_ctrness``, ``loss_mask``) or per-image dicts with ``boxes``, ``scores``, ``labels`` and
    ``masks`` ``[N, 1, H, W]`` (probabilities).
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
        **kwargs,
    ):
        super().__init__(backbone, num_classes, **kwargs)
        self.mask_detections_per_gt = mask_detections_per_gt
        self.mask_roi_pool = AreaRuleRoIAlign(list(mask_levels), list(mask_levels.values()), mask_roi_size)
        self.mask_head = mask_head

    def _detect(self, head_outputs: dict[str, Tensor], anchors: list[Tensor], level_sizes: list[int], image_sizes) -> list[dict]:
        split_outputs = {k: list(v.split(level_sizes, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(level_sizes)) for a in anchors]
        return self.postprocess_detections(split_outputs, split_anchors, image_sizes)

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

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training and (targets is None or any("masks" not in t for t in targets)):
            raise ValueError("CenterMask needs targets with boxes, labels and masks in training mode")
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        images, targets = self.transform(images, targets)
        feature_maps = self.backbone(images.tensors)
        features = list(feature_maps.values())
        head_outputs = self.head(features)
        anchors = self.anchor_generator(images, features)
        level_sizes = [x.size(2) * x.size(3) for x in features]

        if self.training:
            losses = self.compute_loss(targets, head_outputs, anchors, level_sizes)
            with torch.no_grad():
                detections = self._detect(
                    {k: v.detach() for k, v in head_outputs.items()}, anchors, level_sizes, images.image_sizes
                )
            rois, matched = self._mask_training_rois(targets, detections)
            logits = self.mask_head(self.mask_roi_pool(feature_maps, rois, images.image_sizes))
            losses["loss_mask"] = maskrcnn_loss(
                logits, rois, [t["masks"] for t in targets], [t["labels"] for t in targets], matched
            )
            return losses

        detections = self._detect(head_outputs, anchors, level_sizes, images.image_sizes)
        logits = self.mask_head(self.mask_roi_pool(feature_maps, [d["boxes"] for d in detections], images.image_sizes))
        for det, probs in zip(detections, maskrcnn_inference(logits, [d["labels"] for d in detections])):
            det["masks"] = probs
        return self.transform.postprocess(detections, images.image_sizes, original_sizes)
