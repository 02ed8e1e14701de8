"""Segmentation scores through torchmetrics: per-class IoU, mean IoU, pixel accuracy (label 255 ignored)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .losses import IGNORE_INDEX


class SegmentationMetrics(nn.Module):
    """Accumulates predictions over batches; :meth:`compute` gives the scores.

    A class absent from both the predictions and the targets has no IoU (None) and does not count in the
    mean, as in mmsegmentation and detectron2's ``SemSegEvaluator``; a class only predicted scores 0.

    Args:
        class_names: one name per class index.
        ignore_index: target label excluded from every score.
    """

    def __init__(self, class_names: Sequence[str], ignore_index: int = IGNORE_INDEX):
        # torchmetrics (scipy, matplotlib) is imported on first use, as the other tasks do: loading a segmenter
        # to run or benchmark it needs none of it.
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

        super().__init__()
        self.class_names = list(class_names)
        n = len(self.class_names)
        self.iou = MulticlassJaccardIndex(n, average="none", ignore_index=ignore_index, zero_division=math.nan, validate_args=False)
        self.accuracy = MulticlassAccuracy(n, average="micro", ignore_index=ignore_index, validate_args=False)

    @torch.no_grad()
    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """``preds``: logits ``[N, K, H, W]`` or class indices ``[N, H, W]``; ``target``: ``[N, H, W]``."""
        if preds.dim() == target.dim() + 1:
            preds = preds.argmax(1)
        preds, target = preds.long(), target.long()
        self.iou.update(preds, target)
        self.accuracy.update(preds, target)

    def reset(self) -> None:
        self.iou.reset()
        self.accuracy.reset()

    def compute(self) -> dict:
        """``{"miou": float, "pixel_acc": float, "per_class_iou": {name: float | None}}``."""
        iou = self.iou.compute().cpu()
        present = ~iou.isnan()
        return {
            "miou": float(iou[present].mean()) if present.any() else 0.0,
            "pixel_acc": float(self.accuracy.compute()),
            "per_class_iou": {name: (float(v) if ok else None) for name, v, ok in zip(self.class_names, iou, present)},
        }
