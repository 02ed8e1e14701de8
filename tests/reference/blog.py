"""The seed blog's network, as the user gave it (../shared/seeds/), for parity tests only.

Kept verbatim in behaviour (ReLU6, ReLU-then-sigmoid gate, projection shortcut on every block,
stem strides 2-1-1, padded max-pool before every stage) so converted blog weights can be checked
against the blog's own outputs. Only the factories pass ``num_classes`` through.
"""

import torch
import torch.nn as nn


def Conv3x3BNReLU(in_channels, out_channels, stride, groups=1):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


def Conv1x1BNReLU(in_channels, out_channels):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU6(inplace=True)
    )


class eSE_Module(nn.Module):
    def __init__(self, channel, ratio=16):
        super().__init__()
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.excitation = nn.Sequential(nn.Conv2d(channel, channel, 1, padding=0), nn.ReLU(inplace=True), nn.Sigmoid())

    def forward(self, x):
        return x * self.excitation(self.squeeze(x)).expand_as(x)


class OSAv2_module(nn.Module):
    def __init__(self, in_channels, mid_channels, out_channels, block_nums=5):
        super().__init__()
        self._layers = nn.ModuleList([Conv3x3BNReLU(in_channels, mid_channels, 1)])
        for _ in range(block_nums - 1):
            self._layers.append(Conv3x3BNReLU(mid_channels, mid_channels, 1))
        self.conv1x1 = Conv1x1BNReLU(in_channels + mid_channels * block_nums, out_channels)
        self.ese = eSE_Module(out_channels)
        self.pass_conv1x1 = Conv1x1BNReLU(in_channels, out_channels)

    def forward(self, x):
        residual = x
        outputs = [x]
        for _layer in self._layers:
            x = _layer(x)
            outputs.append(x)
        out = self.ese(self.conv1x1(torch.cat(outputs, dim=1)))
        return out + self.pass_conv1x1(residual)


class VoVNet(nn.Module):
    def __init__(self, planes, layers, num_classes=2):
        super().__init__()
        self.stage1 = nn.Sequential(
            Conv3x3BNReLU(3, 64, 2), Conv3x3BNReLU(64, 64, 1), Conv3x3BNReLU(64, 128, 1)
        )
        self.stage2 = self._make_layer(*planes[0], layers[0])
        self.stage3 = self._make_layer(*planes[1], layers[1])
        self.stage4 = self._make_layer(*planes[2], layers[2])
        self.stage5 = self._make_layer(*planes[3], layers[3])
        self.avgpool = nn.AdaptiveAvgPool2d(output_size=1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(p=0.2)
        self.linear = nn.Linear(planes[3][2], num_classes)

    def _make_layer(self, in_channels, mid_channels, out_channels, block_num):
        layers = [nn.MaxPool2d(kernel_size=3, stride=2, padding=1)]
        for _ in range(block_num):
            layers.append(OSAv2_module(in_channels, mid_channels, out_channels))
            in_channels = out_channels
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.stage5(self.stage4(self.stage3(self.stage2(self.stage1(x)))))
        return self.linear(self.dropout(self.flatten(self.avgpool(x))))


_WIDE = [[128, 128, 256], [256, 160, 512], [512, 192, 768], [768, 224, 1024]]
BLOG_MODELS = {
    "vovnet27_slim": ([[128, 64, 128], [128, 80, 256], [256, 96, 384], [384, 112, 512]], [1, 1, 1, 1]),
    "vovnet39": (_WIDE, [1, 1, 2, 2]),
    "vovnet57": (_WIDE, [1, 1, 4, 3]),
}


def blog_model(name, num_classes=2):
    planes, layers = BLOG_MODELS[name]
    return VoVNet(planes, layers, num_classes)
