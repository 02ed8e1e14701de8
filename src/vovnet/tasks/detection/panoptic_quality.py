"""Panoptic quality (PQ, SQ, RQ over all, thing and stuff categories), as COCO's panopticapi ``pq_compute`` defines it.

Per image, a predicted and a ground-truth segment of the same category match when their IoU is above 0.5, the IoU's
union leaving out the prediction's pixels that are void in the ground truth (id 0). A match is a true positive (its
IoU summed); an unmatched ground-truth segment a false negative, unless it is a crowd region; an unmatched prediction
a false positive, unless more than half of it is void or that category's crowd regions in the ground truth. Per
category ``PQ = sum IoU / (TP + FP / 2 + FN / 2)``, ``SQ = sum IoU / TP`` (0 without TP), ``RQ = TP / (TP + FP / 2 +
FN / 2)``; each average is over the categories with any TP, FP or FN (0 where there is none).

torchmetrics' ``PanopticQuality`` (1.9) computes another definition, so it is not used: it knows no crowd regions
(a crowd segment would be a ground truth to match and a false negative when missed, and a prediction on a crowd
region of its own category a false positive); its IoU's union also leaves out the ground truth's pixels that are void
in the prediction, and it drops an unmatched ground truth that is more than half void in the prediction, where COCO
counts every one. Adapting inputs cannot give crowd regions per category, hence this module.

A crowd region of a category is the union of its crowd segments in the image (COCO has at most one per category and
image, where this is ``pq_compute``'s). Ground-truth areas are pixel counts (COCO's ``area`` fields are the same).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

OFFSET = 256**3  # above every segment id (24-bit RGB): ground truth * OFFSET + prediction keys a pixel's pair
TP, FP, FN, IOU = range(4)


def image_stats(pred_ids: Tensor, pred_categories: dict[int, int], gt_ids: Tensor, gt_segments: dict[int, tuple[int, bool]],
                num_categories: int) -> Tensor:
    """One image's ``[num_categories, 4]`` float64 rows of TP, FP, FN and summed IoU.

    Args:
        pred_ids: ``[H, W]`` predicted segment ids (0 void; an id not in ``pred_categories`` counts as void).
        pred_categories: ``{segment id: category}`` of the predicted segments.
        gt_ids: ``[H, W]`` ground-truth segment ids (0 void), every one in ``gt_segments``.
        gt_segments: ``{segment id: (category, iscrowd)}``.
    """
    pred = pred_ids.flatten().to(torch.int64).cpu()
    known = torch.tensor(sorted(pred_categories), dtype=torch.int64)
    pred = torch.where(torch.isin(pred, known), pred, 0)
    keys, counts = torch.unique(gt_ids.flatten().to(torch.int64).cpu() * OFFSET + pred, return_counts=True)
    overlap = {(g, p): n for g, p, n in zip((keys // OFFSET).tolist(), (keys % OFFSET).tolist(), counts.tolist())}
    pred_area: dict[int, int] = defaultdict(int)
    gt_area: dict[int, int] = defaultdict(int)
    for (g, p), n in overlap.items():
        pred_area[p] += n
        gt_area[g] += n

    stats = torch.zeros(num_categories, 4, dtype=torch.float64)
    matched_gt, matched_pred = set(), set()
    for (g, p), n in overlap.items():
        if g == 0 or p == 0:
            continue
        category, crowd = gt_segments[g]
        if crowd or pred_categories[p] != category:
            continue
        iou = n / (pred_area[p] + gt_area[g] - n - overlap.get((0, p), 0))
        if iou > 0.5:
            stats[category, TP] += 1
            stats[category, IOU] += iou
            matched_gt.add(g)
            matched_pred.add(p)
    crowd_ids: dict[int, list[int]] = defaultdict(list)
    for g, (category, crowd) in gt_segments.items():
        if crowd:
            crowd_ids[category].append(g)
        elif g not in matched_gt:
            stats[category, FN] += 1
    for p, category in pred_categories.items():
        if p in matched_pred or not pred_area.get(p):
            continue
        ignored = overlap.get((0, p), 0) + sum(overlap.get((g, p), 0) for g in crowd_ids[category])
        if ignored / pred_area[p] <= 0.5:
            stats[category, FP] += 1
    return stats


def summarize(stats: Tensor, isthing: Tensor) -> tuple[dict[str, float], dict[str, int], list[dict[str, float]]]:
    """``[C, 4]`` summed rows -> ``({pq, sq, rq, pq_things, ..., rq_stuff}, {all, things, stuff}: categories counted,
    per category {pq, sq, rq})``, as ``pq_compute``'s ``pq_average``."""
    tp, fp, fn, iou = stats.unbind(1)
    counted = tp + fp + fn > 0
    denominator = (tp + 0.5 * fp + 0.5 * fn).clamp(min=1e-300)
    per_class = torch.stack([iou / denominator, torch.where(tp > 0, iou / tp.clamp(min=1), 0.0), tp / denominator], 1)
    per_class = torch.where(counted[:, None], per_class, 0.0)
    metrics, counts = {}, {}
    for suffix, selected in (("", torch.ones_like(isthing)), ("_things", isthing), ("_stuff", ~isthing)):
        rows = per_class[counted & selected]
        for k, name in enumerate(("pq", "sq", "rq")):
            metrics[f"{name}{suffix}"] = float(rows[:, k].mean()) if len(rows) else 0.0
        counts[suffix.lstrip("_") or "all"] = len(rows)
    return metrics, counts, [dict(zip(("pq", "sq", "rq"), row)) for row in per_class.tolist()]


