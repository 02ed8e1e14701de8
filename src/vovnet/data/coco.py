"""COCO-format detection data: a validating loader and a writer.

``CocoDataset(annotations.json, image_dir)`` reads a COCO instances file and checks every annotation.
Bad ones are skipped and counted in ``dataset.report`` (or, with ``strict=True``, raise
:class:`AnnotationError` naming the first few); images without annotations stay, as negatives.
Category ids may be any integers: they are mapped, in increasing id order, to labels 1..K
(0 is background), and ``dataset.class_names[k - 1]`` names label k.

Masks come from polygons, uncompressed RLE (``{"counts": [..], "size": [h, w]}``) or compressed RLE
(decoded with pycocotools, if installed). :func:`write_coco` writes images and an instances file with
uncompressed-RLE masks; ``vovnet make-shapes`` uses it. :func:`encode_rle` gives predicted masks as compressed RLE.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..errors import UsageError, VoVNetError
from ..io import atomic_write_bytes, atomic_write_text
from .classification import load_image

# What makes an annotation (or image) unusable. Each is skipped and counted; --strict turns them into errors.
PROBLEMS = {
    "missing_image": "image file not found",
    "unknown_image": "annotation refers to an image id not in 'images'",
    "unknown_category": "category id not in 'categories'",
    "zero_area_box": "box with zero or negative width or height",
    "box_outside_image": "box lies outside the image",
    "degenerate_polygon": "segmentation polygon with fewer than 3 points or no area",
    "bad_segmentation": "segmentation missing, or an RLE whose size differs from the image",
}
# Skipped by design, never an error: crowd regions are 'ignore' areas in COCO, not instances.
IGNORED = {"crowd": "iscrowd=1 region"}
MAX_EXAMPLES = 3


class AnnotationError(VoVNetError):
    """An annotations file that cannot be used (or, with strict checking, one with bad entries)."""


@dataclass
class LoadReport:
    """What :class:`CocoDataset` kept, and every skipped item by reason."""

    images: int = 0
    annotations: int = 0
    negatives: int = 0
    items: dict[str, list[str]] = field(default_factory=dict)  # reason -> descriptions of what was skipped

    def add(self, reason: str, description: str) -> None:
        self.items.setdefault(reason, []).append(description)

    @property
    def skipped(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.items.items()}

    @property
    def problems(self) -> dict[str, int]:
        """The skips that ``strict`` refuses (crowd regions are not problems)."""
        return {k: n for k, n in self.skipped.items() if k in PROBLEMS}

    def examples(self, reason: str) -> list[str]:
        return self.items.get(reason, [])[:MAX_EXAMPLES]

    def summary(self) -> str:
        """One line: kept counts and each skip reason with its count."""
        text = f"{self.images} images ({self.negatives} without objects), {self.annotations} annotations"
        if self.items:
            text += "; skipped " + ", ".join(f"{n} {k}" for k, n in sorted(self.skipped.items()))
        return text

    def to_dict(self) -> dict:
        return dict(images=self.images, annotations=self.annotations, negatives=self.negatives, skipped=self.skipped)


@dataclass
class ImageRecord:
    path: Path
    image_id: int
    height: int
    width: int
    boxes: list[list[float]] = field(default_factory=list)  # x1, y1, x2, y2
    labels: list[int] = field(default_factory=list)
    segmentations: list = field(default_factory=list)


def _polygon_area(xs: np.ndarray, ys: np.ndarray) -> float:
    return 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))


def _valid_polygons(polygons: list) -> list[list[float]]:
    """The rings with at least 3 points and a non-zero area."""
    rings = []
    for ring in polygons:
        if not isinstance(ring, (list, tuple)) or len(ring) < 6 or len(ring) % 2:
            continue
        pts = np.asarray(ring, dtype=np.float64)
        if _polygon_area(pts[0::2], pts[1::2]) > 0:
            rings.append([float(v) for v in ring])
    return rings


def _check_segmentation(seg, height: int, width: int) -> tuple[str | None, object]:
    """``(problem or None, cleaned segmentation)``."""
    if isinstance(seg, list):
        rings = _valid_polygons(seg)
        return (None, rings) if rings else ("degenerate_polygon", None)
    if isinstance(seg, dict) and "counts" in seg and list(seg.get("size", [])) == [height, width]:
        return None, seg
    return "bad_segmentation", None


def _clip_box(bbox, width: int, height: int) -> tuple[str | None, list[float]]:
    """COCO ``[x, y, w, h]`` -> ``(problem or None, [x1, y1, x2, y2] clipped to the image)``."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return "zero_area_box", []
    x, y, w, h = (float(v) for v in bbox)
    if not (w > 0 and h > 0):
        return "zero_area_box", []
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x2 <= x1 or y2 <= y1:
        return "box_outside_image", []
    return None, [x1, y1, x2, y2]


