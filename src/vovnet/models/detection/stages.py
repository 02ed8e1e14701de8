"""The one inference path of every detector: public stages that the eval forward, ``vovnet.deploy`` and the
ONNX export all run.

``model.infer(images)`` (what ``model(images)`` does in eval mode) goes through

1. ``transform`` (the model's :class:`~vovnet.models.detection.transform.DetectorTransform`): input format,
   resizing, batching and padding;
2. :meth:`DetectorStages.features`: the backbone and FPN;
3. ``detect``: the family's own heads and decoding (RPN and box head for the R-CNNs, the dense head for FCOS,
   RetinaNet and CenterMask), then its NMS: per-image ``boxes``, ``labels``, ``scores``;
4. :meth:`DetectorStages.predict_masks` (mask models): each detection's mask at its class channel and, with
   CenterMask's MaskIoU head, ``mask_scores``;
5. ``postprocess``: boxes back to each image's own size, masks pasted into it (torchvision's way, or
   detectron2's: :func:`detectron2_postprocess`);
6. :meth:`DetectorStages.predict_panoptic` (Panoptic FPN): the semantic map and the panoptic combination.

Deploying transforms the modules (batch norm folded, convolutions fused, Winograd, channels_last) and sets
the three inference settings below on the copy; exporting traces ``infer`` of a copy with batch norm folded.
Training keeps each family's own forward (torchvision's, or CenterMask's) and its losses.

Inference settings (class attributes; ``vovnet.deploy`` sets them on its copy):

- ``autocast_dtype``: the precision the network runs at under autocast (None: as its weights); box
  decoding, NMS and pasting stay fp32;
- ``channels_last``: feed the backbone and the mask head channels_last maps;
- ``mask_score_thresh``: detections scoring below it get an empty mask (and a mask score of 0) without
  going through the mask head (None: every detection gets its mask).
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import nullcontext

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS as TorchvisionFCOS
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection import MaskRCNN as TorchvisionMaskRCNN
from torchvision.models.detection import RetinaNet as TorchvisionRetinaNet
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.transform import resize_boxes

from .paste import paste_masks, paste_masks_torchvision
from .rcnn_detectron2 import DIALECTS as RCNN_DIALECTS
from .sag_mask import SAGMaskHead


def detectron2_postprocess(detections: list[dict[str, Tensor]], image_sizes, original_sizes) -> list[dict[str, Tensor]]:
    """detectron2's ``detector_postprocess``: boxes scaled from the size the network saw to each image's own and
    clipped to it, detections with an empty box dropped, masks (``[D, 1, M, M]`` probabilities) pasted into the
    clipped boxes by ``grid_sample`` and thresholded at 0.5 (``[D, 1, H, W]`` of 0 / 1)."""
    results = []
    for det, (h, w), (out_h, out_w) in zip(detections, image_sizes, original_sizes):
        boxes = det["boxes"].clone()
        boxes[:, 0::2] *= out_w / w
        boxes[:, 1::2] *= out_h / h
        boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=out_w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=out_h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        out = {k: v[keep] for k, v in det.items()}
        out["boxes"] = boxes[keep]
        if "masks" in out:
            out["masks"] = paste_masks(out["masks"], out["boxes"], (out_h, out_w))[:, None].to(out["masks"].dtype)
        results.append(out)
    return results


def split_per_image(values: Tensor, detections: list[dict[str, Tensor]]) -> list[Tensor]:
    """``values`` for all images' detections, one part per image (one image: no split, so traces stay dynamic)."""
    if len(detections) == 1:
        return [values]
    return list(values.split([d["scores"].shape[0] for d in detections]))


