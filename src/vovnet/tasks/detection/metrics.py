"""COCO box and mask AP through torchmetrics' MeanAveragePrecision (faster-coco-eval or pycocotools backend)."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch

from ...errors import UsageError

MASK_THRESHOLD = 0.5  # mask probability -> instance pixel, as torchvision and detectron2
SUMMARY_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")


def coco_backend() -> str:
    """``faster_coco_eval`` when installed (faster), else ``pycocotools``."""
    for name, module in (("faster_coco_eval", "faster_coco_eval"), ("pycocotools", "pycocotools")):
        if importlib.util.find_spec(module) is not None:
            return name
    raise UsageError("COCO metrics need faster-coco-eval or pycocotools (pip install 'vovnet[detect]')")


def binary_masks(prediction: dict[str, torch.Tensor]) -> torch.Tensor:
    """Detector mask probabilities ``[N, 1, H, W]`` -> instance masks ``[N, H, W]`` bool."""
    return prediction["masks"][:, 0] >= MASK_THRESHOLD


def _mask_targets(masks: torch.Tensor, labels: torch.Tensor, iscrowd: torch.Tensor) -> dict[str, torch.Tensor]:
    """One image's ground truth for mask AP (``iscrowd``: COCO's crowd regions, which match without counting). torchmetrics leaves an image without ground-truth masks out of the
    COCO evaluation (it takes the image's size from its masks), so the detections there would not count as
    false positives, as pycocotools counts them: such an image gets one empty crowd region, which COCO's matching
    ignores (crowd regions are neither positives nor matched by an empty intersection) but which keeps the image."""
    if len(masks):
        return {"masks": masks, "labels": labels, "iscrowd": iscrowd}
    empty = torch.zeros((1, *masks.shape[-2:]), dtype=torch.bool)
    return {"masks": empty, "labels": torch.ones(1, dtype=labels.dtype), "iscrowd": torch.ones(1, dtype=labels.dtype)}


class DetectionMetrics:
    """Accumulates predictions and ground truth; ``compute`` gives COCO AP over all images seen.

    Args:
        class_names: foreground names (label ``k`` is ``class_names[k - 1]``), for per-class AP.
        masks: also score masks (``segm``).

    ``update(predictions, targets)``: per-image dicts as torchvision detectors return them (``boxes``
    ``[N, 4]``, ``scores``, ``labels``, ``masks`` ``[N, 1, H, W]`` probabilities, and from CenterMask's MaskIoU
    head ``mask_scores``) and as the data gives them (``boxes``, ``labels``, ``masks`` ``[M, H, W]``, and from COCO
    panoptic data ``iscrowd [M]``: crowd regions, ignored as COCO's evaluation ignores them). Masks are
    ranked by ``mask_scores`` where there are some, as the official CenterMask evaluation does. Under
    torch.distributed, ``compute`` gathers all ranks.
    """

    def __init__(self, class_names: Sequence[str], masks: bool):
        from torchmetrics.detection import MeanAveragePrecision

        self.class_names = list(class_names)
        self.iou_types = ("bbox", "segm") if masks else ("bbox",)
        # one metric per kind: boxes and masks may be ranked by different scores
        self.metrics = {kind: MeanAveragePrecision(iou_type=kind, class_metrics=True, backend=coco_backend()) for kind in self.iou_types}

    def update(self, predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]) -> None:
        boxes, masks, gts = [], [], []
        for p, t in zip(predictions, targets):
            pred = {k: p[k].detach().cpu() for k in ("boxes", "scores", "labels")}
            gt = {k: t[k].detach().cpu() for k in ("boxes", "labels")}
            gt["iscrowd"] = t["iscrowd"].detach().cpu() if "iscrowd" in t else torch.zeros_like(gt["labels"])
            boxes.append(pred)
            if "segm" in self.iou_types:
                scores = p.get("mask_scores", p["scores"]).detach().cpu()
                masks.append({"masks": binary_masks(p).cpu(), "scores": scores, "labels": pred["labels"]})
                gt["masks"] = t["masks"].detach().cpu().bool()
            gts.append(gt)
        self.metrics["bbox"].update(boxes, [{k: g[k] for k in ("boxes", "labels", "iscrowd")} for g in gts])
        if "segm" in self.iou_types:
            self.metrics["segm"].update(masks, [_mask_targets(g["masks"], g["labels"], g["iscrowd"]) for g in gts])

    def compute(self) -> tuple[dict[str, float], dict]:
        """``(metrics, details)``: ``bbox_map``, ``bbox_map_50``, ... (and ``segm_*``) as floats (-1 = no
        objects of that size), and per-class AP in ``details["per_class"]``."""
        metrics, per_class = {}, {}
        for kind in self.iou_types:
            result = self.metrics[kind].compute()
            for key in SUMMARY_KEYS:
                metrics[f"{kind}_{key}"] = float(result[key])
            values = result["map_per_class"].flatten().tolist()
            classes = result["classes"].flatten().tolist()
            per_class[kind] = {self._name(int(c)): round(v, 4) for c, v in zip(classes, values)}
        return metrics, {"per_class": per_class}

    def _name(self, label: int) -> str:
        return self.class_names[label - 1] if 0 < label <= len(self.class_names) else str(label)
