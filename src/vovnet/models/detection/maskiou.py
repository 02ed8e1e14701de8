"""CenterMask's MaskIoU head (centermask2 ``maskiou_head.py``): how good is each predicted mask?

The head sees the RoI features the mask head saw and the predicted mask of the RoI's class (28x28
probabilities, max-pooled to 14x14), and regresses one IoU per class. At inference the detection's mask
score is ``score * maskiou[class]`` (no sigmoid, as the official code); COCO mask AP is computed on those.
Training regresses the IoU of the binarised 28x28 prediction with the ground truth, where the ground
truth's full area is estimated from the part of it inside the RoI (see :func:`maskiou_targets`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskIoUHead(nn.Module):
    """``num_convs`` x (3x3 conv + ReLU, the last with stride 2) -> fc 1024 -> fc 1024 -> one IoU per class.

    Args:
        in_channels: channels of the RoI features (the FPN width); the mask adds one.
        num_classes: IoU outputs, one per mask channel of the mask head.
        conv_dims: conv width (256; 128 for CenterMask-Lite).
        num_convs: convs (4; 2 for CenterMask-Lite).
        roi_size: side of the RoI features (14); the convs end at half of it.

    ``forward(features [R, in_channels, S, S], masks [R, 1, 2S, 2S] probabilities) -> [R, num_classes]``.
    """

    def __init__(self, in_channels: int, num_classes: int, conv_dims: int = 256, num_convs: int = 4, roi_size: int = 14):
        super().__init__()
        convs: list[nn.Module] = []
        width = in_channels + 1
        for k in range(num_convs):
            convs += [nn.Conv2d(width, conv_dims, 3, stride=2 if k == num_convs - 1 else 1, padding=1), nn.ReLU(inplace=True)]
            width = conv_dims
        self.convs = nn.Sequential(*convs)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(conv_dims * (roi_size // 2) ** 2, 1024)
        self.fc2 = nn.Linear(1024, 1024)
        self.predictor = nn.Linear(1024, num_classes)
        for m in [*self.convs, self.fc1, self.fc2]:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, features: Tensor, masks: Tensor) -> Tensor:
        x = self.convs(torch.cat([features, self.pool(masks)], dim=1))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.predictor(torch.relu(self.fc2(x)))


def gt_share_inside(gt_masks: Tensor, rois: Tensor, matched: Tensor) -> Tensor:
    """The share of each RoI's ground-truth mask area that lies inside the RoI, in 0..1.

    The official code measures it on COCO polygons (rasterised into the box); on our bitmasks a pixel is
    inside when its centre lies in ``[x1, x2) x [y1, y2)``. Summed with an integral image per ground truth.

    Args:
        gt_masks: ``[G, H, W]`` 0/1; rois: ``[R, 4]``; matched: ``[R]`` ground-truth index of each RoI.
    Returns:
        ``[R]`` float.
    """
    h, w = gt_masks.shape[-2:]
    integral = F.pad(gt_masks.to(torch.int32).cumsum(1, dtype=torch.int32).cumsum(2, dtype=torch.int32), (1, 0, 1, 0))
    x1, x2 = ((rois[:, [0, 2]] - 0.5).ceil().clamp(0, w)).long().unbind(1)
    y1, y2 = ((rois[:, [1, 3]] - 0.5).ceil().clamp(0, h)).long().unbind(1)
    x2, y2 = torch.maximum(x1, x2), torch.maximum(y1, y2)
    inside = integral[matched, y2, x2] - integral[matched, y1, x2] - integral[matched, y2, x1] + integral[matched, y1, x1]
    total = integral[matched, h, w]
    return (inside.float() / total.float().clamp(min=1)).clamp(0, 1)


def maskiou_targets(mask_logits: Tensor, gt_masks: Tensor, area_ratio: Tensor) -> Tensor:
    """The IoU each selected mask should predict (centermask2's ``mask_rcnn_loss`` with MaskIoU on).

    Args:
        mask_logits: ``[R, M, M]`` logits of each RoI's ground-truth class.
        gt_masks: ``[R, M, M]`` the ground truth cropped to the RoI at ``M x M`` (0/1).
        area_ratio: ``[R]`` the share of the ground truth's area inside the RoI (0..1).
    Returns:
        ``[R]``: ``|P & G| / (|P| + |G| / ratio - |P & G|)`` with ``P = logits > 0``; the union is at least 1.
    """
    predicted = (mask_logits > 0).float()
    gt = gt_masks.float()
    overlap = (predicted * gt).sum(dim=(1, 2))
    full_gt = gt.sum(dim=(1, 2)) / area_ratio.double().clamp(min=1e-10)
    union = (predicted.sum(dim=(1, 2)) + full_gt - overlap).clamp(min=1.0)
    return (overlap.clamp(min=0.0) / union).to(mask_logits.dtype)


def maskiou_loss(pred_iou: Tensor, channels: Tensor, targets: Tensor) -> Tensor:
    """centermask2's ``mask_iou_loss``: ``0.5 * (pred - target)^2`` summed over RoIs with a positive target and
    divided by their count (zero, with gradient, when there is none).

    Args:
        pred_iou: ``[R, K]`` head outputs; channels: ``[R]`` each RoI's class channel; targets: ``[R]``.
    """
    if len(channels) == 0:
        return pred_iou.sum() * 0
    pred = pred_iou[torch.arange(len(channels), device=pred_iou.device), channels]
    positive = targets > 0
    if not positive.any():
        return (pred * 0.0).sum()
    return (0.5 * (pred[positive] - targets[positive]) ** 2).sum() / positive.sum()
