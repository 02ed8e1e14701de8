"""Panoptic FPN as detectron2 runs it: a Mask R-CNN (``detectron2`` dialect, :mod:`.rcnn_detectron2`) plus a
semantic FPN head, whose maps are combined with the instances into one panoptic map.

- :class:`SemSegFPNHead` (detectron2's ``SemSegFPNHead``, ``Base-Panoptic-FPN.yaml`` with detectron2's defaults):
  per level p2..p5, ``max(1, log2(stride / 4))`` blocks of 3x3 conv (no bias) + GroupNorm(32) + ReLU, each
  followed by a 2x bilinear upsampling (``align_corners=False``) unless the level is p2; the levels summed, a 1x1
  predictor over the stuff classes plus one "things" class (channel 0; 54 on COCO); 128 channels, stride 4.
- Inference (``PanopticFPN.inference``): the logits upsampled 4x (bilinear), cut to the image the network saw and
  resized to the input image (``sem_seg_postprocess``); the instances post-processed as Mask R-CNN's; then
  :func:`combine_panoptic` (``combine_semantic_and_instance_outputs``) on the ``argmax`` of the semantic scores.

- Training (:meth:`PanopticFPN.forward` with targets carrying ``sem_seg``): detectron2's ``PanopticFPN.forward``, below.

Each image's result is Mask R-CNN's (``boxes``, 1-based ``labels``, ``scores``, ``masks [N, 1, H, W]``) plus
``sem_seg`` (``[stuff classes + 1, H, W]`` scores, as detectron2 returns them), ``panoptic_seg`` (``[H, W]`` int32
segment ids, 0 = void) and ``segments_info``: detectron2's list of dicts, one per segment, with ``id``, ``isthing``,
``category_id`` (a thing's 0-based index in ``thing_classes``, i.e. its label - 1; a stuff segment's channel of
``sem_seg``, i.e. its index in ``stuff_classes``), and ``score`` and ``instance_id`` for things, ``area`` for stuff.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tracing import exporting
from .stages import MaskRCNN

COMMON_STRIDE = 4
SEM_SEG_DIMS = 128
GROUPS = 32
IGNORE_VALUE = 255  # the semantic label of void pixels and of the padding (detectron2's SEM_SEG_HEAD.IGNORE_VALUE)


class ConvGNReLU(nn.Conv2d):
    """A 3x3 convolution without bias, GroupNorm and ReLU; ``norm`` is a child of the convolution, as in
    detectron2's ``Conv2d`` (so the state-dict keys are ``weight``, ``norm.weight``, ``norm.bias``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = nn.GroupNorm(GROUPS, out_channels)
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")  # detectron2's c2_msra_fill

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(super().forward(x)))


class SemSegFPNHead(nn.Module):
    """detectron2's ``SemSegFPNHead``.

    Args:
        in_channels: the FPN's width.
        strides: ``{level name: stride}`` of the levels it reads, finest first (p2..p5: 4..32).
        num_classes: output channels (stuff classes + 1; channel 0 is "things").
        conv_dims: width of its convolutions (128).
        common_stride: the stride all levels are brought to (4).

    ``forward(features)``: ``{name: [N, C, H_l, W_l]}`` -> logits ``[N, num_classes, H / common_stride, W / common_stride]``
    (detectron2 upsamples them to the padded image in the head; :class:`PanopticFPN` does that next).
    """

    def __init__(self, in_channels: int, strides: dict[str, int], num_classes: int, conv_dims: int = SEM_SEG_DIMS,
                 common_stride: int = COMMON_STRIDE):
        super().__init__()
        self.common_stride = common_stride
        heads = {}
        for name, stride in strides.items():
            ops: list[nn.Module] = []
            for k in range(max(1, round(math.log2(stride) - math.log2(common_stride)))):
                ops.append(ConvGNReLU(in_channels if k == 0 else conv_dims, conv_dims))
                if stride != common_stride:
                    ops.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            heads[name] = nn.Sequential(*ops)
        self.scale_heads = nn.ModuleDict(heads)
        self.predictor = nn.Conv2d(conv_dims, num_classes, 1)
        nn.init.kaiming_normal_(self.predictor.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.predictor.bias)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = None
        for name, head in self.scale_heads.items():
            y = head(features[name])
            x = y if x is None else x + y
        return self.predictor(x)


