"""Whole detectors to ONNX, and how two runs of a detector agree.

A detector of the package (FCOS, RetinaNet, Faster / Mask R-CNN, CenterMask) runs one inference path, its
own public stages (:mod:`vovnet.models.detection.stages`), which ``vovnet.deploy`` runs on a transformed copy
(:mod:`vovnet.deployment.optimize`) and the export traces.

:class:`DetectorGraph` takes one image ``[3, H, W]`` and returns the same stages' ``boxes``, ``labels``,
``scores``, ``masks`` as a tuple, the form the ONNX export traces; :func:`export_detector` writes it only after
onnxruntime gives the eval model's detections (:func:`compare_detections`) at two image sizes.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..data.shapes import ShapesConfig, render_scene
from ..io import atomic_write_bytes
from .export import ExportError, antialiased_resize_exportable, quiet_export
from .fuse import fold_batch_norm_

OUTPUTS = ("boxes", "labels", "scores", "masks")  # then "mask_scores" where the model has a MaskIoU head
CHECK_SIZES = ((240, 320), (288, 216))  # the two image sizes (h, w) every export is checked at
OPSET = 17
TOLERANCE = 1e-4  # relative error of boxes and scores
MIN_MASK_IOU = 0.99


class DetectorGraph(nn.Module):
    """One image ``[3, H, W]`` (RGB, 0..1) -> ``(boxes [N, 4], labels [N], scores [N][, masks [N, 1, H, W]
    [, mask_scores [N]]])``, then the model's ``extra_outputs`` (Panoptic FPN: ``sem_seg [C, H, W]``, ``panoptic_seg
    [H, W]``, ``segments [S, 5]``): the detector's stages (``model.infer``) in the form exporters trace."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        names = list(OUTPUTS if model.mask_parts() is not None else OUTPUTS[:3])
        if getattr(model, "maskiou_head", None) is not None:
            names.append("mask_scores")
        self.output_names = names + list(model.extra_outputs)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        det = self.model.infer([image])[0]
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


def panoptic_agreement(want: dict[str, Tensor], got: dict[str, Tensor]) -> dict[str, float]:
    """How two runs' panoptic outputs agree: ``sem_seg_error``, the largest difference of the semantic scores relative
    to their largest magnitude, and ``panoptic_share``, the share of pixels with the same segment id."""
    same = (torch.as_tensor(want["panoptic_seg"]) == torch.as_tensor(got["panoptic_seg"])).double().mean().item()
    return {"sem_seg_error": _relative(torch.as_tensor(got["sem_seg"]), torch.as_tensor(want["sem_seg"])), "panoptic_share": same}


def detector_graph(model: nn.Module) -> DetectorGraph:
    """The traceable one-image graph of ``model``: batch norm folded, no oneDNN calls, no channels_last
    (exporters and their runtimes lay out and fuse for themselves)."""
    net = copy.deepcopy(model).eval().float().cpu()
    for p in net.parameters():
        p.requires_grad_(False)
    fold_batch_norm_(net)
    net.autocast_dtype, net.channels_last, net.mask_score_thresh = None, False, None
    return DetectorGraph(net)


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
    if "panoptic_seg" in names:
        axes.update(sem_seg={1: "height", 2: "width"}, panoptic_seg={0: "height", 1: "width"}, segments={0: "segments"})
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
        check = dict(image=list(image.shape), **dataclasses.asdict(agreement))
        if "panoptic_seg" in want:
            check.update(panoptic_agreement(want, got))
            if check["sem_seg_error"] > tolerance or check["panoptic_share"] < min_iou:
                raise ExportError(f"onnxruntime's panoptic maps differ from PyTorch's on a {list(image.shape)} image: "
                                  f"semantic error {check['sem_seg_error']:.1e}, {check['panoptic_share']:.4f} of the pixels alike; nothing written")
        checks.append(check)
    atomic_write_bytes(path, data)
    return dict(path=str(path), format="onnx", exporter="legacy", opset=OPSET, input=["image", 3, "height", "width"],
                outputs=names, checks=checks, bytes=len(data))
