"""Semantic heads over a backbone's ``output_shape()``: Panoptic FPN's semantic branch, DeepLabV3's ASPP and DeepLabV3+.

A head takes the ``OrderedDict`` of feature maps a backbone returns (an
:class:`~vovnet.models.backbone.FPNBackbone`, or a bare feature body) and gives class logits at its own
stride; :class:`~vovnet.tasks.segmentation.Segmenter` upsamples them to the input size. Heads depend
only on the backbone's ``output_shape()``: ``{name: ShapeSpec(channels, stride)}``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead

from ...errors import UsageError
from ..backbone import ShapeSpec

# DeepLabV3's atrous rates at output stride 16 (Chen et al. 2017); they halve when the stride doubles.
DEEPLAB_RATES_AT_16 = (6, 12, 18)


def _conv_gn_relu(in_chs: int, out_chs: int) -> nn.Sequential:
    """3x3 conv -> GroupNorm -> ReLU, with up to 32 groups of at least 4 channels (detectron2's GN(32) at
    128 channels); single-channel groups would zero a 1x1 map, which small inputs give at stride 32."""
    groups = math.gcd(out_chs, max(1, min(32, out_chs // 4)))
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False), nn.GroupNorm(groups, out_chs), nn.ReLU(inplace=True))


def _upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class SemanticFPNHead(nn.Module):
    """Panoptic FPN's semantic branch (Kirillov et al. 2019; detectron2's ``SemSegFPNHead``).

    A level of stride ``s`` goes through ``max(1, log2(s / 4))`` conv3x3-GroupNorm-ReLU steps; after each
    step a map still coarser than stride 4 is upsampled 2x (bilinear) to the size of the next finer level,
    so inputs of any size line up without padding. The stride-4 maps are summed and a 1x1 conv predicts.

    Args:
        in_shapes: the backbone's ``output_shape()``.
        num_classes: output channels.
        in_features: the levels used, finest first; their strides must double from one to the next.
        channels: width of every conv step (128 in the paper).

    ``forward``: ``{name: [N, C_in, H_s, W_s]}`` -> logits ``[N, num_classes, H_4, W_4]`` (the finest level's size).
    """

    def __init__(
        self,
        in_shapes: Mapping[str, ShapeSpec],
        num_classes: int,
        in_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
        channels: int = 128,
    ):
        super().__init__()
        missing = [n for n in in_features if n not in in_shapes]
        if missing:
            raise UsageError(f"the backbone has no level(s) {', '.join(missing)}; it has {', '.join(in_shapes)}")
        strides = [in_shapes[n].stride for n in in_features]
        if any(b != 2 * a for a, b in zip(strides, strides[1:])):
            raise UsageError(f"semantic FPN levels must double in stride, got {strides}")
        self.in_features = list(in_features)
        self.common_stride = strides[0]
        scale_heads = []
        for name, stride in zip(in_features, strides):
            steps = max(1, int(math.log2(stride // self.common_stride)))
            widths = [in_shapes[name].channels] + [channels] * steps
            scale_heads.append(nn.ModuleList(_conv_gn_relu(a, b) for a, b in zip(widths, widths[1:])))
        self.scale_heads = nn.ModuleList(scale_heads)
        self.predictor = nn.Conv2d(channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        maps = [features[n] for n in self.in_features]
        sizes = [m.shape[-2:] for m in maps]
        out = None
        for level, (x, steps) in enumerate(zip(maps, self.scale_heads)):
            for k, step in enumerate(steps):
                x = step(x)
                finer = level - k - 1
                if finer >= 0:
                    x = _upsample(x, sizes[finer])
            out = x if out is None else out + x
        return self.predictor(out)


def level_with_stride(in_shapes: Mapping[str, ShapeSpec], stride: int, what: str) -> str:
    """The name of the first map of ``in_shapes`` at ``stride``; a UsageError naming ``what`` needs it otherwise."""
    levels = [name for name, shape in in_shapes.items() if shape.stride == stride]
    if not levels:
        raise UsageError(f"{what} reads the stride-{stride} map; the backbone gives strides {sorted({s.stride for s in in_shapes.values()})}")
    return levels[0]


def _atrous_rates(stride: int) -> tuple[int, ...]:
    return tuple(max(1, r * 16 // stride) for r in DEEPLAB_RATES_AT_16)


class DeepLabV3Head(nn.Module):
    """torchvision's ``DeepLabHead`` (ASPP, 256 channels) on one backbone level.

    Args:
        in_shapes: the backbone's ``output_shape()``.
        num_classes: output channels.
        stride: which level feeds the head: 16 (``p4``) or 32 (``p5``); the atrous rates are
            (6, 12, 18) at stride 16 and half that at 32, as in the DeepLabV3 paper.

    ``forward``: ``{name: maps}`` -> logits ``[N, num_classes, H/stride, W/stride]``.
    """

    def __init__(self, in_shapes: Mapping[str, ShapeSpec], num_classes: int, stride: int = 16):
        super().__init__()
        if stride not in (16, 32):
            raise UsageError(f"DeepLabV3 runs on the stride-16 or stride-32 level, got stride {stride}")
        self.in_feature = level_with_stride(in_shapes, stride, "DeepLabV3")
        self.head = DeepLabHead(in_shapes[self.in_feature].channels, num_classes, _atrous_rates(stride))

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.head(features[self.in_feature])


class DeepLabV3PlusHead(nn.Module):
    """DeepLabV3+ (Chen et al. 2018): torchvision's ASPP on the stride-16 (or 32) map, upsampled to stride 4
    and joined by the stride-4 map projected to 48 channels; two conv3x3-BN-ReLU steps then a 1x1 conv predict.
    The ASPP sees the whole image at every position; the stride-4 map gives the boundaries.

    Args:
        in_shapes: the backbone's ``output_shape()`` (with a stride-4 map and the ``stride`` one).
        num_classes: output channels.
        stride: the level under the ASPP, 16 or 32 (atrous rates as :class:`DeepLabV3Head`).
        channels: width of the ASPP and the decoder (256 in the paper).

    ``forward``: ``{name: maps}`` -> logits ``[N, num_classes, H/4, W/4]``.
    """

    LOW_LEVEL_CHANNELS = 48

    def __init__(self, in_shapes: Mapping[str, ShapeSpec], num_classes: int, stride: int = 16, channels: int = 256):
        super().__init__()
        if stride not in (16, 32):
            raise UsageError(f"DeepLabV3+ runs its ASPP on the stride-16 or stride-32 level, got stride {stride}")
        self.in_feature = level_with_stride(in_shapes, stride, "DeepLabV3+'s ASPP")
        self.low_feature = level_with_stride(in_shapes, 4, "DeepLabV3+'s decoder")
        self.aspp = ASPP(in_shapes[self.in_feature].channels, _atrous_rates(stride), channels)
        low = self.LOW_LEVEL_CHANNELS
        self.project = nn.Sequential(nn.Conv2d(in_shapes[self.low_feature].channels, low, 1, bias=False), nn.BatchNorm2d(low), nn.ReLU(inplace=True))
        self.fuse = nn.Sequential(
            nn.Conv2d(channels + low, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
        )
        self.predictor = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        low = self.project(features[self.low_feature])
        context = _upsample(self.aspp(features[self.in_feature]), low.shape[-2:])
        return self.predictor(self.fuse(torch.cat([context, low], dim=1)))