def combine_panoptic(masks: Tensor, scores: Tensor, labels: Tensor, semantic: Tensor, num_classes: int, *, overlap_thresh: float = 0.5,
                     stuff_area_thresh: int = 4096, instances_score_thresh: float = 0.5, max_instances: int | None = None) -> tuple[Tensor, Tensor]:
    """detectron2's ``combine_semantic_and_instance_outputs``, in tensor arithmetic (so that a trace exports it).

    Things by descending score, none below ``instances_score_thresh``: an empty mask is skipped, one of which more
    than ``overlap_thresh`` is already taken is skipped, any other takes its free pixels as the next segment. Then
    each stuff class (ascending; channel 0, "things", never) takes its free pixels of ``semantic`` as the next
    segment if they are at least ``stuff_area_thresh``.

    Args:
        masks: ``[D, H, W]`` bool instance masks; ``scores``: ``[D]``; ``labels``: ``[D]`` 1-based.
        semantic: ``[H, W]`` int64, the semantic class of each pixel (``argmax`` of the scores).
        num_classes: the semantic classes (stuff classes + 1).
        max_instances: while exporting, the detections are padded to this many (the trace's loop count).
    Returns:
        ``panoptic_seg [H, W]`` int32 segment ids (0: void) and ``segments [S, 5]`` float32, one row per segment in id
        order: ``id``, ``isthing`` (1 / 0), ``category_id`` (label - 1 for things, the semantic class for stuff),
        the score (things) or the area in pixels (stuff), and the instance's index (-1 for stuff); see
        :func:`segments_info`.
    """
    count = masks.shape[0]
    if exporting() and max_instances is not None:  # a fixed loop count: the detections padded with empty ones
        masks = torch.cat([masks, masks.new_zeros((max_instances, *masks.shape[1:]))])[:max_instances]
        scores = torch.cat([scores, scores.new_full((max_instances,), -1.0)])[:max_instances]
        labels = torch.cat([labels, labels.new_zeros((max_instances,))])[:max_instances]
        count = max_instances
    panoptic = torch.zeros_like(semantic, dtype=torch.int32)
    next_id = torch.zeros((), dtype=torch.int32, device=semantic.device)
    order = torch.argsort(-scores)
    taken_ids = torch.zeros_like(scores, dtype=torch.int32)
    for k in range(count):
        i = order[k]
        mask = masks[i]
        area = mask.sum()
        overlap = (mask & (panoptic > 0)).sum()
        # in float64, as detectron2's Python division of the two counts
        keep = (scores[i] >= instances_score_thresh) & (area > 0) & (overlap.double() / area.clamp(min=1).double() <= overlap_thresh)
        next_id = next_id + keep.to(torch.int32)
        panoptic = torch.where(keep & mask & (panoptic == 0), next_id, panoptic)
        taken_ids = taken_ids.index_put((i[None],), torch.where(keep, next_id, 0)[None])
    things = order[taken_ids[order] > 0]  # the kept instances, in id order
    thing_rows = torch.stack([taken_ids[things].float(), torch.ones_like(things, dtype=torch.float32),
                              (labels[things] - 1).float(), scores[things].float(), things.float()], dim=1)
    free = (panoptic == 0).flatten().to(torch.int64)
    areas = torch.zeros(num_classes, dtype=torch.int64, device=semantic.device).scatter_add(0, semantic.flatten(), free)
    classes = torch.arange(num_classes, device=semantic.device)
    keep_stuff = (areas >= stuff_area_thresh) & (classes > 0)
    stuff_ids = next_id + torch.cumsum(keep_stuff.to(torch.int32), 0).to(torch.int32)
    panoptic = torch.where((panoptic == 0) & keep_stuff[semantic], stuff_ids[semantic], panoptic)
    stuff = classes[keep_stuff]
    stuff_rows = torch.stack([stuff_ids[stuff].float(), torch.zeros_like(stuff, dtype=torch.float32), stuff.float(),
                              areas[stuff].float(), torch.full_like(stuff, -1, dtype=torch.float32)], dim=1)
    return panoptic, torch.cat([thing_rows, stuff_rows])


