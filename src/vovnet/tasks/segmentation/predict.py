"""Segmentation outputs: class maps of image files, written as colour overlays and raw class-index PNGs, and each
class's pixels as COCO compressed RLE in the JSON records."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor
from torchvision.utils import draw_segmentation_masks

from ...data.classification import load_image
from ...data.coco import encode_rle
from ...errors import DataError
from ...io import atomic_write_bytes
from ...models.segmentation.model import Segmenter

BACKGROUND_NAMES = ("background", "_background_", "bg")  # classes an overlay leaves uncoloured


def palette(num_classes: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map: class k's bits spread over R, G and B (0 = black), distinct for 256 classes."""
    colours = []
    for k in range(num_classes):
        rgb, c = [0, 0, 0], k
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << shift
            c >>= 3
        colours.append(tuple(rgb))
    return colours


def overlay(image: torch.Tensor, class_map: torch.Tensor, class_names: Sequence[str], alpha: float = 0.5) -> torch.Tensor:
    """``image`` ``[3, H, W]`` uint8 with every non-background class of ``class_map`` ``[H, W]`` painted in its
    palette colour at ``alpha`` -> ``[3, H, W]`` uint8."""
    shown = [k for k, name in enumerate(class_names) if name.lower() not in BACKGROUND_NAMES]
    masks = torch.stack([class_map == k for k in shown]) if shown else torch.zeros((0, *class_map.shape), dtype=torch.bool)
    colours = palette(len(class_names))
    return draw_segmentation_masks(image, masks, alpha=alpha, colors=[colours[k] for k in shown])


@torch.no_grad()
def predict_class_map(model: Segmenter, image: torch.Tensor, device: torch.device | str = "cpu",
                      infer: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """``image`` ``[3, H, W]`` uint8 -> class indices ``[H, W]`` (int64, on the CPU) at the image's size.

    ``infer``: images -> logits in place of ``model`` (e.g. with test-time augmentation)."""
    return predict_class_maps(model, [image], device, infer)[0]


@torch.no_grad()
def predict_class_maps(model: Segmenter, images: Sequence[torch.Tensor], device: torch.device | str = "cpu",
                       infer: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[torch.Tensor]:
    """:func:`predict_class_map` of several images of one size in one forward (video frames)."""
    logits = (infer or model)(torch.stack(list(images)).to(device, torch.float32).div(255))
    return list(logits.argmax(1).cpu())


def _png(pixels: torch.Tensor) -> bytes:
    """PNG file contents of a ``[3, H, W]`` (RGB) or ``[H, W]`` (8-bit grayscale) uint8 tensor."""
    array = pixels.permute(1, 2, 0) if pixels.dim() == 3 else pixels
    buffer = io.BytesIO()
    Image.fromarray(array.to(torch.uint8).cpu().numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def class_shares(class_map: torch.Tensor, class_names: Sequence[str]) -> dict[str, float]:
    """``{class name: fraction of the pixels}`` of the classes present in ``class_map`` ``[H, W]``."""
    counts = torch.bincount(class_map.flatten(), minlength=len(class_names))
    return {name: round(n / class_map.numel(), 4) for name, n in zip(class_names, counts.tolist()) if n}


def class_map_record(class_map: torch.Tensor, class_names: Sequence[str]) -> dict:
    """The JSON-ready record of one class map ``[H, W]``: ``size`` ``[W, H]``, ``class_shares`` (see :func:`class_shares`) and
    ``segmentation``, ``{class name: its pixels as COCO compressed RLE}`` (``{"size": [H, W], "counts": "..."}``,
    which ``pycocotools.mask.decode`` reads), for the classes present."""
    present = torch.unique(class_map).tolist()
    rles = encode_rle(torch.stack([class_map == k for k in present])) if present else []
    return {"size": [class_map.shape[1], class_map.shape[0]], "class_shares": class_shares(class_map, class_names),
            "segmentation": {class_names[k]: rle for k, rle in zip(present, rles)}}


def write_prediction(out_dir: str | os.PathLike, stem: str, image: torch.Tensor, class_map: torch.Tensor, class_names: Sequence[str]) -> dict:
    """Write ``{stem}_overlay.png`` (colours over the image) and ``{stem}_classes.png`` (8-bit class indices,
    readable back with PIL or :func:`vovnet.data.segmentation.read_mask`) into ``out_dir``, atomically.

    Returns ``{"overlay": path, "class_map": path}``.
    """
    if len(class_names) > 256:
        raise DataError(f"{len(class_names)} classes do not fit an 8-bit class-map PNG")
    out = Path(out_dir)
    paths = {"overlay": out / f"{stem}_overlay.png", "class_map": out / f"{stem}_classes.png"}
    atomic_write_bytes(paths["overlay"], _png(overlay(image, class_map, class_names)))
    atomic_write_bytes(paths["class_map"], _png(class_map))
    return {k: str(v) for k, v in paths.items()}


def predict_files(model: Segmenter, paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None,
                  device: torch.device | str = "cpu", infer: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  class_names: Sequence[str] | None = None) -> list[dict]:
    """Segment image files; with ``out_dir``, write their outputs there (see :func:`write_prediction`).
    ``infer``: as for :func:`predict_class_map`; ``class_names``: the model's (default ``model.class_names``; a
    deployed segmenter has none of its own).

    Returns one dict per file: ``image``, ``size`` ``[W, H]``, ``class_shares`` and ``segmentation`` (see
    :func:`class_map_record`; and ``overlay``, ``class_map`` paths when written), or ``image`` and ``error`` for a file that cannot be decoded (the others still run).
    """
    model.eval()
    class_names = list(class_names if class_names is not None else model.class_names)
    rows, stems = [], set()
    for path in paths:
        try:
            image = pil_to_tensor(load_image(path))
        except DataError as e:
            rows.append({"image": str(path), "error": str(e)})
            continue
        class_map = predict_class_map(model, image, device, infer)
        row = {"image": str(path), **class_map_record(class_map, class_names)}
        if out_dir is not None:
            stem, n = Path(path).stem, 1
            while stem in stems:  # same-named files from different folders must not overwrite each other
                n += 1
                stem = f"{Path(path).stem}-{n}"
            stems.add(stem)
            row.update(write_prediction(out_dir, stem, image, class_map, class_names))
        rows.append(row)
    return rows
