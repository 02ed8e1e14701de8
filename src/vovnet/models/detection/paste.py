"""Pasting fixed-size mask predictions (28x28) into the image, all masks of an image at once.

Both pastes here are bilinear samples of each mask at the image's pixel centres with zeros outside the
mask. Such a sample is separable: the value at image pixel ``(y, x)`` is ``sum_ij wy[y, i] * mask[i, j] *
wx[x, j]`` with one "tent" weight row ``max(0, 1 - |s - j|)`` per pixel, ``s`` being the pixel's position
in mask cells. So a mask is two matrix products, ``Wy @ mask @ Wx^T``, with no ``[R, H, W, 2]`` sampling
grid (detectron2's ``grid_sample`` over the full image); the numbers are those of ``grid_sample`` /
``F.interpolate`` up to float rounding. Eagerly each mask is computed only over the pixels its weights
reach (its box); while exporting, all masks of an image are one batched product over the whole image.

- :func:`paste_masks` is detectron2's ``paste_masks_in_image`` (what the official CenterMask code runs):
  pixel centres ``+ 0.5`` mapped into the (float) box, ``grid_sample(align_corners=False)``, ``>= 0.5``.
- :func:`paste_masks_torchvision` is torchvision's ``paste_masks_in_image`` (what its detectors' transform
  runs): the mask padded by one zero cell, the box grown to match and truncated to whole pixels, then
  ``F.interpolate(bilinear, align_corners=False)`` into it; it returns probabilities.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..tracing import exporting


def _tent(coords: Tensor, size: int) -> Tensor:
    """Bilinear weights with zeros outside: ``[R, P]`` positions in cells -> ``[R, P, size]``."""
    cells = torch.arange(size, device=coords.device, dtype=coords.dtype)
    return (1 - (coords[..., None] - cells).abs()).clamp(min=0)


def _as_masks(masks: Tensor) -> Tensor:
    if masks.dim() == 4:
        if masks.shape[1] != 1:
            raise ValueError(f"masks must be [R, 1, M, M] or [R, M, M], got {list(masks.shape)}")
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(f"masks must be [R, 1, M, M] or [R, M, M], got {list(masks.shape)}")
    return masks.float()


def _support(coords: Tensor, size: int) -> tuple[list[int], list[int]]:
    """First and one-past-last pixel of each row of ``coords [R, P]`` (in cells) that a tent of ``size`` cells
    reaches, ``-1 < s < size``: where a pasted mask can be non-zero along that axis. The reached pixels are
    one run (coordinates grow with the pixel; torchvision's paste puts every pixel outside its box at -2)."""
    reached = (coords > -1) & (coords < size)
    first = reached.int().argmax(dim=1)
    return first.tolist(), (first + reached.sum(dim=1)).tolist()


def _sample(masks: Tensor, ys: Tensor, xs: Tensor, threshold: float | None) -> Tensor:
    """``[R, Mh, Mw]`` masks sampled at rows ``ys [R, H]`` and columns ``xs [R, W]`` (in mask cells).

    Each mask is non-zero only on the rows and columns its tents reach (about its box), so on the CPU each
    is computed there alone, into zeros (detectron2's "skip_empty", which it too does on the CPU only): for
    100 detections in a 640x480 image a small fraction of the whole-image products. A tracer would freeze
    that loop's count and a GPU would pay a launch per mask, so there, and while exporting, all masks are
    one batched product over the whole image.
    """
    m_h, m_w = masks.shape[1:]
    if exporting() or masks.device.type != "cpu":
        out = _tent(ys, m_h) @ masks @ _tent(xs, m_w).transpose(1, 2)
        return out if threshold is None else out >= threshold
    r, h, w = masks.shape[0], ys.shape[1], xs.shape[1]
    out = torch.zeros((r, h, w), dtype=torch.float32 if threshold is None else torch.bool, device=masks.device)
    if out.numel() == 0:
        return out
    (top, bottom), (left, right) = _support(ys, m_h), _support(xs, m_w)
    for i in range(r):
        if top[i] < bottom[i] and left[i] < right[i]:
            rows, cols = _tent(ys[i, top[i]:bottom[i]], m_h), _tent(xs[i, left[i]:right[i]], m_w)
            part = rows @ masks[i] @ cols.T
            out[i, top[i]:bottom[i], left[i]:right[i]] = part if threshold is None else part >= threshold
    return out


def paste_masks(masks: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float | None = 0.5) -> Tensor:
    """detectron2's ``paste_masks_in_image``, for all masks at once.

    Image pixel ``x`` (centre ``x + 0.5``) samples the mask at ``(x + 0.5 - x1) / (x2 - x1) * M - 0.5`` cells,
    bilinearly with zeros outside (``grid_sample(align_corners=False)``); rows likewise.

    Args:
        masks: ``[R, 1, Mh, Mw]`` or ``[R, Mh, Mw]`` probabilities in 0..1.
        boxes: ``[R, 4]`` x1, y1, x2, y2 in image pixels (detectron2 clips them and drops empty ones first).
        image_size: ``(h, w)`` of the image.
        threshold: pixels with probability ``>= threshold`` are in the mask; None returns the probabilities.
    Returns:
        ``[R, h, w]`` bool masks (float probabilities when ``threshold`` is None).
    """
    masks = _as_masks(masks)
    boxes = boxes.to(masks.dtype)
    h, w = image_size  # ints, or 0-dim tensors while tracing (an int() would freeze the size)
    x1, y1, x2, y2 = boxes.unbind(1)
    centres_y = torch.arange(h, device=masks.device, dtype=masks.dtype) + 0.5
    centres_x = torch.arange(w, device=masks.device, dtype=masks.dtype) + 0.5
    # The grid in [-1, 1], then grid_sample's own unnormalisation, so the rounding is theirs.
    grid_y = (centres_y - y1[:, None]) / (y2 - y1)[:, None] * 2 - 1
    grid_x = (centres_x - x1[:, None]) / (x2 - x1)[:, None] * 2 - 1
    ys = ((grid_y + 1) * masks.shape[1] - 1) / 2
    xs = ((grid_x + 1) * masks.shape[2] - 1) / 2
    return _sample(masks, ys, xs, threshold)


def paste_masks_torchvision(masks: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float | None = None) -> Tensor:
    """torchvision's ``roi_heads.paste_masks_in_image`` (padding 1), for all masks at once.

    The ``M x M`` mask gets a border of zeros (``M + 2`` cells), its box is grown by ``(M + 2) / M`` about
    its centre and truncated to integer corners ``(x1, x2)``; pixels ``x1..x2`` (``n = x2 - x1 + 1`` of them)
    sample the padded mask at ``(x - x1 + 0.5) * (M + 2) / n - 0.5`` as ``F.interpolate(bilinear,
    align_corners=False)`` does; every other pixel is 0.

    Args:
        masks: ``[R, 1, M, M]`` or ``[R, M, M]`` probabilities.
        boxes: ``[R, 4]`` x1, y1, x2, y2 in image pixels.
        image_size: ``(h, w)``.
        threshold: None (torchvision's behaviour) returns probabilities; a float returns ``>= threshold``.
    Returns:
        ``[R, h, w]`` float probabilities (bool with ``threshold``).
    """
    masks = _as_masks(masks)
    side = masks.shape[-1]
    scale = (side + 2) / side
    boxes = boxes.to(masks.dtype)
    centre = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    start = (centre - half).to(torch.int64)
    end = (centre + half).to(torch.int64)
    count = (end - start + 1).clamp(min=1).to(masks.dtype)
    start, end = start.to(masks.dtype), end.to(masks.dtype)
    h, w = image_size  # ints, or 0-dim tensors while tracing
    pixels_y = torch.arange(h, device=masks.device, dtype=masks.dtype)
    pixels_x = torch.arange(w, device=masks.device, dtype=masks.dtype)
    # interpolate's source index in the padded mask, then one cell back into the unpadded one; the
    # clamp at 0 is interpolate's (it samples the zero border there, as zeros outside would).
    ys = (((pixels_y - start[:, 1:2]) + 0.5) * ((side + 2) / count[:, 1:2]) - 0.5).clamp(min=0) - 1
    xs = (((pixels_x - start[:, 0:1]) + 0.5) * ((side + 2) / count[:, 0:1]) - 0.5).clamp(min=0) - 1
    inside_y = (pixels_y >= start[:, 1:2]) & (pixels_y <= end[:, 1:2])
    inside_x = (pixels_x >= start[:, 0:1]) & (pixels_x <= end[:, 0:1])
    # Outside its box torchvision writes zeros; the sample is zero there too except within a cell of it.
    ys = torch.where(inside_y, ys, torch.full_like(ys, -2.0))
    xs = torch.where(inside_x, xs, torch.full_like(xs, -2.0))
    return _sample(masks, ys, xs, threshold)
