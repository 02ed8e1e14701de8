"""COCO panoptic data: ``--data coco-panoptic:PANOPTIC.json:IMAGE_DIR[:PNG_DIR]``.

A COCO panoptic file (``annotations/panoptic_val2017.json``) lists per image a PNG (in ``PNG_DIR``, by default the
folder beside the file with its stem: ``annotations/panoptic_val2017/``) whose pixel ``R + 256 G + 256^2 B`` is a
segment id (0: void), and the segments (``segments_info``: ``id``, ``category_id``, ``iscrowd``, ...); each category
says whether it is a thing (``isthing``). Each image yields, as one target:

- the detection target, its things as instances: ``boxes`` (XYXY, the mask's tight box), ``labels`` 1..K over the
  thing categories in id order, ``masks [N, H, W]`` uint8 and ``iscrowd [N]`` (crowd regions stay, flagged: COCO's
  AP ignores them and training leaves them out, :func:`~vovnet.data.detection.without_crowd`);
- ``sem_seg [H, W]``, the semantic target detectron2 trains Panoptic FPN with (its ``prepare_panoptic_fpn.py``):
  stuff categories as 1..S in id order, every thing pixel 0, void :data:`IGNORE_VALUE` (255);
- what panoptic quality needs: ``panoptic [H, W]`` the segment ids and ``segments [M, 3]`` int64 rows ``id``,
  panoptic category (``label - 1`` for things, ``K + s - 1`` for stuff ``s``), ``iscrowd``.

The maps are ``tv_tensors.Mask``, so a flip moves them with the image. Stuff names are detectron2's (its
``builtin_meta.py``): "-other" and "-merged" cut, as a converted COCO Panoptic FPN names its channels.

Problems in the file (a category or a segment that cannot be read, a PNG whose ids and ``segments_info`` differ)
are :class:`~vovnet.data.coco.AnnotationError`; a missing image or PNG is skipped and counted in ``report``, as
:class:`~vovnet.data.coco.CocoDataset` does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes

from ..errors import DataError, UsageError
from ..models.detection.panoptic import IGNORE_VALUE
from .classification import load_image
from .coco import PROBLEMS, AnnotationError, LoadReport, image_tensor, read_coco_json

PANOPTIC_PREFIX = "coco-panoptic:"
STUFF_NAME_CUTS = ("-other", "-merged")  # detectron2's builtin_meta.py: "wall-other-merged" -> "wall"


class PanopticClasses(tuple):
    """A panoptic dataset's classes: the thing names as the sequence (label ``k`` is ``self[k - 1]``, as every
    detection dataset's ``class_names``) and the stuff names in ``stuff`` (semantic label ``s`` is ``stuff[s - 1]``)."""

    stuff: tuple[str, ...]

    def __new__(cls, things, stuff):
        obj = super().__new__(cls, things)
        obj.stuff = tuple(stuff)
        return obj

    def __reduce__(self):  # loader processes get both parts
        return PanopticClasses, (tuple(self), self.stuff)


@dataclass
class PanopticRecord:
    path: Path
    png: Path
    image_id: int
    height: int
    width: int
    segments: list[tuple[int, int, bool]]  # segment id, category id, iscrowd


def parse_panoptic_spec(spec: str) -> tuple[str, str, str]:
    """``coco-panoptic:PANOPTIC.json:IMAGE_DIR[:PNG_DIR]`` -> ``(panoptic json, image dir, png dir)``."""
    parts = spec[len(PANOPTIC_PREFIX) :].split(":")
    if not spec.startswith(PANOPTIC_PREFIX) or len(parts) not in (2, 3) or not all(parts):
        raise UsageError(f"--data takes coco-panoptic:PANOPTIC.json:IMAGE_DIR[:PNG_DIR], got {spec!r}")
    annotations, image_dir = parts[:2]
    png_dir = parts[2] if len(parts) == 3 else str(Path(annotations).with_suffix(""))
    return annotations, image_dir, png_dir


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG pixels ``[H, W, 3]`` uint8 -> segment ids ``[H, W]`` int64 (``R + 256 G + 256^2 B``)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def stuff_name(name: str) -> str:
    for cut in STUFF_NAME_CUTS:
        name = name.replace(cut, "")
    return name


