"""Predictions as pictures: boxes, labels, scores and mask overlays drawn by torchvision.utils."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from .metrics import binary_masks

# One colour per class (matplotlib's tab10), so a class looks the same in every picture.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def class_name(label: int, class_names: Sequence[str]) -> str:
    return class_names[label - 1] if 0 < label <= len(class_names) else str(label)


def keep_confident(prediction: dict[str, torch.Tensor], score_thresh: float) -> dict[str, torch.Tensor]:
    """The detections scoring at least ``score_thresh``."""
    keep = prediction["scores"] >= score_thresh
    return {k: v[keep] for k, v in prediction.items()}


def draw_detections(
    image: torch.Tensor, prediction: dict[str, torch.Tensor], class_names: Sequence[str], score_thresh: float = 0.5
) -> torch.Tensor:
    """Draw one image's detections.

    Args:
        image: ``[3, H, W]`` uint8.
        prediction: a torchvision detector's output for this image (``boxes`` ``[N, 4]``, ``labels``, ``scores``,
            optionally ``masks`` ``[N, 1, H, W]`` probabilities).
        class_names: foreground names, label ``k`` -> ``class_names[k - 1]``.
        score_thresh: detections below it are not drawn.
    Returns:
        ``[3, H, W]`` uint8 with masks overlaid and boxes labelled ``"name 0.93"``.
    """
    pred = {k: v.detach().cpu() for k, v in keep_confident(prediction, score_thresh).items()}
    colours = [PALETTE[int(label) % len(PALETTE)] for label in pred["labels"]]
    canvas = image.cpu()
    if "masks" in pred and len(pred["masks"]):
        canvas = draw_segmentation_masks(canvas, binary_masks(pred), alpha=0.45, colors=colours)
    if not len(pred["boxes"]):
        return canvas
    captions = [
        f"{class_name(int(label), class_names)} {float(score):.2f}" for label, score in zip(pred["labels"], pred["scores"])
    ]
    return draw_bounding_boxes(canvas, pred["boxes"], captions, colors=colours, width=2)
