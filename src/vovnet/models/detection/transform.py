"""What a detector does to its input images before the backbone: pixel format, resizing, padding.

Our detectors take torchvision's input, a list of ``[3, H, W]`` RGB floats in 0..1, whatever the weights
were trained on. An input format (:class:`~vovnet.models.input_format.InputFormat`) converts that to what the
weights expect: torchvision's ImageNet-normalised RGB, detectron2's BGR 0..255 minus its means (the official
VoVNet and CenterMask weights), or any other weights' record. A resize rule sets the size the detector sees:

- ``torchvision``: torchvision's ``GeneralizedRCNNTransform`` (scale factor ``min(short / min(h, w),
  long / max(h, w))``, output size floored, bilinear without antialiasing);
- ``detectron2``: detectron2's ``ResizeShortestEdge`` (the same scale, output size rounded to nearest),
  bilinear with antialiasing. detectron2 resizes ``uint8`` images with PIL, whose antialiased bilinear
  this follows, but on floats: pixel values differ from PIL's by its rounding to whole levels.

A ``min_size`` of None keeps every image at its own size (the official model called directly). Batches
are zero-padded to a multiple of 32 after normalisation, as both libraries do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform, _resize_image_and_masks, resize_boxes

from ..input_format import INPUT_FORMATS, InputFormat

RESIZE_RULES = ("torchvision", "detectron2")


def detectron2_size(h: int, w: int, short: int, long: int) -> tuple[int, int]:
    """detectron2's ``ResizeShortestEdge.get_output_shape``: short side ``short``, long side at most ``long``."""
    scale = short / min(h, w)
    new_h, new_w = (short, scale * w) if h < w else (scale * h, short)
    if max(new_h, new_w) > long:
        scale = long / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def detectron2_size_tensor(h: int | Tensor, w: int | Tensor, short: int, long: float) -> tuple[Tensor, Tensor]:
    """:func:`detectron2_size` in tensor arithmetic: ``h``, ``w`` ints or 0-dim tensors (the traced image shape,
    so that an export resizes any image) -> 0-dim int64 ``(new_h, new_w)``. In float64, as Python's floats, so
    the sizes are :func:`detectron2_size`'s exactly, the ``+ 0.5`` ties included."""
    # Shape [1], not 0-dim: the ONNX exporter computes 0-dim tensors in float32. Tensor / tensor: a Python
    # number over a tensor is computed as number * (1 / tensor), rounded twice.
    h, w = torch.as_tensor(h).to(torch.float64).reshape(1), torch.as_tensor(w).to(torch.float64).reshape(1)
    short_t, long_t = torch.full_like(h, short), torch.full_like(h, long)
    scale = short_t / torch.minimum(h, w)
    landscape = h < w
    new_h = torch.where(landscape, short_t, scale * h)
    new_w = torch.where(landscape, scale * w, short_t)
    longest = torch.maximum(new_h, new_w)
    too_long = longest > long_t
    new_h = torch.where(too_long, new_h * (long_t / longest), new_h)
    new_w = torch.where(too_long, new_w * (long_t / longest), new_w)
    return torch.floor(new_h + 0.5).to(torch.int64)[0], torch.floor(new_w + 0.5).to(torch.int64)[0]


class DetectorTransform(GeneralizedRCNNTransform):
    """torchvision's detector transform with an input format, a resize rule, multi-scale training sizes and
    no resizing at all when ``min_size`` is None.

    Args:
        min_size: short side at evaluation (None: images keep their size).
        max_size: long side limit.
        input_format: an :class:`InputFormat` or a key of ``INPUT_FORMATS``.
        resize_rule: ``torchvision`` or ``detectron2``.
        train_sizes: short sides drawn from at random for each training image (None: ``min_size``).
    """

    def __init__(
        self,
        min_size: int | None,
        max_size: int | None,
        *,
        input_format: InputFormat | str = "rgb",
        resize_rule: str = "torchvision",
        train_sizes: tuple[int, ...] | None = None,
    ):
        fmt = InputFormat.from_record(input_format)
        mean = [m / fmt.scale for m in fmt.mean]
        std = [s / fmt.scale for s in fmt.std]
        super().__init__(min_size or 1, max_size or 1, mean, std)
        if resize_rule not in RESIZE_RULES:
            raise ValueError(f"resize_rule {resize_rule!r} is not one of {', '.join(RESIZE_RULES)}")
        self.input_format = fmt
        self.resize_rule = resize_rule
        self.test_size = min_size
        self.long_side = max_size if max_size is not None else math.inf
        self.train_sizes = tuple(train_sizes) if train_sizes else None

    def normalize(self, image: Tensor) -> Tensor:
        if not image.is_floating_point():
            raise TypeError(f"expected float images in 0..1, got {image.dtype}")
        return self.input_format.normalize(image)  # for RGB at scale 1, torchvision's own arithmetic

    def _short_side(self) -> int | None:
        if self.training and self.train_sizes:
            return self.torch_choice(self.train_sizes)
        if self.training and self.test_size is not None:
            return self.torch_choice((self.test_size,))  # torchvision draws even from one size: same random stream
        return self.test_size

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor] | None]:
        short = self._short_side()
        if short is None:
            return image, target
        h, w = image.shape[-2:]
        if self.resize_rule == "torchvision":
            image, target = _resize_image_and_masks(image, float(short), float(self.long_side), target)
        else:
            size = detectron2_size_tensor(h, w, short, self.long_side)
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
            if target is not None and "masks" in target:
                target["masks"] = F.interpolate(target["masks"][:, None].float(), size=size, mode="nearest")[:, 0].byte()
        if target is not None:
            target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        return image, target


__all__ = ["DetectorTransform", "INPUT_FORMATS", "InputFormat", "RESIZE_RULES", "detectron2_size"]
