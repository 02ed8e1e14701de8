"""Whole detectors for inference: ``deploy(detector)`` and the one-image graph ONNX exports.

A torchvision-style detector (FCOS, RetinaNet, Faster / Mask R-CNN, and :class:`CenterMask`, an FCOS) is
deployed as a copy whose layers are optimised by module type, wherever they sit (batch norm folded into
the convolution before it, frozen ones too; convolution + activation as one oneDNN call; channels_last
weights), run by :class:`DeployedDetector`, which goes through the same stages as the eval model's own
``forward`` with the model's own parts (its transform, backbone, heads, anchor generator and
``postprocess_detections``), with two differences that do not change the results:

- masks are pasted into the image for all detections at once (:func:`paste_masks_torchvision`, the
  numbers of torchvision's one-mask-at-a-time paste that the eval model runs);
- a SAG-Mask head computes each detection's own class channel only (the eval model computes every class's
  mask and keeps that one);
- with ``mask_score_thresh`` the mask head only sees the detections scoring at least that much (the
  others keep their box and score and get an empty mask), for users who draw only confident ones.

:class:`DetectorGraph` takes one image ``[3, H, W]`` and returns ``boxes``, ``labels``, ``scores``, ``masks``
as a tuple, the form the ONNX export traces; :func:`export_detector` writes it only after onnxruntime gives
the eval model's detections (:func:`compare_detections`) at two image sizes.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import warnings
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.transform import resize_boxes

from ..data.shapes import ShapesConfig, render_scene
from ..io import atomic_write_bytes
from ..models.detection.centermask import CenterMask
from ..models.detection.paste import paste_masks_torchvision
from ..models.detection.sag_mask import SAGMaskHead
from .export import ExportError, antialiased_resize_exportable, quiet_export
from .fuse import fold_batch_norm_, fuse_conv_act_, fuse_ese_, fuse_onednn_, pack_convolutions_
from .precision import DeployWarning, precision_dtype, resolve_precision
from .winograd import winograd_convolutions_

OUTPUTS = ("boxes", "labels", "scores", "masks")  # then "mask_scores" where the model has a MaskIoU head
CHECK_SIZES = ((240, 320), (288, 216))  # the two image sizes (h, w) every export is checked at
OPSET = 17
TOLERANCE = 1e-4  # relative error of boxes and scores
MIN_MASK_IOU = 0.99


def _mask_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module | None] | None:
    """(RoI pooler, mask head, mask predictor or None) of a detector with masks, else None."""
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None:
        return (roi_heads.mask_roi_pool, roi_heads.mask_head, roi_heads.mask_predictor) if roi_heads.has_mask() else None
    if getattr(model, "mask_head", None) is not None:
        return model.mask_roi_pool, model.mask_head, None
    return None


def _own_channel_logits(head: nn.Module, predictor: nn.Module | None, pooled: Tensor, channels: Tensor) -> Tensor:
    """Each RoI's mask logits at its class channel, ``[R, 1, M, M]``: a SAG-Mask head computes that channel
    alone; another head (torchvision's, with its predictor) computes every channel, then the RoI's is taken."""
    if isinstance(head, SAGMaskHead) and (predictor is None or isinstance(predictor, nn.Identity)):
        return head(pooled, channels)
    logits = head(pooled) if predictor is None else predictor(head(pooled))
    return logits[torch.arange(channels.shape[0], device=channels.device), channels][:, None]


class DeployedDetector(nn.Module):
    """An optimised detector for inference, input and output as the eval model's.

    ``forward(images)``: a list of ``[3, H, W]`` RGB floats in 0..1 -> one dict per image with ``boxes [N, 4]``,
    ``labels [N]``, ``scores [N]`` and, for mask models, ``masks [N, 1, H, W]`` (probabilities), in fp32.

    Args:
        model: the optimised copy of the detector (see :func:`deploy_detector`).
        precision: what the network runs at (``bf16``/``fp16`` under autocast; decoding stays fp32).
        device: where it runs.
        channels_last: feed the backbone channels_last maps.
        mask_score_thresh: detections scoring below it get an empty mask without going through the mask
            head (None: every detection gets its mask, as the eval model).
        notes: messages about optimisations not applied.
    """

    def __init__(self, model: nn.Module, *, precision: str = "fp32", device: torch.device | str = "cpu",
                 channels_last: bool = True, mask_score_thresh: float | None = None, notes: list[str] | None = None):
        super().__init__()
        self.model = model
        self.precision = precision
        self.device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.mask_score_thresh = mask_score_thresh
        self.notes = list(notes or [])
        self.has_masks = _mask_parts(model) is not None

    def _autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=precision_dtype(self.precision))

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        with torch.inference_mode():
            return self.detect([img.to(self.device) for img in images])

    def detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """The inference stages, without ``inference_mode`` (so that they can be traced)."""
        model = self.model
        original_sizes = [(img.shape[-2], img.shape[-1]) for img in images]
        batch, _ = model.transform(images)
        with self._autocast():
            features = model.backbone(batch.tensors.contiguous(memory_format=self.memory_format))
        if isinstance(model, GeneralizedRCNN):
            detections = self.rcnn_detections(batch, features)
        else:
            detections = self.dense_detections(batch, features)
        if self.has_masks:
            self.predict_masks(features, detections, batch.image_sizes)
        return self.postprocess(detections, batch.image_sizes, original_sizes)

    def dense_detections(self, batch, features: OrderedDict[str, Tensor]) -> list[dict[str, Tensor]]:
        """FCOS, RetinaNet, CenterMask: the dense head, then the model's own decoding and NMS."""
        model = self.model
        maps = list(features.values())
        with self._autocast():
            head_outputs = {k: v.float() for k, v in model.head(maps).items()}
        if isinstance(model, CenterMask):  # in the model's dialect
            return model._detect(head_outputs, maps, batch, model.detections_per_img)
        anchors = model.anchor_generator(batch, maps)
        locations = [x.size(2) * x.size(3) for x in maps]
        per_location = head_outputs["cls_logits"].size(1) // sum(locations)  # anchors per location (1 for FCOS)
        sizes = [n * per_location for n in locations]
        split_outputs = {k: list(v.split(sizes, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(sizes)) for a in anchors]
        return model.postprocess_detections(split_outputs, split_anchors, batch.image_sizes)

    def rcnn_detections(self, batch, features: OrderedDict[str, Tensor]) -> list[dict[str, Tensor]]:
        """Faster / Mask R-CNN: RPN proposals, the box head, then the model's own decoding and NMS."""
        model, heads = self.model, self.model.roi_heads
        with self._autocast():
            proposals, _ = model.rpn(batch, features)
            box_features = heads.box_head(heads.box_roi_pool(features, proposals, batch.image_sizes))
            class_logits, box_regression = heads.box_predictor(box_features)
        boxes, scores, labels = heads.postprocess_detections(class_logits.float(), box_regression.float(), proposals, batch.image_sizes)
        return [{"boxes": b, "labels": l, "scores": s} for b, l, s in zip(boxes, labels, scores)]

    def predict_masks(self, features: OrderedDict[str, Tensor], detections: list[dict[str, Tensor]], image_sizes) -> None:
        """Adds ``masks [D, 1, M, M]`` (the probabilities of each detection's class) to each detection, in place,
        and with a MaskIoU head ``mask_scores = scores * maskiou[class]``, as the eval models do."""
        pool, head, predictor = _mask_parts(self.model)
        maskiou_head = getattr(self.model, "maskiou_head", None)
        threshold = self.mask_score_thresh
        chosen = [None if threshold is None else torch.where(d["scores"] >= threshold)[0] for d in detections]
        picked = [d if c is None else {k: v[c] for k, v in d.items()} for d, c in zip(detections, chosen)]
        labels = torch.cat([d["labels"] for d in picked])
        channels = labels - getattr(self.model, "first_channel_label", 0)  # torchvision's masks have a background channel
        index = torch.arange(labels.shape[0], device=labels.device)
        with self._autocast():
            pooled = pool(features, [d["boxes"] for d in picked], image_sizes).contiguous(memory_format=self.memory_format)
            probs = _own_channel_logits(head, predictor, pooled, channels).float().sigmoid()
            ious = maskiou_head(pooled, probs.to(pooled.dtype)).float()[index, channels] if maskiou_head is not None else None
        parts = _split(probs, picked)
        iou_parts = _split(ious, picked) if ious is not None else [None] * len(picked)
        for det, c, p, iou, d in zip(detections, chosen, parts, iou_parts, picked):
            scores = None if iou is None else d["scores"] * iou
            if c is not None:  # detections below the threshold get an empty mask and a mask score of 0
                p = p.new_zeros((det["scores"].shape[0], *p.shape[1:])).index_copy_(0, c, p)
                scores = None if scores is None else det["scores"].new_zeros(det["scores"].shape).index_copy_(0, c, scores)
            det["masks"] = p
            if scores is not None:
                det["mask_scores"] = scores

    def postprocess(self, detections: list[dict[str, Tensor]], image_sizes, original_sizes) -> list[dict[str, Tensor]]:
        """Boxes back to the caller's image size and masks pasted into it, as the model's own post-processing
        (detectron2's for CenterMask's centermask2 dialect, else torchvision's transform's)."""
        dialect = getattr(self.model, "dialect", None)
        if dialect is not None and dialect.postprocess == "detectron2":
            return self.model._detectron2_postprocess(detections, image_sizes, original_sizes)
        for det, size, original in zip(detections, image_sizes, original_sizes):
            det["boxes"] = resize_boxes(det["boxes"], size, original)
            if "masks" in det:
                det["masks"] = paste_masks_torchvision(det["masks"], det["boxes"], original)[:, None]
        return detections


def _split(values: Tensor, detections: list[dict[str, Tensor]]) -> list[Tensor]:
    """``values`` for all images' detections, one part per image (one image: no split, so traces stay dynamic)."""
    if len(detections) == 1:
        return [values]
    return list(values.split([d["scores"].shape[0] for d in detections]))


class DetectorGraph(nn.Module):
    """One image ``[3, H, W]`` (RGB, 0..1) -> ``(boxes [N, 4], labels [N], scores [N][, masks [N, 1, H, W]
    [, mask_scores [N]]])``: :class:`DeployedDetector` in the form exporters trace."""

    def __init__(self, deployed: DeployedDetector):
        super().__init__()
        self.deployed = deployed
        names = list(OUTPUTS if deployed.has_masks else OUTPUTS[:3])
        if getattr(deployed.model, "maskiou_head", None) is not None:
            names.append("mask_scores")
        self.output_names = names

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        det = self.deployed.detect([image])[0]
        return tuple(det[name] for name in self.output_names)


@dataclass(frozen=True)
class Agreement:
    """How one image's detections from two runs of a detector agree (see :func:`compare_detections`).

    ``unmatched``: detections of either run without a partner (same label, score within tolerance);
    ``box_error`` / ``score_error`` / ``mask_score_error``: the largest ``|got - want|`` over matched pairs,
    relative to the largest ``|want|`` (``mask_score_error`` None without ``mask_scores``); ``mask_iou``:
    intersection over union of all matched masks (``>= 0.5``) taken together.
    """

    count: int
    unmatched: int
    box_error: float
    score_error: float
    mask_iou: float | None
    mask_score_error: float | None = None

    def ok(self, tolerance: float = TOLERANCE, min_iou: float = MIN_MASK_IOU) -> bool:
        return (self.unmatched == 0 and self.box_error <= tolerance and self.score_error <= tolerance
                and (self.mask_iou is None or self.mask_iou >= min_iou)
                and (self.mask_score_error is None or self.mask_score_error <= tolerance))

    def __str__(self) -> str:
        iou = "" if self.mask_iou is None else f", mask IoU {self.mask_iou:.4f}"
        mask_scores = "" if self.mask_score_error is None else f", mask score error {self.mask_score_error:.1e}"
        return (f"{self.count} detections, {self.unmatched} unmatched, box error {self.box_error:.1e}, "
                f"score error {self.score_error:.1e}{iou}{mask_scores}")


def _relative(got: Tensor, want: Tensor) -> float:
    if want.numel() == 0:
        return 0.0
    scale = want.abs().max().item()
    return (got.double() - want.double()).abs().max().item() / (scale if scale > 0 else 1.0)


def compare_detections(want: dict[str, Tensor], got: dict[str, Tensor], tolerance: float = TOLERANCE) -> Agreement:
    """Pair ``got``'s detections with ``want``'s and measure how far they are apart (boxes, scores, masks and,
    where ``want`` has them, ``mask_scores``).

    Detections whose scores tie within the tolerance may come in either order (float rounding decides),
    so each of ``want``'s, best first, is paired with the unpaired one of ``got`` of the same label,
    a score within ``tolerance`` (relative to the best score) and the closest box.
    """
    want_boxes, got_boxes = torch.as_tensor(want["boxes"]).double(), torch.as_tensor(got["boxes"]).double()
    want_scores, got_scores = torch.as_tensor(want["scores"]).double(), torch.as_tensor(got["scores"]).double()
    want_labels, got_labels = torch.as_tensor(want["labels"]), torch.as_tensor(got["labels"])
    score_slack = tolerance * (want_scores.abs().max().item() if len(want_scores) else 1.0) * 1.0001
    free = torch.ones(len(got_scores), dtype=torch.bool)
    pairs = []
    for i in range(len(want_scores)):
        candidates = free & (got_labels == want_labels[i]) & ((got_scores - want_scores[i]).abs() <= score_slack)
        if candidates.any():
            distance = (got_boxes - want_boxes[i]).abs().amax(1).masked_fill(~candidates, float("inf"))
            j = int(distance.argmin())
            free[j] = False
            pairs.append((i, j))
    unmatched = len(want_scores) + len(got_scores) - 2 * len(pairs)
    w = torch.tensor([i for i, _ in pairs], dtype=torch.long)
    g = torch.tensor([j for _, j in pairs], dtype=torch.long)
    iou = None
    if "masks" in want:
        a = torch.as_tensor(want["masks"])[w] >= 0.5
        b = torch.as_tensor(got["masks"])[g] >= 0.5
        union = (a | b).sum().item()
        iou = (a & b).sum().item() / union if union else 1.0
    mask_score_error = None
    if "mask_scores" in want:
        mask_score_error = _relative(torch.as_tensor(got["mask_scores"])[g], torch.as_tensor(want["mask_scores"])[w])
    return Agreement(len(want_scores), unmatched, _relative(got_boxes[g], want_boxes[w]),
                     _relative(got_scores[g], want_scores[w]), iou, mask_score_error)


def _optimise_(net: nn.Module, device: torch.device, precision: str, channels_last: bool, winograd: bool = False) -> None:
    fold_batch_norm_(net)
    fuse_ese_(net)
    net.to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    # oneDNN's fused convolutions take fp32 weights; autocast (bf16, fp16) runs torch's own.
    if device.type == "cpu" and channels_last and precision == "fp32" and torch.backends.mkldnn.is_available():
        for head in [m for m in net.modules() if isinstance(m, SAGMaskHead)]:
            fuse_conv_act_(head, "deconv", "deconv_act")
        fuse_onednn_(net)
        pack_convolutions_(net)
    if winograd is not False and device.type == "cpu" and precision == "fp32":
        winograd_convolutions_(net)  # after the oneDNN fusions, whose units it replaces


def deploy_detector(
    model: nn.Module,
    precision: str = "fp32",
    *,
    device: torch.device | str | None = None,
    channels_last: bool = True,
    mask_score_thresh: float | None = None,
    on_unsupported: str = "fallback",
    winograd: bool | None = None,
) -> DeployedDetector:
    """An optimised inference copy of a detector (``model`` itself is left untouched): batch norm folded,
    eSE's 1x1 conv on the pooled vector a matrix multiply, convolution + activation fused (CPU, fp32; the
    SAG-Mask head's deconvolution and its ReLU too), channels_last, ``bf16``/``fp16`` autocast where the device
    runs them natively (otherwise fp32 with a :class:`~vovnet.deployment.precision.DeployWarning`, as
    :func:`~vovnet.deployment.optimize.deploy`). See :class:`DeployedDetector`.

    ``winograd``: on the CPU in fp32 (default None: there, and nowhere else) the wide 3x3 stride-1 convolutions
    (>= 160 channels in and out: VoVNet's OSA layers from stage 3, the FPN outputs, the FCOS / RetinaNet towers,
    the SAG-Mask and MaskIoU heads') are computed as Winograd F(4x4, 3x3)
    (:class:`~vovnet.deployment.winograd.WinogradConv2d`; maps too small to gain take the direct convolution);
    their outputs differ from the direct convolution's by about 1e-5 of the largest output. ``False``: the direct
    convolutions everywhere; ``True`` elsewhere than CPU fp32: ignored, with a :class:`DeployWarning`."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    effective, message = resolve_precision(precision, device, on_unsupported)
    notes = [message] if message else []
    if winograd is True and (device.type != "cpu" or effective != "fp32"):
        notes.append(f"winograd=True computes CPU fp32 only; {device.type} {effective} runs the direct convolutions")
    for note in notes:
        warnings.warn(note, DeployWarning, stacklevel=3)
    if mask_score_thresh is not None and not (0 <= mask_score_thresh <= 1):
        raise ValueError(f"mask_score_thresh must lie in 0..1, got {mask_score_thresh}")
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    _optimise_(net, device, effective, channels_last, winograd)
    return DeployedDetector(net, precision=effective, device=device, channels_last=channels_last,
                            mask_score_thresh=mask_score_thresh, notes=notes)


def detector_graph(model: nn.Module) -> DetectorGraph:
    """The traceable one-image graph of ``model``: batch norm folded, no oneDNN calls, no channels_last
    (exporters and their runtimes lay out and fuse for themselves)."""
    net = copy.deepcopy(model).eval().float().cpu()
    for p in net.parameters():
        p.requires_grad_(False)
    fold_batch_norm_(net)
    return DetectorGraph(DeployedDetector(net, channels_last=False))


def check_images(sizes=CHECK_SIZES) -> list[Tensor]:
    """Shapes scenes at ``sizes`` (RGB floats in 0..1): pictures with objects, so that a trained detector detects
    something in them, and in two aspect ratios."""
    images = []
    for i, (h, w) in enumerate(sizes):
        scene = render_scene(i, split="val", config=ShapesConfig(image_size=max(h, w))).image.float() / 255
        images.append(scene[:, :h, :w].contiguous())
    return images


def detector_onnx(model: nn.Module, example: Tensor, opset: int = OPSET) -> tuple[bytes, list[str]]:
    """The whole detector as ONNX (TorchScript-based exporter: torchvision's detection ops have their ONNX
    forms there): input ``image [3, height, width]``, outputs as :class:`DetectorGraph`, all sizes dynamic.
    Returns the serialised model and its output names."""
    import onnx

    graph = detector_graph(model)
    names = graph.output_names
    axes = {"image": {1: "height", 2: "width"}, **{n: {0: "detections"} for n in names}}
    if "masks" in names:
        axes["masks"] = {0: "detections", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with quiet_export(), torch.no_grad(), antialiased_resize_exportable(opset):  # detectron2's resizing is antialiased
        torch.onnx.export(graph, (example,), buffer, dynamo=False, input_names=["image"], output_names=names,
                          dynamic_axes=axes, opset_version=opset)
    return onnx.load_from_string(buffer.getvalue()).SerializeToString(), names


def export_detector(model: nn.Module, path: str | os.PathLike, *, metadata: dict | None = None,
                    tolerance: float = TOLERANCE, min_iou: float = MIN_MASK_IOU, sizes=CHECK_SIZES) -> dict:
    """Export the whole detector ``model`` (resizing and normalisation, backbone, FPN, heads, box decoding,
    NMS, masks) to ONNX at ``path``, written (atomically) only after onnxruntime agrees with ``model`` on
    images of every size in ``sizes``: the same detections (labels), boxes and scores within ``tolerance``
    relative error, masks with IoU >= ``min_iou`` (:func:`compare_detections`); else :class:`ExportError`.
    Returns a report: path, outputs, per-size agreement, bytes."""
    import onnx
    import onnxruntime as ort

    model = model.eval()
    images = check_images(sizes)
    try:
        data, names = detector_onnx(model, images[0])
    except Exception as e:  # exporter internals raise many types; the message is what a user needs
        raise ExportError(f"ONNX export of the detector failed: {str(e).strip().splitlines()[0][:300]}") from None
    proto = onnx.load_from_string(data)
    onnx.helper.set_model_props(proto, {"vovnet": json.dumps({**(metadata or {}), "outputs": names}, default=str)})
    data = proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    checks = []
    for image in images:
        with torch.no_grad():
            want = model([image])[0]
        try:
            got = dict(zip(names, (torch.from_numpy(o) for o in session.run(None, {"image": image.numpy()}))))
        except Exception as e:  # onnxruntime's own error types; all mean the export is unusable
            raise ExportError(f"onnxruntime failed on a {list(image.shape)} image: {str(e).strip().splitlines()[0][:300]}") from None
        agreement = compare_detections(want, got, tolerance)
        if not agreement.ok(tolerance, min_iou):
            raise ExportError(f"onnxruntime differs from PyTorch on a {list(image.shape)} image: {agreement}; nothing written")
        checks.append(dict(image=list(image.shape), **dataclasses.asdict(agreement)))
    atomic_write_bytes(path, data)
    return dict(path=str(path), format="onnx", exporter="legacy", opset=OPSET, input=["image", 3, "height", "width"],
                outputs=names, checks=checks, bytes=len(data))
