"""Whole semantic segmenters to ONNX: :func:`export_segmenter` traces the segmenter's own forward (a copy with
batch norm folded; its input resizing takes its traceable form while exporting, see
:mod:`vovnet.models.segmentation.resize`) and writes it only after onnxruntime agrees with the eval model at two
sizes."""

from __future__ import annotations

import copy
import io
import json
import os

import torch
from torch import Tensor

from ..io import atomic_write_bytes
from ..models.segmentation.model import Segmenter
from .detection import check_images
from .export import TOLERANCE, ExportError, antialiased_resize_exportable, quiet_export, relative_error
from .fuse import fold_batch_norm_

OPSET = 17
CHECK_SIZES = ((240, 320), (300, 212))  # the two image sizes (h, w) every export is checked at


def segmenter_graph(model: Segmenter) -> Segmenter:
    """What the export traces: a copy of ``model`` with batch norm folded, whose own forward takes its traceable
    steps while exporting (:mod:`vovnet.models.segmentation.resize`)."""
    net = copy.deepcopy(model).eval().float().cpu()
    for p in net.parameters():
        p.requires_grad_(False)
    fold_batch_norm_(net)
    return net


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
