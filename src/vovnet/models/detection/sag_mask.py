"""The spatial-attention-guided mask head of CenterMask (SAG-Mask), as in the official centermask2 code.

The seed blog's ``SAG_Mask`` pooled over space (3x3 average/max pools) and added a residual; the paper's
module pools over CHANNELS: for every RoI pixel it takes the mean and the max of the feature vector,
turns that 2-channel map into one attention logit with a 3x3 conv, and gates every channel with its
sigmoid. ``vovnet.SAG_Mask`` is an alias of :class:`SAGMaskHead`.
"""

from __future__ import annotations

import torch
from torch import nn


class SpatialAttention(nn.Module):
    """``x * sigmoid(conv3x3([mean_c(x), max_c(x)]))``: one gate per pixel, shared by all channels.

    ``[R, C, H, W] -> [R, C, H, W]``.
    """

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The gate ``[R, 1, H, W]`` in (0, 1)."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class SAGMaskHead(nn.Module):
    """SAG-Mask: ``num_convs`` x (3x3 conv + ReLU) -> spatial attention -> 2x2/2 deconv + ReLU -> 1x1 predictor.

    Args:
        in_channels: channels of the pooled RoI features (the FPN width).
        num_classes: mask channels, one per class (torchvision convention: index 0 is background
            and unused; the mask of class ``k`` is channel ``k``).
        conv_dims: width of the head (256; 128 for CenterMask-Lite).
        num_convs: 3x3 convs before the attention (4; 2 for CenterMask-Lite).

    ``forward``: RoI features ``[R, in_channels, S, S]`` -> mask logits ``[R, num_classes, 2S, 2S]``
    (S = 14 in CenterMask, giving 28x28 masks); with ``channels [R]`` only each RoI's own channel,
    ``[R, 1, 2S, 2S]`` (inference uses one class's mask per RoI: see :func:`own_channel_logits`).
    """

    def __init__(self, in_channels: int, num_classes: int, conv_dims: int = 256, num_convs: int = 4):
        super().__init__()
        convs: list[nn.Module] = []
        width = in_channels
        for _ in range(num_convs):
            convs += [nn.Conv2d(width, conv_dims, 3, padding=1), nn.ReLU(inplace=True)]
            width = conv_dims
        self.convs = nn.Sequential(*convs)
        self.attention = SpatialAttention(3)
        self.deconv = nn.ConvTranspose2d(width, conv_dims, 2, stride=2)
        self.deconv_act = nn.ReLU(inplace=True)  # a module of its own, so that deploy fuses it into the deconv
        self.predictor = nn.Conv2d(conv_dims, num_classes, 1)
        self.num_classes = num_classes
        for m in [*self.convs, self.attention.conv, self.deconv]:
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # detectron2's c2_msra_fill
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: torch.Tensor, channels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.deconv_act(self.deconv(self.attention(self.convs(x))))
        return self.predictor(x) if channels is None else own_channel_logits(self.predictor, x, channels)


def own_channel_logits(predictor: nn.Module, x: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution's output at one channel per RoI: ``x [R, C, H, W]``, ``channels [R]`` -> ``[R, 1, H, W]``.

    The values of ``predictor(x)[arange(R), channels]``, computing ``R`` maps instead of ``R x K`` (80 COCO
    classes: 1/81 of the work) from the weight rows of those channels. ``predictor``: anything with a 1x1
    ``weight [K, C, 1, 1]`` and a ``bias [K]`` or None (a ``Conv2d``, or deploy's packed one).
    """
    weight = predictor.weight[channels, :, 0, 0]  # [R, C]
    # [R, 1, 1, C] @ [R, H, C, W] -> [R, H, 1, W]: a batched matrix product over views of x (channels_last
    # too), with no reshape, which an export could not resolve for R = 0
    out = (weight[:, None, None, :] @ x.transpose(1, 2)).transpose(1, 2)
    return out if predictor.bias is None else out + predictor.bias[channels][:, None, None, None]


SAG_Mask = SAGMaskHead