def read_coco_json(path: Path, kind: str = "instances") -> dict:
    """A COCO ``kind`` file's JSON (``instances`` or ``panoptic``); AnnotationError in one line if it cannot be read
    or lacks the ``images`` and ``categories`` lists."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("categories"), list):
        raise AnnotationError(f"{path}: not a COCO {kind} file (needs 'images' and 'categories' lists)")
    return data


def load_coco_records(
    annotation_file: str | os.PathLike, image_dir: str | os.PathLike
) -> tuple[list[ImageRecord], list[str], LoadReport, bool]:
    """Parse and check a COCO instances file.

    Returns ``(records, class_names, report, has_masks)``: one record per usable image (with its kept
    annotations, labels 1..K), the class names in label order, what was skipped, and whether any
    annotation carries a segmentation.
    """
    path, image_dir = Path(annotation_file), Path(image_dir)
    data = read_coco_json(path)
    try:
        categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        label_of = {int(c["id"]): k + 1 for k, c in enumerate(categories)}
        class_names = [str(c["name"]) for c in categories]
    except (KeyError, TypeError, ValueError):
        raise AnnotationError(f"{path}: every category needs an integer 'id' and a 'name'") from None
    if not class_names:
        raise AnnotationError(f"{path}: no categories")
    annotations = data.get("annotations") or []
    has_masks = any(a.get("segmentation") for a in annotations if isinstance(a, dict))

    report = LoadReport()
    records: dict[int, ImageRecord] = {}
    missing: set[int] = set()
    for img in data["images"]:
        try:
            image_id, file_name, height, width = int(img["id"]), str(img["file_name"]), int(img["height"]), int(img["width"])
        except (KeyError, TypeError, ValueError):
            raise AnnotationError(f"{path}: every image needs 'id', 'file_name', 'height' and 'width'") from None
        file = image_dir / file_name
        if not file.is_file():
            report.add("missing_image", str(file))
            missing.add(image_id)
            continue
        records[image_id] = ImageRecord(file, image_id, height, width)

    for ann in annotations:
        if not isinstance(ann, dict):
            raise AnnotationError(f"{path}: 'annotations' must be a list of objects")
        ann_id = ann.get("id", "?")
        image_id = ann.get("image_id")
        if image_id in missing:
            continue  # counted once, with its image
        record = records.get(image_id)
        if record is None:
            report.add("unknown_image", f"annotation {ann_id} -> image {image_id}")
            continue
        if ann.get("iscrowd", 0):
            report.add("crowd", f"annotation {ann_id}")
            continue
        if ann.get("category_id") not in label_of:
            report.add("unknown_category", f"annotation {ann_id}: category {ann.get('category_id')}")
            continue
        problem, box = _clip_box(ann.get("bbox"), record.width, record.height)
        segmentation = None
        if problem is None and has_masks:
            problem, segmentation = _check_segmentation(ann.get("segmentation"), record.height, record.width)
        if problem is not None:
            report.add(problem, f"annotation {ann_id} in {record.path.name}")
            continue
        record.boxes.append(box)
        record.labels.append(label_of[ann["category_id"]])
        record.segmentations.append(segmentation)

    kept = list(records.values())
    report.images = len(kept)
    report.annotations = sum(len(r.labels) for r in kept)
    report.negatives = sum(1 for r in kept if not r.labels)
    return kept, class_names, report, has_masks


def _decode_uncompressed_rle(counts: list[int], height: int, width: int) -> np.ndarray:
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True  # runs alternate, starting with background
    flat = np.repeat(values, counts)
    if flat.size != height * width:
        raise AnnotationError(f"RLE covers {flat.size} pixels, the image has {height * width}")
    return flat.reshape(width, height).T  # COCO runs go down columns


def encode_uncompressed_rle(mask: np.ndarray) -> dict:
    """``[H, W]`` bool mask -> COCO uncompressed RLE ``{"counts": [...], "size": [H, W]}``."""
    flat = np.asarray(mask, dtype=bool).T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def encode_rle(masks: torch.Tensor) -> list[dict]:
    """``[N, H, W]`` bool masks -> one COCO compressed RLE each, ``{"size": [H, W], "counts": "..."}``: pycocotools'
    encoding with ``counts`` as text, as COCO results files carry it (``pycocotools.mask.decode`` reads it back)."""
    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        raise UsageError("masks as COCO RLE need pycocotools (pip install 'vovnet[detect]')") from None
    rles = []
    for mask in masks.cpu().numpy().astype(np.uint8):  # one at a time: an [H, W, N] copy of 100 masks is large
        rle = coco_mask.encode(np.asfortranarray(mask[:, :, None]))[0]  # COCO's runs go down columns
        rles.append({"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")})
    return rles


def segmentation_to_mask(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) -> ``[H, W]`` bool mask."""
    if isinstance(segmentation, list):
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for ring in segmentation:
            draw.polygon(list(zip(ring[0::2], ring[1::2])), fill=1)
        return np.asarray(canvas, dtype=bool)
    counts = segmentation["counts"]
    if isinstance(counts, list):
        return _decode_uncompressed_rle(counts, height, width)
    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        raise AnnotationError("compressed RLE masks need pycocotools (pip install 'vovnet[detect]')") from None
    rle = dict(segmentation, counts=counts.encode() if isinstance(counts, str) else counts)
    return coco_mask.decode(rle).astype(bool)


