"""FCOS as the official CenterMask code (centermask2's ``fcos.py`` and ``fcos_outputs.py``) runs it.

These are the pieces of the ``centermask2`` dialect of :class:`~vovnet.models.detection.centermask.CenterMask`
that differ from torchvision's FCOS:

- the regression head multiplies each level's output by a learnable scale before the ReLU
  (:class:`ScaledFCOSHead`), so a distance is ``relu(scale_l * x) * stride_l`` pixels;
- a level's points sit at ``k * stride + stride // 2`` (:func:`fcos_points`), not at ``k * stride``;
- candidates are the (point, class) pairs whose class probability alone exceeds the threshold, the 1000
  best of them per level by ``cls * ctr``, scored ``sqrt(cls * ctr)``, boxes left unclipped, class-wise
  NMS over all levels, then at most ``max_detections`` kept by a k-th value cut (:func:`select_detections`);
- training targets use the fixed size ranges ``[-1, 64, 128, 256, 512, inf]`` and center sampling with
  radius 1.5 strides, and the losses are focal loss over the foreground classes, a GIoU loss weighted by
  the centerness targets and a centerness BCE (:func:`fcos_losses`).

Class logits here cover the foreground classes only (no background channel): channel ``c`` is label
``c + 1`` in torchvision's numbering.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import _topk_min
from torchvision.models.detection.fcos import FCOSHead, FCOSRegressionHead
from torchvision.ops import batched_nms, sigmoid_focal_loss

# centermask2's defaults (MODEL.FCOS.*): the object sizes each level learns, and the sampling radius.
SIZES_OF_INTEREST = (64, 128, 256, 512)
CENTER_RADIUS = 1.5
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
INF = 1e8


class ScaledRegressionHead(FCOSRegressionHead):
    """torchvision's FCOS regression head with one learnable scale per level: ``relu(scale_l * bbox_reg(x))``.

    ``forward``: list of ``[N, C, H_l, W_l]`` -> ``([N, sum H_l W_l, 4], [N, sum H_l W_l, 1])`` (distances in
    strides, centerness logits), as torchvision's head.
    """

    def __init__(self, in_channels: int, num_convs: int, num_levels: int):
        super().__init__(in_channels, 1, num_convs=num_convs)
        self.scales = nn.ParameterList([nn.Parameter(torch.ones(1)) for _ in range(num_levels)])

    def forward(self, x: list[Tensor]) -> tuple[Tensor, Tensor]:
        regressions, ctrness = [], []
        for scale, features in zip(self.scales, x):
            tower = self.conv(features)
            reg = F.relu(self.bbox_reg(tower) * scale)
            regressions.append(reg.flatten(2).transpose(1, 2))  # [N, 4, H, W] -> [N, HW, 4]
            ctrness.append(self.bbox_ctrness(tower).flatten(2).transpose(1, 2))
        return torch.cat(regressions, dim=1), torch.cat(ctrness, dim=1)


class ScaledFCOSHead(FCOSHead):
    """torchvision's :class:`FCOSHead` (GN towers, ``cls_logits``; ``bbox_reg`` and ``bbox_ctrness`` on the box
    tower) with :class:`ScaledRegressionHead`; centermask2's ``FCOSHead`` has the same layers.

    Args:
        in_channels: FPN width.
        num_classes: class logits (centermask2: the foreground classes only).
        num_convs: convs per tower (4; 2 in CenterMask-Lite).
        num_levels: pyramid levels, one scale each.
    """

    def __init__(self, in_channels: int, num_classes: int, num_convs: int, num_levels: int):
        super().__init__(in_channels, 1, num_classes, num_convs=num_convs)
        self.regression_head = ScaledRegressionHead(in_channels, num_convs, num_levels)


def fcos_points(level_shapes: list[tuple[int, int]], strides: list[int], device=None) -> list[Tensor]:
    """The points of each level, ``[H_l * W_l, 2]`` (x, y) in row-major order: ``(k * s + s // 2)``."""
    points = []
    for (h, w), s in zip(level_shapes, strides):
        xs = torch.arange(0, w * s, s, dtype=torch.float32, device=device)
        ys = torch.arange(0, h * s, s, dtype=torch.float32, device=device)
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([x.reshape(-1), y.reshape(-1)], dim=1) + s // 2)
    return points


def select_detections(
    head_outputs: dict[str, Tensor],
    points: list[Tensor],
    strides: list[int],
    *,
    score_thresh: float,
    topk_candidates: int,
    nms_thresh: float,
    max_detections: int,
) -> list[dict[str, Tensor]]:
    """centermask2's ``predict_proposals``: per image ``boxes`` ``[D, 4]`` (unclipped), ``scores`` and 1-based
    ``labels``, best first.

    Args:
        head_outputs: ``cls_logits`` ``[N, P, K]`` (foreground classes), ``bbox_regression`` ``[N, P, 4]`` (in
            strides), ``bbox_ctrness`` ``[N, P, 1]``, with ``P`` the points of all levels in order.
        points: per level ``[P_l, 2]`` from :func:`fcos_points`.
        strides: per level.
        score_thresh: a (point, class) is a candidate when its class probability exceeds this.
        topk_candidates: candidates kept per level, by ``cls * ctr``.
        nms_thresh: IoU of class-wise NMS over all levels.
        max_detections: detections kept per image (by score; ties at the cut are all kept, as the
            official k-th value cut does); 0 or less keeps all.
    """
    sizes = [p.shape[0] for p in points]  # ints, or traced sizes that an export keeps dynamic
    cls_levels = head_outputs["cls_logits"].split(sizes, dim=1)
    reg_levels = head_outputs["bbox_regression"].split(sizes, dim=1)
    ctr_levels = head_outputs["bbox_ctrness"].split(sizes, dim=1)
    results = []
    for i in range(head_outputs["cls_logits"].shape[0]):
        boxes, scores, labels = [], [], []
        for cls, reg, ctr, pts, stride in zip(cls_levels, reg_levels, ctr_levels, points, strides):
            prob = cls[i].sigmoid()
            candidates = (prob > score_thresh).flatten()
            # The best topk_candidates of the candidates: non-candidates score -1 (below any candidate's
            # cls * ctr) in a top-k of fixed rank, so that no tensor is sized by a count in Python.
            score = torch.where(candidates, (prob * ctr[i, :, 0].sigmoid()[:, None]).flatten(), -1.0)
            top = score.topk(_topk_min(score, topk_candidates, 0)).indices
            top = top[candidates[top]].sort().values  # in (point, class) order, as centermask2's nonzero()
            where, klass = top.div(prob.shape[1], rounding_mode="floor"), top % prob.shape[1]
            dist = reg[i][where] * stride
            p = pts[where]
            boxes.append(torch.cat([p - dist[:, :2], p + dist[:, 2:]], dim=1))
            scores.append(score[top].sqrt())
            labels.append(klass + 1)
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        keep = batched_nms(boxes.float(), scores, labels, nms_thresh)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        if max_detections > 0:
            # centermask2's k-th value cut: scores at least the max_detections-th best (all of them when fewer)
            cut = scores.topk(_topk_min(scores, max_detections, 0)).values[-1:]
            keep = scores >= cut
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        results.append({"boxes": boxes, "scores": scores, "labels": labels})
    return results


def _center_region(gt: Tensor, points: Tensor, point_strides: Tensor, radius: float) -> Tensor:
    """``[P, G]``: the point lies within ``radius`` strides of the box centre and inside the box."""
    centre = (gt[:, :2] + gt[:, 2:]) / 2
    reach = (point_strides * radius)[:, None, None]
    low = torch.maximum(centre[None] - reach, gt[None, :, :2])
    high = torch.minimum(centre[None] + reach, gt[None, :, 2:])
    inside = torch.cat([points[:, None] - low, high - points[:, None]], dim=2)
    return inside.min(dim=2).values > 0


def fcos_targets(
    points: list[Tensor], strides: list[int], boxes: Tensor, labels: Tensor, *, center_sampling: bool = True
) -> tuple[Tensor, Tensor]:
    """centermask2's ``compute_targets_for_locations`` for one image.

    Each point takes the smallest box that contains it (within 1.5 strides of its centre, with center
    sampling) and whose largest side distance lies in the point's level range.

    Args:
        points, strides: per level, as :func:`select_detections`.
        boxes: ``[G, 4]`` ground-truth boxes; labels: ``[G]`` 1-based.
    Returns:
        ``(labels [P], distances [P, 4])``: 1-based labels with 0 for background, and (l, t, r, b) in strides.
    """
    all_points = torch.cat(points)
    point_strides = torch.cat([torch.full((len(p),), float(s), device=p.device) for p, s in zip(points, strides)])
    if len(boxes) == 0:
        return labels.new_zeros(len(all_points)), all_points.new_zeros((len(all_points), 4))
    bounds = (-1.0, *SIZES_OF_INTEREST, INF)
    low = torch.cat([torch.full((len(p),), bounds[k], device=p.device) for k, p in enumerate(points)])
    high = torch.cat([torch.full((len(p),), bounds[k + 1], device=p.device) for k, p in enumerate(points)])
    boxes = boxes.to(all_points.dtype)
    dist = torch.cat([all_points[:, None] - boxes[None, :, :2], boxes[None, :, 2:] - all_points[:, None]], dim=2)
    inside = _center_region(boxes, all_points, point_strides, CENTER_RADIUS) if center_sampling else dist.min(dim=2).values > 0
    largest = dist.max(dim=2).values
    cared = (largest >= low[:, None]) & (largest <= high[:, None])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    point_area = area[None].repeat(len(all_points), 1)
    point_area[~inside] = INF
    point_area[~cared] = INF
    min_area, gt_index = point_area.min(dim=1)
    point_labels = labels[gt_index].clone()
    point_labels[min_area == INF] = 0
    distances = dist[torch.arange(len(all_points), device=dist.device), gt_index] / point_strides[:, None]
    return point_labels, distances


def _giou_loss(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """centermask2's ``IOULoss("giou")`` on (l, t, r, b) distances from one point (``+1`` smoothed IoU)."""
    pred_area = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    target_area = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    w_inter = torch.minimum(pred[:, 0], target[:, 0]) + torch.minimum(pred[:, 2], target[:, 2])
    h_inter = torch.minimum(pred[:, 1], target[:, 1]) + torch.minimum(pred[:, 3], target[:, 3])
    w_hull = torch.maximum(pred[:, 0], target[:, 0]) + torch.maximum(pred[:, 2], target[:, 2])
    h_hull = torch.maximum(pred[:, 1], target[:, 1]) + torch.maximum(pred[:, 3], target[:, 3])
    hull = w_hull * h_hull
    inter = w_inter * h_inter
    union = target_area + pred_area - inter
    iou = (inter + 1.0) / (union + 1.0)
    giou = iou - (hull - union) / hull
    return ((1 - giou) * weight).sum()


def centerness_targets(distances: Tensor) -> Tensor:
    """``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` of ``[P, 4]`` (l, t, r, b)."""
    lr, tb = distances[:, [0, 2]], distances[:, [1, 3]]
    ratio = (lr.min(dim=1).values / lr.max(dim=1).values) * (tb.min(dim=1).values / tb.max(dim=1).values)
    return ratio.sqrt()


def fcos_losses(head_outputs: dict[str, Tensor], points: list[Tensor], strides: list[int], targets: list[dict]) -> dict[str, Tensor]:
    """centermask2's ``fcos_losses`` (names as torchvision's FCOS): ``classification`` (sigmoid focal loss over
    the foreground classes / positives), ``bbox_regression`` (GIoU weighted by the centerness targets / their
    sum), ``bbox_ctrness`` (BCE / positives).

    The positive counts are this process's: the official code averages them over GPUs, which differs only
    when the processes' counts differ.
    """
    cls_logits = head_outputs["cls_logits"]
    per_image = [fcos_targets(points, strides, t["boxes"], t["labels"]) for t in targets]
    labels = torch.cat([lab for lab, _ in per_image])
    distances = torch.cat([d for _, d in per_image])
    logits = cls_logits.reshape(-1, cls_logits.shape[-1])
    reg = head_outputs["bbox_regression"].reshape(-1, 4)
    ctr = head_outputs["bbox_ctrness"].reshape(-1)
    positive = torch.where(labels > 0)[0]
    num_pos = max(float(len(positive)), 1.0)
    onehot = torch.zeros_like(logits)
    onehot[positive, labels[positive] - 1] = 1.0
    cls_loss = sigmoid_focal_loss(logits, onehot, alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA, reduction="sum") / num_pos
    ctr_target = centerness_targets(distances[positive])
    ctr_norm = max(float(ctr_target.sum()), 1e-6)
    reg_loss = _giou_loss(reg[positive], distances[positive], ctr_target) / ctr_norm
    ctr_loss = F.binary_cross_entropy_with_logits(ctr[positive], ctr_target, reduction="sum") / num_pos
    return {"classification": cls_loss, "bbox_regression": reg_loss, "bbox_ctrness": ctr_loss}
