"""The segmenter's input resizing in a form that traces at any image size.

The segmenter resizes its input to its training resolution, bilinear with antialiasing when shrinking. Eagerly
that is ``F.interpolate`` with a scale computed in Python (a trace would freeze it), and the TorchScript-based
ONNX exporter has no form for antialiased resizing (:func:`~vovnet.deployment.export.antialiased_resize_exportable`
gives it one). While exporting it is written as what it is, a matrix per axis: output pixel ``i`` takes the input
pixels ``j`` weighted by the triangle ``max(0, 1 - |j + 0.5 - c_i| / max(s, 1))`` around its centre
``c_i = s (i + 0.5)`` (``s`` input pixels per output pixel), normalised to sum to one: PyTorch's antialiased
bilinear kernel, and its plain bilinear one when enlarging.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
