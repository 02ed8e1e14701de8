"""Graph-free fusions for inference: batch norm folded into the convolution in front of it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops.misc import FrozenBatchNorm2d

from ..models.layers import ConvNormAct, EffectiveSE, SeparableConvNormAct

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


def _foldable(norm: nn.Module) -> bool:
    # A batch norm without running statistics normalises with the batch's even in eval mode.
    return isinstance(norm, FOLDABLE_NORMS) and getattr(norm, "track_running_stats", True) is not False


def fold_batch_norm_(model: nn.Module) -> int:
    """Fold every batch norm (frozen ones too) that directly follows a convolution into it, in place.

    Found by module type, wherever they are: the norm of a VoVNet unit (:data:`CONV_BEFORE_NORM`), and a
    ``Conv2d`` followed by a norm in any ``nn.Sequential`` (torchvision's ``Conv2dNormActivation``, its
    DeepLab and FCN heads, ...). The norm becomes ``nn.Identity`` and the conv gains a bias; outputs equal
    the eval-mode model's up to float rounding. Group norm cannot be folded and is left alone. Returns the
    number folded.
    """
    folded = 0
    for unit in model.modules():
        conv_name = CONV_BEFORE_NORM.get(type(unit))
        if conv_name is not None and _foldable(unit.norm):
            setattr(unit, conv_name, _folded_conv(getattr(unit, conv_name), unit.norm))
            unit.norm = nn.Identity()
            folded += 1
        elif isinstance(unit, nn.Sequential):
            for i in range(len(unit) - 1):
                if type(unit[i]) is nn.Conv2d and _foldable(unit[i + 1]):
                    unit[i], unit[i + 1] = _folded_conv(unit[i], unit[i + 1]), nn.Identity()
                    folded += 1
    return folded


# Activation -> oneDNN post-op (attr, scalars, algorithm) that computes it inside the convolution.
ONEDNN_POST_OPS: dict[type, tuple[str, list, str]] = {
    nn.Identity: ("none", [], ""),
    nn.ReLU: ("relu", [], ""),
    nn.ReLU6: ("hardtanh", [0.0, 6.0], ""),
    nn.SiLU: ("swish", [], ""),
    nn.Hardswish: ("hardswish", [], ""),
}


def onednn_post_op(act: nn.Module) -> tuple[str, list, str] | None:
    """oneDNN's name for ``act`` as a convolution post-op, or None where it has none."""
    if isinstance(act, nn.GELU):
        return "gelu", [], act.approximate
    return ONEDNN_POST_OPS.get(type(act))


class OneDNNConvAct(nn.Module):
    """Convolution (with folded norm) and activation as one oneDNN call, weights packed once per input shape.

    CPU only, channels_last input. ``[N, C_in, H, W] -> [N, C_out, H', W']``; the same values as
    ``act(conv(x))`` without a second pass over the output and without re-laying out the weights on
    every call (oneDNN's packed layout depends on the input shape, so a new shape packs them once; the
    last ``PACKED_SHAPES`` shapes are kept, e.g. a detection head's pyramid levels).
    """

    PACKED_SHAPES = 8

    def __init__(self, conv: nn.Conv2d, act: nn.Module):
        super().__init__()
        self.register_buffer("weight", conv.weight.detach().clone())
        self.register_buffer("bias", conv.bias.detach().clone() if conv.bias is not None else None)
        self.geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self.post_op = onednn_post_op(act)
        self._packed: dict[torch.Size, torch.Tensor] = {}

    def __getstate__(self):  # packed oneDNN tensors cannot be copied or pickled; they are rebuilt on demand
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        return {**state, "_packed": {}}

    def _reorder(self, x: torch.Tensor) -> torch.Tensor:
        """The weight in oneDNN's layout for inputs shaped as ``x``."""
        padding, stride, dilation, groups = self.geometry
        return torch.ops.mkldnn._reorder_convolution_weight(self.weight, padding, stride, dilation, groups, list(x.shape))

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed.pop(x.shape, None)
        if packed is None:
            packed = self._reorder(x)
            if len(self._packed) >= self.PACKED_SHAPES:
                self._packed.pop(next(iter(self._packed)))  # the least recently used
        self._packed[x.shape] = packed  # (re)inserted last: most recently used
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding, stride, dilation, groups = self.geometry
        attr, scalars, algorithm = self.post_op
        return torch.ops.mkldnn._convolution_pointwise(
            x, self._packed_weight(x), self.bias, padding, stride, dilation, groups, attr, scalars, algorithm
        )