def load_panoptic_records(annotation_file: str | os.PathLike, image_dir: str | os.PathLike, png_dir: str | os.PathLike
                          ) -> tuple[list[PanopticRecord], PanopticClasses, dict[int, tuple[bool, int]], LoadReport]:
    """Parse and check a COCO panoptic file.

    Returns ``(records, classes, category_of, report)``: one record per image whose image and PNG exist, the
    thing and stuff names, ``{category id: (isthing, label)}`` (label 1..K among things, 1..S among stuff, in id
    order) and what was skipped. DataError for a missing PNG folder; AnnotationError for a bad file.
    """
    path, image_dir, png_dir = Path(annotation_file), Path(image_dir), Path(png_dir)
    data = read_coco_json(path, "panoptic")
    if not png_dir.is_dir():
        raise DataError(f"{path}: its PNG folder {png_dir} does not exist (give it as coco-panoptic:JSON:IMAGE_DIR:PNG_DIR)")
    try:
        categories = sorted(((int(c["id"]), str(c["name"]), bool(c["isthing"])) for c in data["categories"]))
    except (KeyError, TypeError, ValueError):
        raise AnnotationError(f"{path}: every category needs an integer 'id', a 'name' and 'isthing'") from None
    things = [(cid, name) for cid, name, isthing in categories if isthing]
    stuff = [(cid, name) for cid, name, isthing in categories if not isthing]
    if not things:
        raise AnnotationError(f"{path}: no thing categories (isthing=1)")
    category_of = {cid: (True, k + 1) for k, (cid, _) in enumerate(things)}
    category_of.update({cid: (False, s + 1) for s, (cid, _) in enumerate(stuff)})
    classes = PanopticClasses([name for _, name in things], [stuff_name(name) for _, name in stuff])

    report = LoadReport()
    images: dict[int, tuple[Path, int, int]] = {}
    for img in data["images"]:
        try:
            image_id, file_name, height, width = int(img["id"]), str(img["file_name"]), int(img["height"]), int(img["width"])
        except (KeyError, TypeError, ValueError):
            raise AnnotationError(f"{path}: every image needs 'id', 'file_name', 'height' and 'width'") from None
        images[image_id] = (image_dir / file_name, height, width)
    records = []
    for ann in data.get("annotations") or []:
        try:
            image_id, png, infos = int(ann["image_id"]), png_dir / str(ann["file_name"]), list(ann["segments_info"])
            segments = [(int(s["id"]), int(s["category_id"]), bool(s.get("iscrowd", 0))) for s in infos]
        except (KeyError, TypeError, ValueError):
            raise AnnotationError(f"{path}: every annotation needs 'image_id', 'file_name' and 'segments_info' "
                                  "(segments with an integer 'id' and 'category_id')") from None
        unknown = sorted({cid for _, cid, _ in segments} - category_of.keys())
        if unknown:
            raise AnnotationError(f"{path}: image {image_id} has segments of category {unknown[0]}, which is not in 'categories'")
        if image_id not in images:
            report.add("unknown_image", f"annotation of image {image_id}")
            continue
        file, height, width = images[image_id]
        missing = [f for f in (file, png) if not f.is_file()]
        if missing:
            report.add("missing_image", str(missing[0]))
            continue
        records.append(PanopticRecord(file, png, image_id, height, width, segments))
    report.images = len(records)
    report.annotations = sum(len(r.segments) for r in records)
    report.negatives = sum(1 for r in records if not any(category_of[c][0] for _, c, _ in r.segments))
    return records, classes, category_of, report