class CocoDataset(Dataset):
    """A COCO instances file as a detection dataset.

    Args:
        annotation_file: the instances JSON.
        image_dir: folder the images' ``file_name`` entries are relative to.
        strict: raise :class:`AnnotationError` on any bad annotation instead of skipping it.
        transforms: a torchvision transforms v2 callable on ``(image, target)``.
        masks: load instance masks (default: when the file has segmentations).

    ``dataset[i]`` -> ``(tv_tensors.Image [3, H, W] uint8, target)`` with ``boxes``
    (``tv_tensors.BoundingBoxes`` XYXY), ``labels`` ``[N]`` int64, ``image_id``, and ``masks``
    (``tv_tensors.Mask`` ``[N, H, W]`` uint8) when masks are loaded; before ``transforms``.
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        *,
        strict: bool = False,
        transforms=None,
        masks: bool | None = None,
    ):
        self.records, self.class_names, self.report, has_masks = load_coco_records(annotation_file, image_dir)
        if strict and self.report.problems:
            details = "; ".join(
                f"{n} {k} ({PROBLEMS[k]}; e.g. {', '.join(self.report.examples(k))})" for k, n in self.report.problems.items()
            )
            raise AnnotationError(f"{annotation_file}: {details}")
        if masks and not has_masks:
            raise AnnotationError(f"{annotation_file}: masks were asked for but no annotation has a segmentation")
        self.has_masks = has_masks if masks is None else masks
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        image = image_tensor(load_image(record.path))
        if tuple(image.shape[-2:]) != (record.height, record.width):
            raise AnnotationError(
                f"{record.path}: image is {image.shape[-1]}x{image.shape[-2]}, annotations say {record.width}x{record.height}"
            )
        size = (record.height, record.width)
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4), format="XYXY", canvas_size=size
            ),
            "labels": torch.tensor(record.labels, dtype=torch.int64),
            "image_id": record.image_id,
        }
        if self.has_masks:
            masks = [segmentation_to_mask(s, *size) for s in record.segmentations]
            stacked = np.stack(masks) if masks else np.zeros((0, *size), dtype=bool)
            target["masks"] = tv_tensors.Mask(torch.from_numpy(stacked.astype(np.uint8)))
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def image_tensor(image) -> torch.Tensor:
    """PIL RGB image -> ``[3, H, W]`` uint8 tensor."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def png_bytes(image: torch.Tensor) -> bytes:
    """``[3, H, W]`` uint8 tensor -> PNG file contents."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def write_coco(
    samples: Iterable[tuple[torch.Tensor, dict]],
    class_names: list[str] | tuple[str, ...],
    image_dir: str | os.PathLike,
    annotation_file: str | os.PathLike,
) -> dict:
    """Write ``(image [3, H, W] uint8, target)`` samples as PNGs plus a COCO instances file, atomically.

    ``target`` holds ``boxes`` ``[N, 4]`` XYXY, ``labels`` ``[N]`` (1..K) and optionally ``masks`` ``[N, H, W]``
    (written as uncompressed RLE, with the mask area). Images are named ``000000.png``, ... and referenced
    relative to ``image_dir``. Returns ``{"images": n, "annotations": m}``.
    """
    image_dir = Path(image_dir)
    images, annotations = [], []
    for image_id, (image, target) in enumerate(samples):
        name = f"{image_id:06d}.png"
        atomic_write_bytes(image_dir / name, png_bytes(image))
        height, width = int(image.shape[-2]), int(image.shape[-1])
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        masks = target.get("masks")
        for k, (box, label) in enumerate(zip(target["boxes"].tolist(), target["labels"].tolist())):
            x1, y1, x2, y2 = box
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(label),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": 0,
            }
            if masks is not None:
                mask = masks[k].numpy().astype(bool)
                ann["segmentation"] = encode_uncompressed_rle(mask)
                ann["area"] = int(mask.sum())
            annotations.append(ann)
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(class_names)]
    payload = {"images": images, "annotations": annotations, "categories": categories}
    atomic_write_text(annotation_file, json.dumps(payload))
    return {"images": len(images), "annotations": len(annotations)}