class DetectorStages:
    """The inference stages shared by every detector family (a mixin before the family's torchvision class).

    ``forward(images)`` in eval mode is :meth:`infer`: a list of ``[3, H, W]`` RGB floats in 0..1 -> one dict per
    image with ``boxes [N, 4]``, ``labels [N]`` (1-based), ``scores [N]`` and, for mask models, ``masks
    [N, 1, H, W]`` (plus ``mask_scores [N]`` with a MaskIoU head). In training mode the family's own forward
    returns its losses. A family provides ``detect(batch, features)`` and, for masks, its mask parts.
    """

    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    mask_score_thresh: float | None = None
    first_channel_label: int = 0  # the label of class channel 0 of the mask outputs (torchvision's have background)
    extra_outputs: tuple[str, ...] = ()  # tensors a family adds to each image's result (Panoptic FPN's maps)

    # ---- stages -----------------------------------------------------------------------------------------------
    def autocast(self, device: torch.device):
        """The context the network's layers run in: autocast at ``autocast_dtype``, or nothing."""
        return nullcontext() if self.autocast_dtype is None else torch.autocast(device.type, dtype=self.autocast_dtype)

    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def features(self, tensors: Tensor) -> OrderedDict[str, Tensor]:
        """The backbone's (and FPN's) maps of a padded batch ``[N, 3, H, W]``."""
        with self.autocast(tensors.device):
            return self.backbone(tensors.contiguous(memory_format=self.memory_format()))

    def mask_parts(self) -> tuple[nn.Module, nn.Module, nn.Module | None] | None:
        """(RoI pooler, mask head, separate mask predictor or None) of a mask model; None without masks."""
        return None

    def predict_masks(self, features: OrderedDict[str, Tensor], detections: list[dict[str, Tensor]], image_sizes) -> None:
        """Adds ``masks [D, 1, M, M]`` (the probabilities of each detection's class) to each detection, in place,
        and with a MaskIoU head ``mask_scores = scores * maskiou[class]``."""
        pool, head, predictor = self.mask_parts()
        maskiou_head = getattr(self, "maskiou_head", None)
        threshold = self.mask_score_thresh
        chosen = [None if threshold is None else torch.where(d["scores"] >= threshold)[0] for d in detections]
        picked = [d if c is None else {k: v[c] for k, v in d.items()} for d, c in zip(detections, chosen)]
        labels = torch.cat([d["labels"] for d in picked])
        channels = labels - self.first_channel_label
        index = torch.arange(labels.shape[0], device=labels.device)
        with self.autocast(labels.device):
            pooled = pool(features, [d["boxes"] for d in picked], image_sizes).contiguous(memory_format=self.memory_format())
            probs = _own_channel_logits(head, predictor, pooled, channels).float().sigmoid()
            ious = maskiou_head(pooled, probs.to(pooled.dtype)).float()[index, channels] if maskiou_head is not None else None
        parts = split_per_image(probs, picked)
        iou_parts = split_per_image(ious, picked) if ious is not None else [None] * len(picked)
        for det, c, p, iou, d in zip(detections, chosen, parts, iou_parts, picked):
            scores = None if iou is None else d["scores"] * iou
            if c is not None:  # detections below the threshold get an empty mask and a mask score of 0
                p = p.new_zeros((det["scores"].shape[0], *p.shape[1:])).index_copy_(0, c, p)
                scores = None if scores is None else det["scores"].new_zeros(det["scores"].shape).index_copy_(0, c, scores)
            det["masks"] = p
            if scores is not None:
                det["mask_scores"] = scores

    def postprocess(self, detections: list[dict[str, Tensor]], image_sizes, original_sizes) -> list[dict[str, Tensor]]:
        """torchvision's: boxes scaled back to each image's own size, masks pasted into it (probabilities; all of
        an image's masks at once, the numbers of torchvision's one-mask-at-a-time paste)."""
        for det, size, original in zip(detections, image_sizes, original_sizes):
            det["boxes"] = resize_boxes(det["boxes"], size, original)
            if "masks" in det:
                det["masks"] = paste_masks_torchvision(det["masks"], det["boxes"], original)[:, None]
        return detections

    def predict_panoptic(self, features: OrderedDict[str, Tensor], results: list[dict], image_sizes, original_sizes) -> None:
        """Panoptic models add each image's semantic and panoptic maps to its (post-processed) results, in place;
        the other detectors have nothing to add."""

    def infer(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """The inference stages, in order (no ``no_grad`` here, so that they can be traced)."""
        original_sizes = [(img.shape[-2], img.shape[-1]) for img in images]
        batch, _ = self.transform(images)
        features = self.features(batch.tensors)
        detections = self.detect(batch, features)
        if self.mask_parts() is not None:
            self.predict_masks(features, detections, batch.image_sizes)
        results = self.postprocess(detections, batch.image_sizes, original_sizes)
        self.predict_panoptic(features, results, batch.image_sizes, original_sizes)
        return results

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training:
            return super().forward(images, targets)
        return self.infer(images)


def _own_channel_logits(head: nn.Module, predictor: nn.Module | None, pooled: Tensor, channels: Tensor) -> Tensor:
    """Each RoI's mask logits at its class channel, ``[R, 1, M, M]``: a SAG-Mask head computes that channel
    alone; another head (torchvision's, with its predictor) computes every channel, then the RoI's is taken."""
    if isinstance(head, SAGMaskHead) and (predictor is None or isinstance(predictor, nn.Identity)):
        return head(pooled, channels)
    logits = head(pooled) if predictor is None else predictor(head(pooled))
    return logits[torch.arange(channels.shape[0], device=channels.device), channels][:, None]


class DenseDetectorStages(DetectorStages):
    """``detect`` of torchvision's one-stage detectors (FCOS, RetinaNet): the dense head, anchors, then the
    model's own decoding and NMS (``postprocess_detections``)."""

    def detect(self, batch, features: OrderedDict[str, Tensor]) -> list[dict[str, Tensor]]:
        maps = list(features.values())
        with self.autocast(maps[0].device):
            head_outputs = {k: v.float() for k, v in self.head(maps).items()}
        anchors = self.anchor_generator(batch, maps)
        locations = [x.size(2) * x.size(3) for x in maps]
        per_location = head_outputs["cls_logits"].size(1) // sum(locations)  # anchors per location (1 for FCOS)
        sizes = [n * per_location for n in locations]
        split_outputs = {k: list(v.split(sizes, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(sizes)) for a in anchors]
        return self.postprocess_detections(split_outputs, split_anchors, batch.image_sizes)


class RCNNStages(DetectorStages):
    """``detect`` of the R-CNNs: RPN proposals, the box head, then the model's own decoding and NMS.

    Built as torchvision's detector (its constructor's arguments), or from given parts: ``rpn``, ``roi_heads``
    and ``transform`` (the ``detectron2`` dialect's, :mod:`.rcnn_detectron2`). ``dialect`` (a key of
    :data:`~.rcnn_detectron2.DIALECTS`) sets where the background sits in the heads' outputs and the
    post-processing (``detectron2``: :func:`detectron2_postprocess`).
    """

    def __init__(self, backbone: nn.Module, num_classes: int | None = None, *, rpn: nn.Module | None = None,
                 roi_heads: nn.Module | None = None, transform: nn.Module | None = None, dialect: str = "torchvision", **kwargs):
        if rpn is None:
            super().__init__(backbone, num_classes, **kwargs)
        else:  # the parts as given; torchvision's constructor would build its own RPN and RoI heads
            GeneralizedRCNN.__init__(self, backbone, rpn, roi_heads, transform)
        self.dialect = dialect
        self.first_channel_label = 1 if RCNN_DIALECTS[dialect].background_last else 0

    def postprocess(self, detections: list[dict[str, Tensor]], image_sizes, original_sizes) -> list[dict[str, Tensor]]:
        if self.dialect == "detectron2":
            return detectron2_postprocess(detections, image_sizes, original_sizes)
        return super().postprocess(detections, image_sizes, original_sizes)

    def detect(self, batch, features: OrderedDict[str, Tensor]) -> list[dict[str, Tensor]]:
        heads = self.roi_heads
        with self.autocast(batch.tensors.device):
            proposals, _ = self.rpn(batch, features)
            box_features = heads.box_head(heads.box_roi_pool(features, proposals, batch.image_sizes))
            class_logits, box_regression = heads.box_predictor(box_features)
        boxes, scores, labels = heads.postprocess_detections(class_logits.float(), box_regression.float(), proposals, batch.image_sizes)
        return [{"boxes": b, "labels": l, "scores": s} for b, l, s in zip(boxes, labels, scores)]

    def mask_parts(self):
        heads = self.roi_heads
        return (heads.mask_roi_pool, heads.mask_head, heads.mask_predictor) if heads.has_mask() else None


class FasterRCNN(RCNNStages, TorchvisionFasterRCNN):
    """torchvision's Faster R-CNN with the package's inference stages (see the module docstring)."""


class MaskRCNN(RCNNStages, TorchvisionMaskRCNN):
    """torchvision's Mask R-CNN with the package's inference stages (see the module docstring)."""


class FCOS(DenseDetectorStages, TorchvisionFCOS):
    """torchvision's FCOS with the package's inference stages (see the module docstring)."""


class RetinaNet(DenseDetectorStages, TorchvisionRetinaNet):
    """torchvision's RetinaNet with the package's inference stages (see the module docstring)."""
