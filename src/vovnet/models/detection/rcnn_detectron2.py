"""Faster and Mask R-CNN as detectron2 runs them: the ``detectron2`` dialect of
:class:`~vovnet.models.detection.stages.FasterRCNN` and :class:`~vovnet.models.detection.stages.MaskRCNN`.

vovnet-detectron2 trains detectron2's ``GeneralizedRCNN`` with ``StandardROIHeads`` (``Base-RCNN-VoVNet-FPN.yaml``).
The network is torchvision's (an FPN on stages 2-5 with a max-pooled p6, the RPN head, the two-FC box head, the
four-conv mask head); the parts here change what it computes where detectron2 differs from torchvision:

- input (:class:`~.transform.DetectorTransform`, ``resize_rule="detectron2"``): BGR 0..255 minus detectron2's
  pixel means, short side 800 and long side at most 1333 (ResizeShortestEdge), zero-padded to a multiple of 32;
- :class:`AnchorGenerator`: cell anchors of area ``size**2`` and ratio ``h / w``, not rounded (torchvision rounds
  them to whole pixels), at offset 0, on each level's nominal stride (torchvision divides the padded image size by
  the map size, which gives p6 of an odd p5 a smaller stride);
- :class:`ProposalNetwork`: per level the 1000 anchors with the highest objectness logit; their boxes clipped, those
  of zero width or height dropped (torchvision: under 1e-3 px), NMS 0.7 within each level on the logits
  (torchvision: on their sigmoid, which ties above a logit of ~17), the best 1000 per image (while training too);
- :class:`LevelRoIAlign`: ROIAlignV2 (``aligned=True``, adaptive sampling), level ``floor(4 + log2(sqrt(area) / 224
  + 1e-8))`` clamped to p2..p5 (torchvision's pooler: not aligned, two samples per bin, its epsilon outside the log);
- :class:`BoxPredictor`: the classifier's background column LAST, box regression for the foreground classes only;
- :class:`RoIHeads`: box deltas decoded with weights (10, 10, 5, 5) and clipped, scores ``> 0.05``, no small-box
  removal (torchvision drops boxes under 1e-2 px), class-wise NMS 0.5, the best 100; a mask predictor with one
  channel per foreground class;
- post-processing (:func:`~.stages.detectron2_postprocess`): boxes scaled to the input image and clipped, empty ones
  dropped, masks pasted by ``grid_sample`` into the clipped boxes and thresholded at 0.5.

Training keeps torchvision's anchor matching (IoU 0.3 / 0.7), RoI matching (0.5), sampling (RPN: 256 anchors per image,
half positive at most; RoI heads: 512 per image, a quarter positive at most) and ground truths added to the
proposals, which are detectron2's too, with detectron2's losses (``rpn.py``, ``fast_rcnn.py``, ``mask_head.py``):
the RPN's objectness cross-entropy and L1 box loss (``SMOOTH_L1_BETA`` 0) summed and divided by 256 x images; the
box head's cross-entropy with the background last and its L1 loss on the foreground's class-specific deltas, divided
by all sampled RoIs; the mask loss on the foreground class's channel against targets pooled with ``aligned=True``
and binarised at 0.5 (detectron2's ``crop_and_resize`` of bitmasks). The loss names stay torchvision's.

Everything else (the FPN's nearest top-down upsampling, RPN and box decoding with the clamp ``log(1000 / 16)``,
the flatten order of the box head, softmax scores) is the same arithmetic in both libraries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.models.detection.roi_heads import RoIHeads as TorchvisionRoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import batched_nms, clip_boxes_to_image

from .poolers import LevelRoIAlign, binary_mask_targets, fpn_levels

# detectron2's defaults as Base-RCNN-VoVNet-FPN.yaml leaves them (config/defaults.py)
ANCHOR_SIZES = (32, 64, 128, 256, 512)  # one per level, p2..p6
ANCHOR_RATIOS = (0.5, 1.0, 2.0)
RPN_NMS_THRESH = 0.7
RPN_PRE_NMS_TOPK = {"training": 2000, "testing": 1000}  # per level
RPN_POST_NMS_TOPK = {"training": 1000, "testing": 1000}  # per image
BOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


@dataclass(frozen=True)
class RCNNDialect:
    """The settings in which an R-CNN dialect differs (see the module docstring for each of detectron2's).

    Attributes:
        input_format: a key of :data:`~vovnet.models.input_format.INPUT_FORMATS`.
        resize_rule: ``torchvision`` or ``detectron2`` (see :mod:`.transform`).
        background_last: the box classifier's background column is its last (detectron2), not its first, and
            box regression and masks have channels for the foreground classes only.
    """

    input_format: str
    resize_rule: str
    background_last: bool


DIALECTS = {
    "torchvision": RCNNDialect("rgb", "torchvision", False),
    "detectron2": RCNNDialect("bgr255", "detectron2", True),
}


def cell_anchors(sizes: tuple[float, ...], aspect_ratios: tuple[float, ...]) -> Tensor:
    """detectron2's ``generate_cell_anchors``: ``[len(sizes) * len(aspect_ratios), 4]`` float32 boxes centred on 0,
    size-major, ``w = sqrt(size**2 / ratio)``, ``h = ratio * w``, in Python floats and not rounded."""
    cells = []
    for size in sizes:
        for ratio in aspect_ratios:
            w = math.sqrt(size**2.0 / ratio)
            h = ratio * w
            cells.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(cells)


class AnchorGenerator(TorchvisionAnchorGenerator):
    """detectron2's ``DefaultAnchorGenerator`` on torchvision's grid: per level one anchor per ``(size, ratio)``,
    ``w = sqrt(size**2 / ratio)``, ``h = ratio * w``, centred on the cell's corner (offset 0), NOT rounded, every
    ``stride`` pixels.

    Args:
        sizes: per level, the anchor sizes (sqrt of the area).
        aspect_ratios: per level, the ratios ``h / w``.
        strides: per level, its stride in pixels.

    ``forward(images, feature_maps)`` -> per image ``[sum_l H_l * W_l * A, 4]`` anchors (float32), location-major.
    """

    def __init__(self, sizes: tuple[tuple[float, ...], ...], aspect_ratios: tuple[tuple[float, ...], ...], strides: tuple[int, ...]):
        super().__init__(sizes, aspect_ratios)
        self.strides = tuple(int(s) for s in strides)

    def generate_anchors(self, scales, aspect_ratios, dtype: torch.dtype = torch.float32, device: torch.device = torch.device("cpu")) -> Tensor:
        return cell_anchors(tuple(scales), tuple(aspect_ratios)).to(dtype=dtype, device=device)

    def forward(self, image_list, feature_maps: list[Tensor]) -> list[Tensor]:
        device = feature_maps[0].device
        self.set_cell_anchors(torch.float32, device)
        grid_sizes = [f.shape[-2:] for f in feature_maps]
        strides = [[torch.tensor(s, device=device), torch.tensor(s, device=device)] for s in self.strides]
        levels = self.grid_anchors(grid_sizes, strides)
        return [torch.cat(levels) for _ in image_list.image_sizes]


class ProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN (head, anchor matching, losses) selecting its proposals as detectron2's
    ``find_top_rpn_proposals``: per level the ``pre_nms_top_n`` highest logits; per image the boxes clipped, those
    of zero width or height (or not finite) dropped, NMS within each level on the logits, the best
    ``post_nms_top_n``. Returns the proposals and their logits."""

    def compute_loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor],
                     regression_targets: list[Tensor]) -> tuple[Tensor, Tensor]:
        """detectron2's RPN losses on the sampled anchors: objectness cross-entropy and L1 box loss (smooth L1 with
        beta 0), each summed and divided by ``batch_size_per_image * images``."""
        positive, negative = self.fg_bg_sampler(labels)
        positive = torch.where(torch.cat(positive))[0]
        sampled = torch.cat([positive, torch.where(torch.cat(negative))[0]])
        normalizer = self.fg_bg_sampler.batch_size_per_image * len(labels)
        labels, targets = torch.cat(labels), torch.cat(regression_targets)
        box_loss = F.l1_loss(pred_bbox_deltas[positive], targets[positive], reduction="sum") / normalizer
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled], reduction="sum") / normalizer
        return objectness_loss, box_loss

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]],
                         num_anchors_per_level: list[int]) -> tuple[list[Tensor], list[Tensor]]:
        num_images = proposals.shape[0]
        objectness = objectness.detach().reshape(num_images, -1)
        levels = torch.cat([torch.full((n,), i, dtype=torch.int64, device=proposals.device) for i, n in enumerate(num_anchors_per_level)])
        top = self._get_top_n_idx(objectness, num_anchors_per_level)
        rows = torch.arange(num_images, device=proposals.device)[:, None]
        logits, boxes, levels = objectness[rows, top], proposals[rows, top], levels[top]
        final_boxes, final_scores = [], []
        for b, s, lvl, size in zip(boxes, logits, levels, image_shapes):
            b = clip_boxes_to_image(b, size)
            keep = torch.isfinite(b).all(dim=1) & torch.isfinite(s) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            b, s, lvl = b[keep], s[keep], lvl[keep]
            keep = batched_nms(b, s, lvl, self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(b[keep])
            final_scores.append(s[keep])
        return final_boxes, final_scores


class BoxPredictor(nn.Module):
    """detectron2's ``FastRCNNOutputLayers``: class logits ``[R, K + 1]`` with the background LAST and class-specific
    box deltas ``[R, 4K]`` for the ``K`` foreground classes. ``num_classes`` counts the background (``K + 1``)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4 * (num_classes - 1))
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(TorchvisionRoIHeads):
    """torchvision's RoI heads on a :class:`BoxPredictor` (background last), decoding as detectron2's
    ``fast_rcnn_inference``: per image the boxes of every foreground class clipped, ``score > score_thresh``, no
    small-box removal, class-wise NMS, the best ``detections_per_img``; labels are 1-based (column ``k`` is
    label ``k + 1``). Training: torchvision's matching and sampling, detectron2's losses (module docstring)."""

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None):
        if not self.training:  # inference runs the detector's stages (stages.RCNNStages.detect)
            raise RuntimeError("RoIHeads.forward computes training losses; inference runs the detector's stages")
        if targets is None or (self.has_mask() and any("masks" not in t for t in targets)):
            raise ValueError("training needs targets with boxes, labels (and masks for a mask head)")
        proposals, matched, labels, regression_targets = self.select_training_samples(proposals, targets)
        class_logits, deltas = self.box_predictor(self.box_head(self.box_roi_pool(features, proposals, image_shapes)))
        losses = box_losses(class_logits, deltas, torch.cat(labels), torch.cat(regression_targets))
        if self.has_mask():
            positive = [torch.where(lab > 0)[0] for lab in labels]
            rois = [p[i] for p, i in zip(proposals, positive)]
            logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, rois, image_shapes)))
            gt = [binary_mask_targets(t["masks"], r, m[i], logits.shape[-1]) for t, r, m, i in zip(targets, rois, matched, positive)]
            channels = torch.cat([lab[i] for lab, i in zip(labels, positive)]) - 1  # foreground channels only
            selected = logits[torch.arange(len(channels), device=logits.device), channels]
            losses["loss_mask"] = (F.binary_cross_entropy_with_logits(selected, torch.cat(gt).to(selected.dtype))
                                   if len(channels) else logits.sum() * 0)
        return [], losses

    def postprocess_detections(self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor],
                               image_shapes: list[tuple[int, int]]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        counts = [p.shape[0] for p in proposals]  # not len(): traced, the sizes stay dynamic
        pred_boxes = self.box_coder.decode(box_regression, proposals)  # [R, K, 4]
        pred_scores = F.softmax(class_logits, -1)[:, :-1]  # the background column is the last
        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, size in zip(pred_boxes.split(counts), pred_scores.split(counts), image_shapes):
            boxes = clip_boxes_to_image(boxes, size).reshape(-1, 4)
            labels = torch.arange(1, scores.shape[1] + 1, device=scores.device).expand_as(scores).reshape(-1)
            scores = scores.reshape(-1)  # proposal-major, as detectron2's boolean mask over [R, K]
            inds = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
        return all_boxes, all_scores, all_labels


def box_losses(class_logits: Tensor, deltas: Tensor, labels: Tensor, regression_targets: Tensor) -> dict[str, Tensor]:
    """detectron2's ``FastRCNNOutputLayers.losses``: cross-entropy over ``[R, K + 1]`` logits with the background
    the last class, and the L1 loss (smooth L1, beta 0) of the foreground RoIs' deltas for their class, summed and
    divided by all ``R`` RoIs. ``labels``: torchvision's (0 background, 1..K); ``regression_targets``: ``[R, 4]``."""
    num_classes = class_logits.shape[1] - 1
    foreground = torch.where(labels > 0)[0]
    loss_cls = F.cross_entropy(class_logits, torch.where(labels > 0, labels - 1, num_classes))
    picked = deltas.reshape(len(labels), num_classes, 4)[foreground, labels[foreground] - 1]
    loss_box = F.l1_loss(picked, regression_targets[foreground], reduction="sum") / max(labels.numel(), 1)
    return {"loss_classifier": loss_cls, "loss_box_reg": loss_box}


__all__ = [
    "ANCHOR_RATIOS", "ANCHOR_SIZES", "AnchorGenerator", "BoxPredictor", "DIALECTS", "cell_anchors", "LevelRoIAlign", "ProposalNetwork",
    "RCNNDialect", "RoIHeads", "box_losses", "fpn_levels",
]
