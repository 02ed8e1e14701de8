"""Building blocks of the OSA network: conv-norm-act units, the eSE gate, stochastic depth.

Their forwards go through :mod:`vovnet.models.memory_efficient` (``conv_forward``, ``norm_act``,
``gate_channels``), which is the plain operation except under memory-efficient training."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d
from torchvision.ops.stochastic_depth import StochasticDepth

from .memory_efficient import conv_forward, gate_channels, norm_act

_ACTS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "hardswish": nn.Hardswish,
}


def make_act(name: str) -> nn.Module:
    """An activation by name; in-place where the module supports it."""
    cls = _ACTS[name]
    return cls(inplace=True) if cls in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish) else cls()


def group_count(channels: int, wanted: int = 32) -> int:
    """Largest divisor of ``channels`` not above ``wanted`` (VoVNet widths like 80 or 112 are not multiples of 32)."""
    return math.gcd(channels, wanted)


def make_norm(name: str, channels: int) -> nn.Module:
    if name == "batch":
        return nn.BatchNorm2d(channels)
    if name == "frozen_batch":
        return FrozenBatchNorm2d(channels)
    if name == "sync_batch":
        return nn.SyncBatchNorm(channels)
    if name == "group":
        return nn.GroupNorm(group_count(channels), channels)
    raise ValueError(f"unknown norm {name!r}")


class ConvNormAct(nn.Module):
    """``k x k`` convolution without bias -> norm -> activation."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1, *, norm: str, act: str):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.norm = make_norm(norm, out_chs)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norm_act(conv_forward(self.conv, x), self.norm, self.act)


class SeparableConvNormAct(nn.Module):
    """Depthwise 3x3 (no norm) -> pointwise 1x1 -> norm -> activation, as in the official dw variants."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, *, norm: str, act: str):
        super().__init__()
        self.conv_dw = nn.Conv2d(in_chs, in_chs, 3, stride, padding=1, groups=in_chs, bias=False)
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.norm = make_norm(norm, out_chs)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norm_act(self.conv_pw(conv_forward(self.conv_dw, x)), self.norm, self.act)


class EffectiveSE(nn.Module):
    """eSE: ``x * gate(fc(mean_hw(x)))`` with one full-width 1x1 conv (with bias), no reduction.

    ``gate="hard_sigmoid"`` is the paper's ``relu6(z + 3) / 6``; ``"relu_sigmoid"`` reproduces the
    seed blog's ``sigmoid(relu(z))``.
    """

    def __init__(self, channels: int, gate: str = "hard_sigmoid"):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(x.mean((2, 3), keepdim=True))
        if self.gate == "hard_sigmoid":
            z = F.hardsigmoid(z)
        else:
            z = torch.sigmoid(F.relu(z))
        return gate_channels(x, z)


class DropPath(StochasticDepth):
    """Per-sample stochastic depth on a residual branch (torchvision's implementation)."""

    def __init__(self, p: float):
        super().__init__(p, mode="row")


def freeze_norm_layers(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm/SyncBatchNorm below ``module`` by a FrozenBatchNorm2d with the same statistics.

    Returns the (possibly new) module, so a bare norm layer can be converted too.
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.track_running_stats:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new_child = freeze_norm_layers(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
