"""Detection outputs: detections of image files, listed as JSON records and drawn over the images."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ...data.classification import load_image
from ...data.coco import image_tensor, png_bytes
from ...errors import DataError
from ...io import atomic_write_bytes, atomic_write_text
from .draw import draw_detections, prediction_record

DISPLAY_THRESH = 0.5  # predict draws and lists detections scoring at least this


@torch.no_grad()
def predict_detections(model: nn.Module, image: torch.Tensor, device: torch.device | str = "cpu",
                       autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> dict[str, torch.Tensor]:
    """``image`` ``[3, H, W]`` uint8 -> the detector's output for it (``boxes`` ``[N, 4]``, ``labels``, ``scores``,
    and ``masks`` ``[N, 1, H, W]`` for mask models), on the CPU, floating values in float32.

    ``autocast``: a mixed-precision context for the forward (e.g. ``Runtime.autocast``)."""
    with autocast():
        prediction = model([(image.float() / 255).to(device, non_blocking=True)])[0]
    return {k: (v.float() if v.is_floating_point() else v).cpu() for k, v in prediction.items()}


def image_record(path: str | os.PathLike, prediction: dict[str, torch.Tensor], class_names: Sequence[str]) -> dict:
    """The JSON-ready record of one image: ``image`` (its path) and ``detections`` (those scoring at least
    :data:`DISPLAY_THRESH`, see :func:`~.draw.prediction_record`)."""
    return {"image": str(path), "detections": prediction_record(prediction, class_names, DISPLAY_THRESH)}


def write_drawing(out_dir: str | os.PathLike, stem: str, image: torch.Tensor, prediction: dict[str, torch.Tensor],
                  class_names: Sequence[str]) -> str:
    """Write ``{stem}.png`` into ``out_dir`` (atomically): ``image`` with the detections scoring at least
    :data:`DISPLAY_THRESH` drawn on it (boxes, labels, scores, masks). Returns its path."""
    drawn = Path(out_dir) / f"{stem}.png"
    atomic_write_bytes(drawn, png_bytes(draw_detections(image, prediction, class_names, DISPLAY_THRESH)))
    return str(drawn)


def predict_files(model: nn.Module, paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None,
                  class_names: Sequence[str], device: torch.device | str = "cpu",
                  autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> list[dict]:
    """Detect objects in image files; with ``out_dir``, draw each image there (see :func:`write_drawing`) and
    write the records as ``predictions.json``. ``device`` and ``autocast``: as for :func:`predict_detections`.

    Returns one record per file (see :func:`image_record`; ``drawn``: the drawing's path when written).
    DataError for a path that is not a file or cannot be decoded.
    """
    model = model.to(device).eval()
    rows = []
    for path in paths:
        if not Path(path).is_file():
            raise DataError(f"{path}: no such image file")
        image = image_tensor(load_image(path))
        prediction = predict_detections(model, image, device, autocast)
        row = image_record(path, prediction, class_names)
        if out_dir is not None:
            row["drawn"] = write_drawing(out_dir, Path(path).stem, image, prediction, class_names)
        rows.append(row)
    if out_dir is not None:
        atomic_write_text(Path(out_dir) / "predictions.json", json.dumps(rows, indent=2))
    return rows
