"""An independent, functional forward pass over an official-layout (vovnet-detectron2) state dict.

Written from the published description (REFERENCE.md section 2-3), not from our modules: it walks
the official key names directly with torch.nn.functional, so a converter or architecture bug on our
side cannot hide in both places. Used only by parity tests.
"""

import torch
import torch.nn.functional as F


def _bn_relu(sd, prefix, x):
    x = F.batch_norm(x, sd[prefix + ".running_mean"], sd[prefix + ".running_var"], sd[prefix + ".weight"], sd[prefix + ".bias"], False, 0.0, 1e-5)
    return F.relu(x)


def _unit(sd, prefix, x, stride=1):
    """conv-norm-relu (``prefix/conv``) or dw -> pw -> norm -> relu (``prefix/dw_conv3x3``)."""
    if prefix + "/dw_conv3x3.weight" in sd:
        w = sd[prefix + "/dw_conv3x3.weight"]
        x = F.conv2d(x, w, stride=stride, padding=1, groups=w.shape[0])
        x = F.conv2d(x, sd[prefix + "/pw_conv1x1.weight"])
        return _bn_relu(sd, prefix + "/pw_norm", x)
    w = sd[prefix + "/conv.weight"]
    x = F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2)
    return _bn_relu(sd, prefix + "/norm", x)


def official_features(sd, x):
    """Stage 2..5 outputs of the official VoVNetV2 (eSE in every block, identity on blocks 2..n)."""
    x = _unit(sd, "stem.stem_1", x, 2)
    x = _unit(sd, "stem.stem_2", x, 1)
    x = _unit(sd, "stem.stem_3", x, 2)
    feats = []
    for s in range(2, 6):
        if s > 2:
            x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        b = 1
        while f"stage{s}.OSA{s}_{b}.concat.OSA{s}_{b}_concat/conv.weight" in sd:
            name = f"stage{s}.OSA{s}_{b}"
            identity, outputs = x, [x]
            h = x
            if f"{name}.conv_reduction.{name.split('.')[1]}_reduction_0/conv.weight" in sd:
                h = _unit(sd, f"{name}.conv_reduction.OSA{s}_{b}_reduction_0", h)
            l = 0
            while any(k.startswith(f"{name}.layers.{l}.") for k in sd):
                h = _unit(sd, f"{name}.layers.{l}.OSA{s}_{b}_{l}", h)
                outputs.append(h)
                l += 1
            y = _unit(sd, f"{name}.concat.OSA{s}_{b}_concat", torch.cat(outputs, 1))
            gate = F.conv2d(y.mean((2, 3), keepdim=True), sd[f"{name}.ese.fc.weight"], sd[f"{name}.ese.fc.bias"])
            y = y * (F.relu6(gate + 3.0) / 6.0)
            x = y + identity if b > 1 else y
            b += 1
        feats.append(x)
    return feats