class PanopticQuality:
    """Accumulates a Panoptic FPN's panoptic maps against COCO panoptic targets; ``compute`` gives PQ / SQ / RQ.

    Args:
        thing_names: the detector's classes (panoptic categories ``0..K-1``, a thing's ``label - 1``).
        stuff_names: its stuff classes without ``"things"`` (categories ``K..K+S-1``, stuff channel ``s`` at ``K + s - 1``).

    ``update(predictions, targets)``: per image the model's ``panoptic_seg [H, W]`` and ``segments`` rows (``id``,
    ``isthing``, ``category_id``, ...; :func:`~vovnet.models.detection.panoptic.combine_panoptic`) and the data's
    ``panoptic [H, W]`` and ``segments`` rows (``id``, category, ``iscrowd``; :mod:`vovnet.data.panoptic`); targets
    without ``panoptic`` (instance data) are passed over.
    """

    def __init__(self, thing_names: Sequence[str], stuff_names: Sequence[str]):
        self.names = [*thing_names, *stuff_names]
        self.isthing = torch.arange(len(self.names)) < len(thing_names)
        self.stats = torch.zeros(len(self.names), 4, dtype=torch.float64)
        self.images = 0

    def update(self, predictions: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]) -> None:
        things = int(self.isthing.sum())
        for p, t in zip(predictions, targets):
            if "panoptic" not in t:
                continue
            pred_categories = {int(sid): int(c) if isthing else things + int(c) - 1 for sid, isthing, c, *_ in p["segments"].tolist()}
            gt_segments = {sid: (c, bool(crowd)) for sid, c, crowd in t["segments"].tolist()}
            self.stats += image_stats(p["panoptic_seg"], pred_categories, t["panoptic"], gt_segments, len(self.names))
            self.images += 1

    def compute(self, sum_over_ranks: Callable[[list[float]], list[float]] = list) -> tuple[dict[str, float], dict]:
        """``(metrics, details)`` over every image seen (``sum_over_ranks`` adds up the processes' counts, e.g.
        ``Runtime.sum_over_ranks``): ``pq``, ``sq``, ``rq`` and their ``_things`` / ``_stuff`` averages, and
        ``details["panoptic_categories"]`` (how many categories each average is over) and
        ``details["panoptic_per_class"]``; both empty when no image had panoptic targets."""
        summed = sum_over_ranks([float(self.images), *self.stats.flatten().tolist()])
        if not summed[0]:
            return {}, {}
        stats = torch.tensor(summed[1:], dtype=torch.float64).reshape(self.stats.shape)
        metrics, counts, per_class = summarize(stats, self.isthing)
        rounded = {name: {k: round(v, 4) for k, v in row.items()} for name, row in zip(self.names, per_class)}
        return metrics, {"panoptic_categories": counts, "panoptic_per_class": rounded}


__all__ = ["PanopticQuality", "image_stats", "summarize"]
