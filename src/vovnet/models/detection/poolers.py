"""Pooling RoIs from a feature pyramid, each box from the level a rule assigns it, and the mask targets pooled the
same way: one RoIAlign loop for CenterMask's area rule and detectron2's canonical-size rule.

- :class:`AreaRuleRoIAlign` (CenterMask): ``ceil(max_level - log2(image_area / box_area))``, the unpadded image's
  area and the unclipped box, which sends boxes by their share of the image;
- :class:`LevelRoIAlign` (detectron2's ``ROIPooler`` with ``ROIAlignV2``): ``floor(4 + log2(sqrt(area) / 224))``.

While exporting, every level pools every RoI and each RoI keeps its own level's (no branch on how many RoIs a
level gets, which a trace would freeze).
"""

from __future__ import annotations

import math
import sys

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from ..tracing import exporting

CANONICAL_BOX_SIZE, CANONICAL_LEVEL = 224, 4  # detectron2's ROIPooler defaults (the FPN paper's)


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
    box_areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    levels = torch.ceil(max_level - torch.log2(image_areas / box_areas + sys.float_info.epsilon))  # centermask2's eps
    return levels.clamp(min_level, max_level).to(torch.int64)


def fpn_levels(boxes: Tensor, min_level: int, max_level: int) -> Tensor:
    """detectron2's ``assign_boxes_to_levels``: ``floor(4 + log2(sqrt(area) / 224 + 1e-8))`` clamped to
    ``[min_level, max_level]``. ``[R, 4]`` -> ``[R]`` int64."""
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(CANONICAL_LEVEL + torch.log2(sizes / CANONICAL_BOX_SIZE + 1e-8))
    return levels.clamp(min_level, max_level).to(torch.int64)


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign of each box from the pyramid level :meth:`assign_levels` gives it.

    Args:
        featmap_names: levels to pool from, finest first (``["p3", "p4", "p5"]``).
        strides: their strides; level ``l`` has stride ``2**l``.
        output_size: side of the pooled features.
        sampling_ratio: RoIAlign samples per bin side (0: adaptive, as detectron2).
        aligned: shift boxes by half a pixel (detectron2's ROIAlignV2).

    ``forward(features, boxes, image_sizes)``: ``{name: [N, C, H_l, W_l]}``, per-image boxes ``[R_i, 4]`` and
    per-image ``(h, w)`` (ints, or traced sizes) -> ``[sum R_i, C, output_size, output_size]`` in the order of
    the boxes.
    """

    def __init__(self, featmap_names: list[str], strides: list[int], output_size: int, sampling_ratio: int = 0, aligned: bool = True):
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.levels = [round(math.log2(s)) for s in strides]
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def assign_levels(self, boxes: list[Tensor], all_boxes: Tensor, image_sizes) -> Tensor:
        raise NotImplementedError

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes=None) -> Tensor:
        first = features[self.featmap_names[0]]
        all_boxes = torch.cat(boxes).to(first.dtype)
        image_index = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)]).to(first.dtype)
        rois = torch.cat([image_index, all_boxes], dim=1)
        levels = self.assign_levels(boxes, all_boxes, image_sizes)

        def pool(name: str, level: int, r: Tensor) -> Tensor:
            return roi_align(features[name], r, self.output_size, 2.0**-level, self.sampling_ratio, self.aligned)

        if exporting():
            return torch.stack([pool(n, lvl, rois) * (levels == lvl).to(first.dtype)[:, None, None, None]
                                for n, lvl in zip(self.featmap_names, self.levels)]).sum(0)
        out = first.new_zeros((len(rois), first.shape[1], self.output_size, self.output_size))
        for name, level in zip(self.featmap_names, self.levels):
            idx = torch.where(levels == level)[0]
            if len(idx):
                out[idx] = pool(name, level, rois[idx])
        return out


class AreaRuleRoIAlign(MultiLevelRoIAlign):
    """CenterMask's pooler: levels by :func:`assign_levels_by_area` (14 x 14 RoIs; ``sampling_ratio=2``,
    ``aligned=False`` in our dialect, 0 and True in centermask2's)."""

    def __init__(self, featmap_names: list[str], strides: list[int], output_size: int = 14, sampling_ratio: int = 2,
                 aligned: bool = False):
        super().__init__(featmap_names, strides, output_size, sampling_ratio, aligned)

    def assign_levels(self, boxes: list[Tensor], all_boxes: Tensor, image_sizes) -> Tensor:
        areas = torch.cat([torch.ones_like(b[:, 0], dtype=torch.float32) * (h * w) for b, (h, w) in zip(boxes, image_sizes)])
        return assign_levels_by_area(all_boxes, areas, min(self.levels), max(self.levels))


class LevelRoIAlign(MultiLevelRoIAlign):
    """detectron2's ``ROIPooler`` with ``ROIAlignV2``: levels by :func:`fpn_levels` (``image_sizes`` unused)."""

    def assign_levels(self, boxes: list[Tensor], all_boxes: Tensor, image_sizes) -> Tensor:
        return fpn_levels(all_boxes.float(), min(self.levels), max(self.levels))


def binary_mask_targets(gt_masks: Tensor, rois: Tensor, matched: Tensor, size: int) -> Tensor:
    """detectron2's ``BitMasks.crop_and_resize``: each RoI's ground truth pooled to ``size x size`` with
    ``aligned=True`` and adaptive sampling, then ``>= 0.5``. ``[G, H, W]``, ``[R, 4]``, ``[R]`` -> ``[R, size, size]``."""
    boxes = torch.cat([matched[:, None].to(rois.dtype), rois], dim=1)
    pooled = roi_align(gt_masks[:, None].to(rois.dtype), boxes, size, 1.0, 0, True)[:, 0]
    return pooled >= 0.5
