"""The pixel format a dense model (detector, semantic segmenter) feeds its backbone.

Dense models take torchvision's input, ``[3, H, W]`` (or ``[N, 3, H, W]``) RGB floats in 0..1, whatever
their weights were trained on, and convert it inside. An :class:`InputFormat` says how: the channel order,
scale, mean and std of the weights' preprocessing record (:class:`~vovnet.weights.pretrained.ImageInput`,
``model.preprocessing``), so a model built on pretrained backbone weights takes the input those weights
expect (:func:`weights_input_format`): detectron2's BGR 0..255 minus its means for the official VoVNetV2
backbones, ImageNet-normalised RGB for VoVNet.pytorch's and timm's (0.5 / 0.5 for timm's ``ra4`` ones).
Dense models record it in their config, so their checkpoints keep it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UsageError
from .vovnet import IMAGENET_MEAN, IMAGENET_STD

CHANNEL_ORDERS = ("RGB", "BGR")
# The keys of a preprocessing record (:class:`~vovnet.weights.pretrained.ImageInput`); those past the pixel
# format (the size, crop and interpolation a classifier is evaluated at) do not apply to dense models, which
# keep each image's size.
RECORD_KEYS = frozenset(("channel_order", "scale", "mean", "std", "input_size", "crop_pct", "interpolation"))


@dataclass(frozen=True)
class InputFormat:
    """``(image[channels] * scale - mean) / std`` on RGB images in 0..1, the channels reversed first when
    ``channel_order`` is ``BGR``; ``mean`` and ``std`` are on the ``scale`` and in ``channel_order``."""

    channel_order: str
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.channel_order not in CHANNEL_ORDERS:
            raise UsageError(f"input_format: channel_order {self.channel_order!r} is not one of {', '.join(CHANNEL_ORDERS)}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise UsageError(f"input_format: mean and std take 3 values each, got {list(self.mean)} and {list(self.std)}")
        if not self.scale > 0 or not all(s > 0 for s in self.std):
            raise UsageError(f"input_format: scale and std must be positive, got {self.scale} and {list(self.std)}")

    @property
    def bgr(self) -> bool:
        return self.channel_order == "BGR"

    @classmethod
    def from_record(cls, record: "InputFormat | Mapping | str") -> "InputFormat":
        """From a key of ``INPUT_FORMATS`` or a preprocessing record (``channel_order``, ``scale``, ``mean``,
        ``std``; missing ones are ImageNet RGB's, the scale 255 when the means are; a classifier's size, crop and
        interpolation are ignored)."""
        if isinstance(record, InputFormat):
            return record
        if isinstance(record, str):
            if record not in INPUT_FORMATS:
                raise UsageError(f"unknown input_format {record!r}; choose from {', '.join(INPUT_FORMATS)} or give "
                                 "{channel_order: BGR|RGB, scale: 1|255, mean: [...], std: [...]}")
            return INPUT_FORMATS[record]
        if not isinstance(record, Mapping):
            raise UsageError(f"input_format takes a name or a mapping, got {record!r}")
        unknown = sorted(set(record) - RECORD_KEYS)
        if unknown:
            raise UsageError(f"unknown input_format field(s): {', '.join(map(str, unknown))}")
        mean, std = record.get("mean", IMAGENET_MEAN), record.get("std", IMAGENET_STD)
        scale = record.get("scale", 255.0 if max(mean) > 1 else 1.0)  # detectron2-style means say 0..255 by their size
        return cls(record.get("channel_order", "RGB"), scale, mean, std)

    def record(self) -> dict:
        """The preprocessing-record form (``model.preprocessing``): ``channel_order``, ``scale``, ``mean``, ``std``."""
        return dict(channel_order=self.channel_order, scale=self.scale, mean=self.mean, std=self.std)

    def normalize(self, images: Tensor) -> Tensor:
        """``images [..., 3, H, W]`` (RGB, 0..1) -> the backbone's input, of the same shape and dtype."""
        if self.bgr:
            images = images.flip(-3)
        if self.scale != 1.0:
            images = images * self.scale
        mean = torch.as_tensor(self.mean, dtype=images.dtype, device=images.device)[:, None, None]
        std = torch.as_tensor(self.std, dtype=images.dtype, device=images.device)[:, None, None]
        return (images - mean) / std


INPUT_FORMATS = {
    "rgb": InputFormat("RGB", 1.0, IMAGENET_MEAN, IMAGENET_STD),  # torchvision's detectors, ImageNet backbones
    "bgr255": InputFormat("BGR", 255.0, (103.530, 116.280, 123.675), (1.0, 1.0, 1.0)),  # detectron2's defaults
}

