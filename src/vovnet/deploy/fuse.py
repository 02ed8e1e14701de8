"""Graph-free fusions for inference: batch norm folded into the convolution in front of it."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops.misc import FrozenBatchNorm2d

from ..models.layers import ConvNormAct, SeparableConvNormAct

# Unit class -> the attribute holding the convolution its ``norm`` follows.
CONV_BEFORE_NORM: dict[type, str] = {ConvNormAct: "conv", SeparableConvNormAct: "conv_pw"}
FOLDABLE_NORMS = (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)


def _folded_conv(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """A new conv computing ``norm(conv(x))`` with ``norm``'s running statistics (eval semantics)."""
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
        bias=True, padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        weight, bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
        )
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
    return fused


def fold_batch_norm_(model: nn.Module) -> int:
    """Fold every batch norm that directly follows a convolution into it, in place.

    The norm becomes ``nn.Identity`` and the conv gains a bias; outputs equal the eval-mode model's
    up to float rounding. Group norm cannot be folded and is left alone. Returns the number folded.
    """
    folded = 0
    for unit in model.modules():
        conv_name = CONV_BEFORE_NORM.get(type(unit))
        if conv_name is None or not isinstance(unit.norm, FOLDABLE_NORMS):
            continue
        if getattr(unit.norm, "track_running_stats", True) is False:
            continue  # normalises with batch statistics even in eval mode
        setattr(unit, conv_name, _folded_conv(getattr(unit, conv_name), unit.norm))
        unit.norm = nn.Identity()
        folded += 1
    return folded
