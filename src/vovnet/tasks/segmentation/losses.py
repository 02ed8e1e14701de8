"""Segmentation losses: cross-entropy plus soft Dice, both ignoring label 255.

Cross-entropy alone lets the large background class dominate; the Dice term weighs every class equally
and sharpens thin parts and small shapes (Milletari et al. 2016; nnU-Net uses the same sum).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX, smooth: float = 1.0) -> torch.Tensor:
    """``1 - mean over classes of (2 |P∩T| + s) / (|P| + |T| + s)``, with softmax probabilities P.

    Args:
        logits: ``[N, K, H, W]``.
        target: ``[N, H, W]`` class indices; ``ignore_index`` pixels count for no class.
    Returns:
        a scalar.
    """
    num_classes = logits.shape[1]
    valid = target != ignore_index
    probs = logits.float().softmax(1) * valid.unsqueeze(1)
    onehot = F.one_hot(torch.where(valid, target, 0).long(), num_classes).permute(0, 3, 1, 2) * valid.unsqueeze(1)
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * intersection + smooth) / (total + smooth)).mean()


def segmentation_losses(logits: torch.Tensor, target: torch.Tensor, *, dice_weight: float = 1.0, label_smoothing: float = 0.0,
                        ignore_index: int = IGNORE_INDEX) -> dict[str, torch.Tensor]:
    """``{"loss_ce": cross-entropy, "loss_dice": dice_weight * soft Dice}`` (no Dice term at weight 0) of
    ``[N, K, H, W]`` logits against ``[N, H, W]`` targets; the training loss is their sum."""
    target = target.long()
    losses = {"loss_ce": F.cross_entropy(logits.float(), target, ignore_index=ignore_index, label_smoothing=label_smoothing)}
    if dice_weight:
        losses["loss_dice"] = dice_weight * soft_dice_loss(logits, target, ignore_index)
    return losses


@torch.no_grad()
def per_image_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Each image's mean cross-entropy over its labelled pixels, ``[N]`` (0 for an image without any)."""
    target = target.long()
    pixels = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")
    return pixels.flatten(1).sum(1) / (target != ignore_index).flatten(1).sum(1).clamp_min(1)