def segments_info(segments: Tensor) -> list[dict]:
    """detectron2's ``segments_info`` from :func:`combine_panoptic`'s ``segments``: per segment ``id``, ``isthing``,
    ``category_id``, and ``score`` and ``instance_id`` for things, ``area`` for stuff."""
    info = []
    for sid, isthing, category, value, instance in segments.tolist():
        if isthing:
            info.append({"id": int(sid), "isthing": True, "score": value, "category_id": int(category), "instance_id": int(instance)})
        else:
            info.append({"id": int(sid), "isthing": False, "category_id": int(category), "area": int(value)})
    return info


class PanopticFPN(MaskRCNN):
    """A Mask R-CNN (built from its parts, see :class:`~.stages.RCNNStages`) with detectron2's semantic FPN head and
    panoptic combination (see the module docstring).

    Args:
        backbone, rpn, roi_heads, transform: the Mask R-CNN's parts.
        sem_seg_head: the :class:`SemSegFPNHead`.
        stuff_classes: the names of its channels, ``"things"`` first.
        dialect: the R-CNN's dialect (``detectron2``).

    Training, as detectron2's ``PanopticFPN.forward`` (``modeling/meta_arch/panoptic_fpn.py``), when the targets
    carry a semantic target ``sem_seg [H, W]`` (COCO panoptic data, :mod:`vovnet.data.panoptic`: stuff 1..S, things 0,
    void 255): the RPN's losses, the RoI heads' losses times ``instance_loss_weight`` and ``loss_sem_seg``, the
    semantic head's (``SemSegFPNHead.losses`` in ``semantic_seg.py``): its logits upsampled x``common_stride``
    (bilinear, ``align_corners=False``) against the targets resized with the image and padded with 255 to the
    batch's padded size (:func:`semantic_targets`), ``F.cross_entropy`` with ``ignore_index=255``, mean
    (:func:`semantic_loss`), times ``sem_seg_loss_weight``. The weights are attributes:
    ``sem_seg_loss_weight`` 0.5 (``SEM_SEG_HEAD.LOSS_WEIGHT`` of vovnet-detectron2's ``configs/Base-Panoptic-FPN.yaml``,
    as detectron2's ``configs/common/models/panoptic_fpn.py``; detectron2's default is 1.0), ``instance_loss_weight`` 1.0
    (``PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT``, detectron2's ``config/defaults.py``). With targets without ``sem_seg``
    (instance annotations) training computes the Mask R-CNN's losses alone and the semantic head gets no gradient.

    The combination's thresholds are attributes, as detectron2's ``PANOPTIC_FPN.COMBINE`` settings:
    ``combine_overlap_thresh`` (0.5), ``combine_stuff_area_thresh`` (4096 pixels of the input image),
    ``combine_instances_score_thresh`` (0.5).
    """

    extra_outputs = ("sem_seg", "panoptic_seg", "segments")
    combine_overlap_thresh = 0.5
    combine_stuff_area_thresh = 4096
    combine_instances_score_thresh = 0.5
    sem_seg_loss_weight = 0.5
    instance_loss_weight = 1.0

    def __init__(self, backbone: nn.Module, *, rpn: nn.Module, roi_heads: nn.Module, transform: nn.Module,
                 sem_seg_head: SemSegFPNHead, stuff_classes: tuple[str, ...], dialect: str = "detectron2"):
        super().__init__(backbone, rpn=rpn, roi_heads=roi_heads, transform=transform, dialect=dialect)
        self.sem_seg_head = sem_seg_head
        self.stuff_classes = tuple(stuff_classes)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training and targets and "sem_seg" in targets[0]:
            return self.panoptic_losses(images, targets)
        return super().forward(images, targets)

    def panoptic_losses(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The training losses with semantic targets (class docstring): ``loss_objectness``, ``loss_rpn_box_reg``,
        the RoI heads' ``loss_classifier``, ``loss_box_reg``, ``loss_mask`` and ``loss_sem_seg``."""
        batch, targets = self.transform(images, targets)
        features = self.features(batch.tensors)
        proposals, proposal_losses = self.rpn(batch, features, targets)
        _, detector_losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
        logits = self.semantic_logits(features)
        sem_targets = semantic_targets([t["sem_seg"] for t in targets], batch.image_sizes, tuple(logits.shape[-2:]))
        return {
            **proposal_losses,
            **{k: v * self.instance_loss_weight for k, v in detector_losses.items()},
            "loss_sem_seg": semantic_loss(logits, sem_targets) * self.sem_seg_loss_weight,
        }

    def semantic_logits(self, features: OrderedDict[str, Tensor]) -> Tensor:
        """The semantic head's logits at the padded batch's size, ``[N, stuff classes + 1, H, W]`` (fp32)."""
        with self.autocast(next(iter(features.values())).device):
            logits = self.sem_seg_head(features)
        stride = self.sem_seg_head.common_stride
        return F.interpolate(logits.float(), scale_factor=stride, mode="bilinear", align_corners=False)

    def predict_panoptic(self, features: OrderedDict[str, Tensor], results: list[dict], image_sizes, original_sizes) -> None:
        """Adds ``sem_seg``, ``panoptic_seg`` and ``segments_info`` to each image's results (module docstring)."""
        logits = self.semantic_logits(features)
        for res, (h, w), (out_h, out_w), sem in zip(results, image_sizes, original_sizes, logits):
            sem = F.interpolate(sem[None, :, :h, :w], size=(out_h, out_w), mode="bilinear", align_corners=False)[0]
            res["sem_seg"] = sem
            res["panoptic_seg"], res["segments"] = combine_panoptic(
                res["masks"][:, 0] >= 0.5, res["scores"], res["labels"], sem.argmax(dim=0), sem.shape[0],
                overlap_thresh=self.combine_overlap_thresh, stuff_area_thresh=self.combine_stuff_area_thresh,
                instances_score_thresh=self.combine_instances_score_thresh, max_instances=self.roi_heads.detections_per_img,
            )
            if not exporting():
                res["segments_info"] = segments_info(res["segments"])


def semantic_targets(targets: list[Tensor], image_sizes: list[tuple[int, int]], padded_size: tuple[int, int]) -> Tensor:
    """Each image's semantic target ``[H, W]`` resized (nearest) to the size the network saw it at and padded with
    :data:`IGNORE_VALUE` to the batch's padded size, as detectron2 batches them -> ``[N, H_pad, W_pad]`` int64."""
    out = targets[0].new_full((len(targets), *padded_size), IGNORE_VALUE, dtype=torch.int64)
    for k, (target, (h, w)) in enumerate(zip(targets, image_sizes)):
        resized = F.interpolate(target[None, None].float(), size=(h, w), mode="nearest")[0, 0]
        out[k, :h, :w] = resized.to(torch.int64)
    return out


def semantic_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """detectron2's ``SemSegFPNHead.losses`` before its weight: the cross-entropy of ``logits [N, C, H, W]`` (already
    upsampled to the padded batch) against ``targets [N, H, W]``, averaged over the pixels not :data:`IGNORE_VALUE`.
    Where every pixel is ignored it is 0, not ``F.cross_entropy``'s nan, and it asks the host nothing."""
    total = F.cross_entropy(logits, targets, ignore_index=IGNORE_VALUE, reduction="sum")
    return total / (targets != IGNORE_VALUE).sum().clamp(min=1)


__all__ = ["ConvGNReLU", "IGNORE_VALUE", "PanopticFPN", "SemSegFPNHead", "combine_panoptic", "segments_info",
           "semantic_loss", "semantic_targets"]