class OneDNNConvTransposeAct(OneDNNConvAct):
    """Transposed convolution and activation as one oneDNN call, weights packed once per input shape (as
    :class:`OneDNNConvAct`). ``[N, C_in, H, W] -> [N, C_out, H', W']``, the values of ``act(deconv(x))``.

    The SAG-Mask head upsamples every RoI's map with one (``[R, C, 14, 14] -> [R, C, 28, 28]``); fused, its
    ReLU costs no second pass over that large output.
    """

    def __init__(self, deconv: nn.ConvTranspose2d, act: nn.Module):
        super().__init__(deconv, act)
        self.output_padding = list(deconv.output_padding)

    def _reorder(self, x: torch.Tensor) -> torch.Tensor:
        padding, stride, dilation, groups = self.geometry
        return torch.ops.mkldnn._reorder_convolution_transpose_weight(
            self.weight, padding, self.output_padding, stride, dilation, groups, list(x.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding, stride, dilation, groups = self.geometry
        attr, scalars, algorithm = self.post_op
        return torch.ops.mkldnn._convolution_transpose_pointwise(
            x, self._packed_weight(x), self.bias, padding, self.output_padding, stride, dilation, groups, attr, scalars, algorithm
        )


def fuse_conv_act_(unit: nn.Module, conv_name: str, act_name: str) -> bool:
    """Make ``unit.<conv_name>`` (a ``Conv2d`` or ``ConvTranspose2d``) and the activation ``unit.<act_name>``
    applied to its output one oneDNN call, in place (the activation becomes ``nn.Identity``), for layers
    that a module holds as attributes rather than in an ``nn.Sequential`` (the SAG-Mask head's deconvolution
    and its ReLU). CPU only. Returns whether it was fused."""
    conv, act = getattr(unit, conv_name), getattr(unit, act_name)
    fused_type = {nn.Conv2d: OneDNNConvAct, nn.ConvTranspose2d: OneDNNConvTransposeAct}.get(type(conv))
    if fused_type is None or not _packable(conv, type(conv)) or onednn_post_op(act) is None:
        return False
    setattr(unit, conv_name, fused_type(conv, act))
    setattr(unit, act_name, nn.Identity())
    return True


def _onednn_unit(unit: nn.Module) -> nn.Module | None:
    """The oneDNN replacement of a folded conv-norm-act unit, or None where it cannot be fused."""
    if not isinstance(unit.norm, nn.Identity) or onednn_post_op(unit.act) is None:
        return None
    if isinstance(unit, ConvNormAct):
        return OneDNNConvAct(unit.conv, unit.act)
    return nn.Sequential(OneDNNConvAct(unit.conv_dw, nn.Identity()), OneDNNConvAct(unit.conv_pw, unit.act))


def _packable(conv: nn.Module, kind: type = nn.Conv2d) -> bool:
    return (type(conv) is kind and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and conv.weight.device.type == "cpu")


def _fuse_sequential_(seq: nn.Sequential) -> int:
    """``Conv2d`` (+ folded norms) + activation runs of ``seq`` -> :class:`OneDNNConvAct` and identities."""
    fused = 0
    for i in range(len(seq)):
        if not _packable(seq[i]):
            continue
        j = i + 1
        while j < len(seq) and type(seq[j]) is nn.Identity:
            j += 1
        if j < len(seq) and onednn_post_op(seq[j]) is not None:
            seq[i], seq[j] = OneDNNConvAct(seq[i], seq[j]), nn.Identity()
            fused += 1
    return fused


def fuse_onednn_(model: nn.Module) -> int:
    """Replace convolutions and their activations by :class:`OneDNNConvAct`, in place: folded VoVNet
    conv-norm-act units, and ``Conv2d`` (+ folded norms) + activation in any ``nn.Sequential`` (torchvision's
    ``Conv2dNormActivation``, the SAG-Mask and DeepLab heads). CPU inference only; call
    :func:`fold_batch_norm_` first. Returns the number of convolutions fused."""
    replacements = []
    sequentials = []
    for parent in model.modules():
        if isinstance(parent, nn.Sequential):
            sequentials.append(parent)
        for name, child in parent.named_children():
            if type(child) in CONV_BEFORE_NORM:
                fused = _onednn_unit(child)
                if fused is not None:
                    replacements.append((parent, name, fused))
    for parent, name, fused in replacements:
        setattr(parent, name, fused)
    return len(replacements) + sum(_fuse_sequential_(seq) for seq in sequentials)


class PooledLinear(nn.Module):
    """A 1x1 convolution applied to a pooled ``[N, C, 1, 1]`` map, computed as one matrix multiply.

    oneDNN re-lays out the full ``C x C`` weight for every such call, which costs more than the
    product itself; ``F.linear`` does not.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().flatten(1).clone(), requires_grad=False)
        self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False) if conv.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.flatten(1), self.weight, self.bias)[:, :, None, None]


def fuse_ese_(model: nn.Module) -> int:
    """Give every eSE gate a :class:`PooledLinear` instead of its 1x1 conv, in place. Returns the count."""
    gates = [m for m in model.modules() if isinstance(m, EffectiveSE) and isinstance(m.fc, nn.Conv2d)]
    for gate in gates:
        gate.fc = PooledLinear(gate.fc)
    return len(gates)



def pack_convolutions_(model: nn.Module) -> int:
    """Every remaining plain ``Conv2d`` (one with no activation to fuse: before a group norm, a predictor)
    becomes :class:`OneDNNConvAct` without a post-op, in place: packed weights, and oneDNN for every input
    size (PyTorch sends small batch-1 maps, such as a detection head's P6 and P7, to a much slower
    im2col path). CPU only; call after :func:`fuse_onednn_`. Returns the count."""
    found = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children() if _packable(child)]
    for parent, name, conv in found:
        setattr(parent, name, OneDNNConvAct(conv, nn.Identity()))
    return len(found)
