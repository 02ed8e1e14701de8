"""Detection outputs: detections of image files, listed as JSON records, drawn over the images, or written as a
COCO results file.

Each detection is one record (:func:`prediction_record`): label, class, score, box and, for mask models, the
mask as COCO compressed RLE. ``vovnet predict`` lists and draws the detections scoring at least its
``--score-thresh``; ``--format coco`` writes every detection the model returns as a COCO results file
(:func:`coco_results`), which pycocotools' ``loadRes`` and faster-coco-eval score against the annotation file.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from ...data.classification import load_image
from ...data.coco import encode_rle, image_tensor, png_bytes
from ...errors import DataError, UsageError
from ...io import atomic_write_bytes, atomic_write_text
from ...weights.official_detectors import COCO_CATEGORY_IDS, COCO_CLASSES
from .draw import class_name, draw_detections, keep_confident
from .metrics import binary_masks

DISPLAY_THRESH = 0.5  # predict lists and draws detections scoring at least this, unless told otherwise (--score-thresh)
COCO_RESULTS = "coco_results.json"  # what `vovnet predict --format coco --out DIR` writes into DIR


@torch.no_grad()
def predict_detections(model: nn.Module, image: torch.Tensor, device: torch.device | str = "cpu",
                       autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> dict[str, torch.Tensor]:
    """``image`` ``[3, H, W]`` uint8 -> the detector's output for it (``boxes`` ``[N, 4]``, ``labels``, ``scores``,
    and ``masks`` ``[N, 1, H, W]`` for mask models), on the CPU, floating values in float32.

    ``autocast``: a mixed-precision context for the forward (e.g. ``Runtime.autocast``)."""
    return detect_batch(model, [image], device, autocast)[0]


# What a prediction keeps of a detector's output: one value per detection (a Panoptic FPN's maps are left out).
DETECTION_KEYS = ("boxes", "labels", "scores", "masks", "mask_scores")


@torch.no_grad()
def detect_batch(model: nn.Module, images: Sequence[torch.Tensor], device: torch.device | str = "cpu",
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> list[dict[str, torch.Tensor]]:
    """:func:`predict_detections` of several images ``[3, H, W]`` uint8 in one forward (video frames)."""
    with autocast():
        predictions = model([(image.float() / 255).to(device, non_blocking=True) for image in images])
    return [{k: (v.float() if v.is_floating_point() else v).cpu() for k, v in p.items() if k in DETECTION_KEYS} for p in predictions]


def prediction_record(prediction: dict[str, torch.Tensor], class_names: Sequence[str], score_thresh: float = DISPLAY_THRESH) -> list[dict]:
    """The JSON-ready detections of one image scoring at least ``score_thresh``, most confident first: ``label``,
    ``class``, ``score``, ``box`` ``[x1, y1, x2, y2]`` in pixels and, for mask models, ``mask_area`` (pixels),
    ``segmentation`` (the mask as COCO compressed RLE, ``{"size": [H, W], "counts": "..."}``, which
    ``pycocotools.mask.decode`` reads) and, where a MaskIoU head scores masks, ``mask_score``."""
    pred = {k: v.detach().cpu() for k, v in keep_confident(prediction, score_thresh).items()}
    masks = binary_masks(pred) if "masks" in pred else None
    rles = encode_rle(masks) if masks is not None else None
    rows = []
    for i, (label, score, box) in enumerate(zip(pred["labels"].tolist(), pred["scores"].tolist(), pred["boxes"].tolist())):
        row = {"label": label, "class": class_name(label, class_names), "score": round(score, 4), "box": [round(v, 1) for v in box]}
        if masks is not None:
            row["mask_area"] = int(masks[i].sum())
            row["segmentation"] = rles[i]
            if "mask_scores" in pred:
                row["mask_score"] = round(float(pred["mask_scores"][i]), 4)
        rows.append(row)
    return rows


def image_record(path: str | os.PathLike, prediction: dict[str, torch.Tensor], class_names: Sequence[str],
                 score_thresh: float = DISPLAY_THRESH) -> dict:
    """The JSON-ready record of one image: ``image`` (its path) and ``detections`` (those scoring at least
    ``score_thresh``, see :func:`prediction_record`)."""
    return {"image": str(path), "detections": prediction_record(prediction, class_names, score_thresh)}


def coco_category_ids(class_names: Sequence[str]) -> list[int]:
    """The COCO category id of each label (``ids[k - 1]`` for label ``k``): COCO's own ids for a model of the 80
    COCO classes (a converted centermask2 model), else ``1..K``, the ids ``vovnet make-shapes`` writes and a COCO
    file with categories numbered from 1 gives."""
    return list(COCO_CATEGORY_IDS) if tuple(class_names) == COCO_CLASSES else list(range(1, len(class_names) + 1))


def coco_image_id(path: str | os.PathLike) -> int:
    """The COCO image id of an image file: the number its name is (``000000000139.jpg`` -> 139, as COCO and
    ``vovnet make-shapes`` name images); UsageError for any other name."""
    stem = Path(path).stem
    if not stem.isdigit():
        raise UsageError(f"--format coco: {path} is not named by its COCO image id (e.g. 000000000139.jpg)")
    return int(stem)


def coco_results(prediction: dict[str, torch.Tensor], image_id: int, category_ids: Sequence[int]) -> list[dict]:
    """One image's detections as COCO results: ``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]``, ``score``
    and, for mask models, ``segmentation`` (compressed RLE) and, where a MaskIoU head scores masks, ``mask_score``
    (rank masks by it, as centermask2's evaluation does: it replaces ``score`` when scoring ``segm``). Every
    detection, unrounded: what evaluation needs."""
    pred = {k: v.detach().cpu() for k, v in prediction.items()}
    rles = encode_rle(binary_masks(pred)) if "masks" in pred else None
    results = []
    for i, (label, score, (x1, y1, x2, y2)) in enumerate(zip(pred["labels"].tolist(), pred["scores"].tolist(), pred["boxes"].tolist())):
        result = {"image_id": image_id, "category_id": category_ids[label - 1], "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
        if rles is not None:
            result["segmentation"] = rles[i]
            if "mask_scores" in pred:
                result["mask_score"] = float(pred["mask_scores"][i])
        results.append(result)
    return results


def write_drawing(out_dir: str | os.PathLike, stem: str, image: torch.Tensor, prediction: dict[str, torch.Tensor],
                  class_names: Sequence[str], score_thresh: float = DISPLAY_THRESH) -> str:
    """Write ``{stem}.png`` into ``out_dir`` (atomically): ``image`` with the detections scoring at least
    ``score_thresh`` drawn on it (boxes, labels, scores, masks). Returns its path."""
    drawn = Path(out_dir) / f"{stem}.png"
    atomic_write_bytes(drawn, png_bytes(draw_detections(image, prediction, class_names, score_thresh)))
    return str(drawn)


def _detect_files(model: nn.Module, paths: Sequence[str | os.PathLike], device: torch.device | str,
                  autocast: Callable[[], contextlib.AbstractContextManager]) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """``(image, prediction)`` of each file in turn (see :func:`predict_detections`); DataError for a path that is
    not a file or cannot be decoded."""
    model = model.to(device).eval()
    for path in paths:
        if not Path(path).is_file():
            raise DataError(f"{path}: no such image file")
        image = image_tensor(load_image(path))
        yield image, predict_detections(model, image, device, autocast)


def predict_files(model: nn.Module, paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None,
                  class_names: Sequence[str], device: torch.device | str = "cpu",
                  autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                  score_thresh: float = DISPLAY_THRESH) -> list[dict]:
    """Detect objects in image files; with ``out_dir``, draw each image there (see :func:`write_drawing`) and
    write the records as ``predictions.json``. ``device`` and ``autocast``: as for :func:`predict_detections`;
    ``score_thresh``: the detections listed and drawn score at least this.

    Returns one record per file (see :func:`image_record`; ``drawn``: the drawing's path when written).
    DataError for a path that is not a file or cannot be decoded.
    """
    rows = []
    for path, (image, prediction) in zip(paths, _detect_files(model, paths, device, autocast)):
        row = image_record(path, prediction, class_names, score_thresh)
        if out_dir is not None:
            row["drawn"] = write_drawing(out_dir, Path(path).stem, image, prediction, class_names, score_thresh)
        rows.append(row)
    if out_dir is not None:
        atomic_write_text(Path(out_dir) / "predictions.json", json.dumps(rows, indent=2))
    return rows


def predict_coco_results(model: nn.Module, paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                         class_names: Sequence[str], device: torch.device | str = "cpu",
                         autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> list[dict]:
    """Detect objects in image files named by their COCO image ids (see :func:`coco_image_id`) and write every
    detection the model returns to ``out_dir/coco_results.json``, one list of :func:`coco_results` records,
    with the category ids of :func:`coco_category_ids`.

    Returns one row per file: ``image``, ``image_id``, ``detections`` (how many) and ``coco_results`` (the file).
    """
    image_ids = [coco_image_id(path) for path in paths]  # every name checked before the model runs
    category_ids = coco_category_ids(class_names)
    results, rows = [], []
    out_file = Path(out_dir) / COCO_RESULTS
    for path, image_id, (_, prediction) in zip(paths, image_ids, _detect_files(model, paths, device, autocast)):
        found = coco_results(prediction, image_id, category_ids)
        results += found
        rows.append({"image": str(path), "image_id": image_id, "detections": len(found), "coco_results": str(out_file)})
    atomic_write_text(out_file, json.dumps(results))
    return rows