class CocoPanopticDataset(Dataset):
    """A COCO panoptic file as a detection dataset with semantic and panoptic targets (module docstring).

    Args:
        annotation_file: the panoptic JSON.
        image_dir: folder of the images' ``file_name``.
        png_dir: folder of the annotations' PNG ``file_name``.
        strict: raise :class:`AnnotationError` when an image or PNG is missing instead of skipping it.
        transforms: a torchvision transforms v2 callable on ``(image, target)``.

    ``dataset[i]`` -> ``(tv_tensors.Image [3, H, W] uint8, target)`` with ``boxes``, ``labels``, ``masks``,
    ``iscrowd``, ``image_id``, ``sem_seg`` (``Mask [H, W]`` uint8), ``panoptic`` (``Mask [H, W]`` int64) and
    ``segments`` ``[M, 3]``; before ``transforms``.
    """

    has_masks = True

    def __init__(self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike, png_dir: str | os.PathLike, *,
                 strict: bool = False, transforms=None):
        self.records, self.class_names, self.category_of, self.report = load_panoptic_records(annotation_file, image_dir, png_dir)
        if strict and self.report.problems:
            details = "; ".join(f"{n} {k} ({PROBLEMS[k]}; e.g. {', '.join(self.report.examples(k))})" for k, n in self.report.problems.items())
            raise AnnotationError(f"{annotation_file}: {details}")
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.records)

    def panoptic_category(self, category_id: int) -> int:
        """A category id -> its panoptic category: ``label - 1`` for things, ``K + s - 1`` for stuff ``s``."""
        isthing, label = self.category_of[category_id]
        return label - 1 if isthing else len(self.class_names) + label - 1

    def __getitem__(self, index: int):
        record = self.records[index]
        image = image_tensor(load_image(record.path))
        ids = rgb_to_id(np.asarray(load_image(record.png)))
        for what, shape in (("image", image.shape[-2:]), ("PNG", ids.shape)):
            if tuple(shape) != (record.height, record.width):
                raise AnnotationError(f"{record.path if what == 'image' else record.png}: {what} is {shape[-1]}x{shape[-2]}, "
                                      f"annotations say {record.width}x{record.height}")
        ids_in_png = set(np.unique(ids).tolist()) - {0}
        listed = {sid for sid, _, _ in record.segments}
        if ids_in_png != listed:
            extra, absent = sorted(ids_in_png - listed), sorted(listed - ids_in_png)
            problem = f"ids {extra[:3]} are not in its segments_info" if extra else f"segments_info ids {absent[:3]} are not in it"
            raise AnnotationError(f"{record.png}: {problem}")

        semantic = np.full(ids.shape, IGNORE_VALUE, dtype=np.uint8)
        masks, labels, crowd, rows = [], [], [], []
        for sid, cid, iscrowd in record.segments:
            isthing, label = self.category_of[cid]
            mask = ids == sid
            semantic[mask] = 0 if isthing else label
            rows.append((sid, self.panoptic_category(cid), int(iscrowd)))
            if isthing:
                masks.append(mask)
                labels.append(label)
                crowd.append(int(iscrowd))
        size = (record.height, record.width)
        stacked = np.stack(masks) if masks else np.zeros((0, *size), dtype=bool)
        target = {
            "boxes": tv_tensors.BoundingBoxes(mask_boxes(stacked), format="XYXY", canvas_size=size),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": tv_tensors.Mask(torch.from_numpy(stacked.astype(np.uint8))),
            "iscrowd": torch.tensor(crowd, dtype=torch.int64),
            "image_id": record.image_id,
            "sem_seg": tv_tensors.Mask(torch.from_numpy(semantic)),
            "panoptic": tv_tensors.Mask(torch.from_numpy(ids)),
            "segments": torch.tensor(rows, dtype=torch.int64).reshape(-1, 3),
        }
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def mask_boxes(masks: np.ndarray) -> torch.Tensor:
    """``[N, H, W]`` bool masks (none empty) -> ``[N, 4]`` float32 XYXY tight boxes in pixel edges (COCO's panoptic
    ``bbox``: ``x2 = last column + 1``; torchvision's ``masks_to_boxes`` gives the last column)."""
    boxes = masks_to_boxes(torch.from_numpy(masks)).reshape(-1, 4)
    boxes[:, 2:] += 1
    return boxes


__all__ = ["CocoPanopticDataset", "PANOPTIC_PREFIX", "PanopticClasses", "load_panoptic_records", "parse_panoptic_spec", "rgb_to_id"]
