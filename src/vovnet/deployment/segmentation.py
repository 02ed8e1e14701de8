"""Whole semantic segmenters to ONNX: :class:`SegmenterGraph` (the eval forward, traceable at any image size)
and :func:`export_segmenter`, written only after onnxruntime agrees with the eval model at two sizes.

The segmenter resizes its input to its training resolution and, with the guided filter, resizes the image
to the probabilities' size, both bilinear with antialiasing when shrinking. Neither traces as is: the eval
forward computes the scale in Python (a trace would freeze it), and the TorchScript-based exporter has no
ONNX form for antialiased resizing (:func:`~vovnet.deployment.export.antialiased_resize_exportable` gives
it one). Both are written as what they are, a matrix per axis: output pixel ``i``
takes the input pixels ``j`` weighted by the triangle ``max(0, 1 - |j + 0.5 - c_i| / max(s, 1))`` around
its centre ``c_i = s (i + 0.5)`` (``s`` input pixels per output pixel), normalised to sum to one: PyTorch's
antialiased bilinear kernel, and its plain bilinear one when enlarging.
"""

from __future__ import annotations

import copy
import io
import json
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..io import atomic_write_bytes
from ..models.segmentation.model import Segmenter
from ..models.segmentation.refine import refine_probabilities
from .detection import check_images
from .export import TOLERANCE, ExportError, antialiased_resize_exportable, quiet_export, relative_error
from .fuse import fold_batch_norm_

OPSET = 17
CHECK_SIZES = ((240, 320), (300, 212))  # the two image sizes (h, w) every export is checked at


def resize_matrix(in_size, out_size, scale) -> Tensor:
    """``[out_size, in_size]`` weights of PyTorch's bilinear resize along one axis (antialiased when shrinking,
    ``align_corners=False``); ``scale``: input pixels per output pixel. Sizes may be traced 0-dim tensors."""
    scale = torch.as_tensor(scale, dtype=torch.float32)
    centres = (torch.arange(out_size, dtype=torch.float32) + 0.5) * scale
    pixels = torch.arange(in_size, dtype=torch.float32) + 0.5
    weights = (1 - ((pixels[None, :] - centres[:, None]) / scale.clamp(min=1)).abs()).clamp(min=0)
    return weights / weights.sum(1, keepdim=True)


def resize_short_side(x: Tensor, short: int) -> Tensor:
    """``x [N, C, H, W]`` resized as the segmenter's eval forward does it (short side ``short``, long side
    ``floor(long * short / min(H, W))``, coordinates mapped by that scale), traceably."""
    h, w = torch.as_tensor(x.shape[-2]), torch.as_tensor(x.shape[-1])
    side = torch.minimum(h, w)
    out_h, out_w = h * short // side, w * short // side
    scale = side.float() / short
    return resize_matrix(h, out_h, scale) @ x @ resize_matrix(w, out_w, scale).T


class SegmenterGraph(nn.Module):
    """``images [N, 3, H, W]`` (RGB, 0..1) -> ``logits [N, K, H, W]``: the segmenter's eval forward (its input
    format, input resizing, backbone, head, upsampling or the guided filter), traceable at any image size."""

    def __init__(self, segmenter: Segmenter):
        super().__init__()
        self.segmenter = segmenter

    def forward(self, images: Tensor) -> Tensor:
        m, cfg = self.segmenter, self.segmenter.config
        x = m.input_format.normalize(images)
        if cfg.input_size:
            x = resize_short_side(x, cfg.input_size)
        logits = m.head(m.backbone(x))
        if not cfg.refine_radius:
            return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        cells = ((x.shape[-2] + 3) // 4, (x.shape[-1] + 3) // 4)  # as the eval forward: stride-4 cells of the input
        if logits.shape[-2] < cells[0]:  # DeepLab heads predict at stride 16 or 32 (the same branch at every size)
            logits = F.interpolate(logits, size=cells, mode="bilinear", align_corners=False)
        probs = refine_probabilities(images, logits.float().softmax(1), cfg.refine_radius, cfg.refine_eps)
        return probs.clamp_min(1e-12).log()


def segmenter_graph(model: Segmenter) -> SegmenterGraph:
    """The traceable graph of ``model``: a copy with batch norm folded."""
    net = copy.deepcopy(model).eval().float().cpu()
    for p in net.parameters():
        p.requires_grad_(False)
    fold_batch_norm_(net)
    return SegmenterGraph(net)


def segmenter_onnx(model: Segmenter, example: Tensor) -> bytes:
    """The whole segmenter as ONNX: input ``images [batch, 3, height, width]``, output ``logits`` of the same
    batch and size, all dynamic."""
    buffer = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    with quiet_export(), torch.no_grad(), antialiased_resize_exportable(OPSET):
        torch.onnx.export(segmenter_graph(model), (example,), buffer, dynamo=False, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": axes, "logits": axes}, opset_version=OPSET)
    return buffer.getvalue()


def export_segmenter(model: Segmenter, path: str | os.PathLike, *, metadata: dict | None = None,
                     tolerance: float = TOLERANCE, sizes=CHECK_SIZES) -> dict:
    """Export the whole segmenter to ONNX at ``path`` (atomically), only after onnxruntime's logits agree with
    the eval model's within ``tolerance`` relative error (so a pixel's class can change only where its two best
    classes are that close) at every size of ``sizes``; else :class:`ExportError`. Returns a report."""
    import onnx
    import onnxruntime as ort

    model = model.eval()
    images = [image[None] for image in check_images(sizes)]
    try:
        data = segmenter_onnx(model, images[0])
    except Exception as e:  # exporter internals raise many types; the message is what a user needs
        raise ExportError(f"ONNX export of the segmenter failed: {str(e).strip().splitlines()[0][:300]}") from None
    proto = onnx.load_from_string(data)
    onnx.helper.set_model_props(proto, {"vovnet": json.dumps({**(metadata or {}), "outputs": ["logits"]}, default=str)})
    data = proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    checks = []
    for image in images:
        with torch.no_grad():
            want = model(image)
        try:
            got = torch.from_numpy(session.run(None, {"images": image.numpy()})[0])
        except Exception as e:  # onnxruntime's own error types
            raise ExportError(f"onnxruntime failed on a {list(image.shape)} image: {str(e).strip().splitlines()[0][:300]}") from None
        error = relative_error(got, want)
        if not error <= tolerance:
            raise ExportError(f"onnxruntime differs from PyTorch on a {list(image.shape)} image: relative error "
                              f"{error:.1e} > {tolerance:.0e}; nothing written")
        same_class = float((got.argmax(1) == want.argmax(1)).float().mean())
        checks.append(dict(image=list(image.shape), relative_error=error, same_class=same_class))
    atomic_write_bytes(path, data)
    return dict(path=str(path), format="onnx", exporter="legacy", opset=OPSET, input=["batch", 3, "height", "width"],
                outputs=["logits"], checks=checks, bytes=len(data))
