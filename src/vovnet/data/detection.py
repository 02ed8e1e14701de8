"""Detection data sources, augmentations and batching.

``--data shapes`` is the embedded shapes set (train/val streams of the same seed);
``--data coco:ANNOTATIONS.json:IMAGE_DIR`` is a user's COCO instances file;
``--data coco-panoptic:PANOPTIC.json:IMAGE_DIR[:PNG_DIR]`` a COCO panoptic file (:mod:`.panoptic`). Images reach the model at
their own size: the detector's transform resizes them (``min_size`` / ``max_size``), as in torchvision.
"""

from __future__ import annotations

import copy

import torch
from torch.utils.data import Dataset, Subset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..errors import UsageError
from .coco import CocoDataset
from .panoptic import PANOPTIC_PREFIX, CocoPanopticDataset, parse_panoptic_spec
from .shapes import ShapesConfig, ShapesDataset

COCO_PREFIX = "coco:"
INSTANCE_KEYS = ("boxes", "labels", "masks", "iscrowd")  # a target's per-instance values


def detection_transforms(train: bool, sanitize: bool = True) -> v2.Compose:
    """transforms v2 pipeline on ``(tv_tensors.Image uint8, target)``: random horizontal flip when training (masks
    and maps flipped with the image), float image in 0..1, and with ``sanitize`` degenerate boxes (with their labels
    and masks) dropped. Panoptic data is not sanitized: its boxes are its masks' (never degenerate), and the sanitizer
    would index an ``[H, W]`` map by the boxes where ``H`` equals their count."""
    steps = [v2.RandomHorizontalFlip(0.5)] if train else []
    steps += [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)]
    steps += [v2.SanitizeBoundingBoxes()] if sanitize else []
    return v2.Compose(steps)


def without_crowd(target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``target`` with its crowd instances (``iscrowd`` 1) left out, as detectron2 trains: crowd regions count in
    COCO's evaluation (ignored there) but are no training instances."""
    if "iscrowd" not in target:
        return target
    keep = target["iscrowd"] == 0
    return {**target, **{k: target[k][keep] for k in INSTANCE_KEYS if k in target}}


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Samples -> ``(list of [3, H, W] images, list of target dicts)`` of plain tensors, as detectors take them."""
    images, targets = [], []
    for image, target in batch:
        images.append(image.as_subclass(torch.Tensor))
        targets.append(
            {k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else torch.tensor(v) for k, v in target.items()}
        )
    return images, targets


def parse_coco_spec(spec: str) -> tuple[str, str]:
    """``coco:ANNOTATIONS.json:IMAGE_DIR`` -> ``(annotations, image_dir)``."""
    annotations, sep, image_dir = spec[len(COCO_PREFIX) :].partition(":")
    if not spec.startswith(COCO_PREFIX) or not sep or not annotations or not image_dir:
        raise UsageError(f"--data takes shapes, coco:ANNOTATIONS.json:IMAGE_DIR or coco-panoptic:PANOPTIC.json:IMAGE_DIR[:PNG_DIR], "
                         f"got {spec!r}")
    return annotations, image_dir


def open_dataset(spec: str, split: str, *, image_size: int, seed: int, strict: bool, train: bool) -> Dataset:
    """One data source: ``shapes`` (its ``split`` stream, ``image_size`` pixels), a COCO or a COCO panoptic spec.

    The dataset has ``class_names`` and ``has_masks``; COCO ones also a ``report`` of skipped annotations; a
    panoptic one's ``class_names`` is a :class:`~.panoptic.PanopticClasses`.
    """
    if spec.startswith(PANOPTIC_PREFIX):
        return CocoPanopticDataset(*parse_panoptic_spec(spec), strict=strict, transforms=detection_transforms(train, sanitize=False))
    transforms = detection_transforms(train)
    if spec == "shapes":  # scenes are kept once rendered: epochs after the first render nothing
        return ShapesDataset(split, seed=seed, config=ShapesConfig(image_size=image_size), transforms=transforms, cache=True)
    annotations, image_dir = parse_coco_spec(spec)
    return CocoDataset(annotations, image_dir, strict=strict, transforms=transforms)


def split_off(dataset: Dataset, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """A seeded random ``(1 - fraction, fraction)`` split of ``dataset`` (at least one sample each)."""
    n = len(dataset)
    if n < 2:
        raise UsageError(f"cannot split {n} image(s) into train and validation; give a validation set")
    n_val = min(max(1, round(n * fraction)), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, sorted(order[n_val:])), Subset(dataset, sorted(order[:n_val]))


def with_transforms(subset: Subset, train: bool) -> Subset:
    """The same images through another transform pipeline (a validation subset of a training file)."""
    base = copy.copy(subset.dataset)
    base.transforms = detection_transforms(train, sanitize=not isinstance(base, CocoPanopticDataset))
    return Subset(base, subset.indices)
