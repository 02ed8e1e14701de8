"""Semantic segmentation data: the shapes scenes' class maps and users' image/mask folders.

``--data shapes``: the embedded shapes scenes (:mod:`vovnet.data.shapes`); a pixel's label is 0 for the
background and 1..4 for the shape on top (circle, triangle, rectangle, ellipse).

``--data masks:IMAGES_DIR:MASKS_DIR``: images and same-named single-channel PNG masks of class indices
(``a/b.jpg`` pairs with ``a/b.png``), 255 = ignore. Class names come from ``MASKS_DIR/classes.txt`` (one
per line, line k = index k) when present, else from the caller (a checkpoint's classes), else they are
read off the masks (indices 0..max). ``train/`` + ``val/`` subfolders in both directories are used as
the split; otherwise one seeded split is made (``vovnet eval`` scores the same held-out part). Before
training, every pair is checked: unreadable files, an image without a mask (or a mask without an
image), a mask whose size differs from its image, a multi-channel mask, and values outside the class
range other than 255 are reported and skipped, or raise :class:`~vovnet.errors.DataError` with ``strict``.

Images reach the model at their own size, as uint8 ``tv_tensors.Image``; training pipelines transform
image and mask together with torchvision transforms v2 (the mask is a ``tv_tensors.Mask``, so it is
resized with nearest neighbours and padded with 255).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import pil_to_tensor
from tqdm import tqdm

from ..errors import DataError, UsageError
from .classification import VAL_DIR_NAMES, load_image
from .shapes import CLASSES as SHAPE_CLASSES
from .shapes import DEFAULT_SIZES, ShapesConfig, render_scene, render_scenes
from .splits import TaskData, seeded_subset

IGNORE_INDEX = 255
MASKS_PREFIX = "masks:"
CLASSES_FILE = "classes.txt"
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")  # lossless only: JPEG would blur class indices
SHAPES_CLASS_NAMES = ("background", *SHAPE_CLASSES)

Sample = tuple[tv_tensors.Image, tv_tensors.Mask]


# ---- transforms and batching ---------------------------------------------------------------------
class RandomResize(v2.RandomResize):
    """``v2.RandomResize`` that resamples masks at pixel centres (``NEAREST_EXACT``). torchvision resizes
    masks with ``NEAREST``, which takes source pixel ``floor(i * scale)`` and so moves every label edge
    up to a pixel towards the top left of the (bilinearly resized) image."""

    def transform(self, inpt, params):
        if isinstance(inpt, tv_tensors.Mask):
            return v2.functional.resize(inpt, params["size"], interpolation=v2.InterpolationMode.NEAREST_EXACT)
        return super().transform(inpt, params)


def segmentation_transforms(train: bool, crop_size: int, scale: tuple[float, float] = (0.75, 1.25), color_jitter: float = 0.2) -> v2.Compose:
    """transforms v2 pipeline on ``(tv_tensors.Image uint8, tv_tensors.Mask)`` -> ``(float image in 0..1, mask)``.

    Training: resize so the short side is ``crop_size * U(scale)``, random ``crop_size`` square crop
    (padded with 0 / ignore where the image is smaller), horizontal flip, colour jitter. Evaluation keeps
    the image as it is (the segmenter resizes inside and returns logits at the label's size).
    """
    steps = []
    if train:
        low, high = (round(crop_size * s) for s in scale)
        steps = [
            RandomResize(low, high + 1),
            v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(color_jitter, color_jitter, color_jitter) if color_jitter else v2.Identity(),
        ]
    steps.append(v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True))
    return v2.Compose(steps)


def collate_padded(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples of any sizes -> ``(images [N, 3, H, W], masks [N, H, W] int64)`` padded bottom-right to the
    largest height and width (images with 0, masks with 255 so padding is never scored)."""
    height = max(image.shape[-2] for image, _ in batch)
    width = max(image.shape[-1] for image, _ in batch)

    def pad(t: torch.Tensor, value: float) -> torch.Tensor:
        return F.pad(t.as_subclass(torch.Tensor), (0, width - t.shape[-1], 0, height - t.shape[-2]), value=value)

    images = torch.stack([pad(image, 0.0) for image, _ in batch])
    masks = torch.stack([pad(mask.to(torch.int64), IGNORE_INDEX) for _, mask in batch])
    return images, masks


# ---- shapes ----------------------------------------------------------------------------------------
class ShapesSegmentation(Dataset):
    """Class maps of the shapes scenes: ``dataset[i]`` -> ``(Image [3, H, W] uint8, Mask [H, W] uint8)``, transformed.

    Scenes are rendered on first use and kept (uint8, 4 bytes a pixel), so later epochs cost no rendering;
    :meth:`render_all` renders them (or some of them) up front.

    Args:
        split: ``train`` or ``val``.
        num_images: length (default 2000 train, 200 val, as for detection).
        seed: dataset seed.
        config: scene look (size, objects per scene).
        transforms: applied to ``(image, mask)``.
    """

    class_names = SHAPES_CLASS_NAMES

    def __init__(self, split: str = "train", num_images: int | None = None, *, seed: int = 0,
                 config: ShapesConfig = ShapesConfig(), transforms: Callable | None = None):
        self.split = split
        self.num_images = DEFAULT_SIZES[split] if num_images is None else num_images
        self.seed = seed
        self.config = config
        self.transforms = transforms
        self._scenes: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * self.num_images

    def __len__(self) -> int:
        return self.num_images

    def raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Untransformed ``(image [3, H, W] uint8, class map [H, W] uint8)`` of scene ``index``."""
        if not 0 <= index < self.num_images:
            raise IndexError(index)
        if self._scenes[index] is None:
            scene = render_scene(index, seed=self.seed, split=self.split, config=self.config)
            self._scenes[index] = (scene.image, scene.class_map.to(torch.uint8))
        return self._scenes[index]

    def render_all(self, indices: Sequence[int] | None = None, progress: bool = True) -> "ShapesSegmentation":
        """Render the scenes at ``indices`` (all by default) now, so that training time is training alone;
        a progress bar shows on a terminal."""
        indices = range(self.num_images) if indices is None else indices
        for index in tqdm(indices, desc=f"rendering {self.split} scenes", leave=False, disable=None if progress else True):
            self.raw(index)
        return self

    def __getitem__(self, index: int) -> Sample:
        image, mask = self.raw(index)
        sample = (tv_tensors.Image(image), tv_tensors.Mask(mask))
        return self.transforms(*sample) if self.transforms is not None else sample


# ---- mask folders ----------------------------------------------------------------------------------
def parse_masks_spec(spec: str) -> tuple[Path, Path]:
    """``masks:IMAGES_DIR:MASKS_DIR`` -> ``(images_dir, masks_dir)``; both must be folders."""
    images, sep, masks = spec[len(MASKS_PREFIX):].partition(":")
    if not spec.startswith(MASKS_PREFIX) or not sep or not images or not masks:
        raise UsageError(f"--data takes shapes or masks:IMAGES_DIR:MASKS_DIR, got {spec!r}")
    for path in (images, masks):
        if not Path(path).is_dir():
            raise DataError(f"{path}: no such folder")
    return Path(images), Path(masks)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Class indices ``[H, W]`` (int64) of a mask file: 8/16-bit grayscale, palette indices (as VOC stores
    them) or an RGB file whose three channels are equal. DataError names the file otherwise."""
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            arr = np.asarray(img)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: unreadable mask ({e})") from None
    if arr.ndim == 3:
        if not (arr[..., :3] == arr[..., :1]).all():
            raise DataError(f"{path}: {mode} mask with differing channels; expected one channel of class indices")
        arr = arr[..., 0]
    return arr.astype(np.int64)


def _files(root: Path, extensions: Sequence[str]) -> dict[str, Path]:
    """``{relative path without suffix: file}`` of the files under ``root`` with one of ``extensions``."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in extensions:
            found.setdefault(path.relative_to(root).with_suffix("").as_posix(), path)
    return found


def _check_pair(image_path: Path, mask_path: Path) -> tuple[str | None, np.ndarray | None]:
    """``(problem, labels present)``: why the pair cannot be used, or None and the mask's distinct values."""
    try:
        with Image.open(image_path) as img:
            img.load()
            image_size = img.size
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return f"unreadable image ({e})", None
    try:
        mask = read_mask(mask_path)
    except DataError as e:
        return str(e).removeprefix(f"{mask_path}: "), None
    if (mask.shape[1], mask.shape[0]) != image_size:
        return f"mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_path.name} is {image_size[0]}x{image_size[1]}", None
    return None, np.unique(mask)


def _read_class_names(masks_dir: Path) -> list[str] | None:
    for folder in (masks_dir, masks_dir.parent):
        path = folder / CLASSES_FILE
        if path.is_file():
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            if len(names) < 2 or len(names) > IGNORE_INDEX:
                raise DataError(f"{path}: needs 2..{IGNORE_INDEX} class names, one per line; found {len(names)}")
            return names
    return None


def scan_mask_folder(
    images_dir: Path, masks_dir: Path, *, class_names: Sequence[str] | None = None, strict: bool = False, threads: int = 4
) -> tuple[list[tuple[Path, Path]], list[str], list[str]]:
    """Pair and check every image/mask of two folders.

    Args:
        images_dir, masks_dir: the folders (searched recursively; pairs share their relative path).
        class_names: the classes, when not given by ``classes.txt`` (None = read off the masks).
        strict: raise DataError on the first problem instead of skipping.
    Returns:
        ``(pairs, class_names, skipped)``: usable ``(image, mask)`` paths, the classes, and one
        ``"path: reason"`` line per file left out.
    """
    images, masks = _files(images_dir, IMG_EXTENSIONS), _files(masks_dir, MASK_EXTENSIONS)
    names = _read_class_names(masks_dir) or (list(class_names) if class_names else None)
    skipped = [f"{images[k]}: no mask named {k}.png in {masks_dir}" for k in images if k not in masks]
    skipped += [f"{masks[k]}: no image named {k}.* in {images_dir}" for k in masks if k not in images]
    keys = [k for k in images if k in masks]
    with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL releases the GIL while decoding
        checks = list(pool.map(lambda k: _check_pair(images[k], masks[k]), keys))
    if names is None:
        found = [v for _, values in checks if values is not None for v in values.tolist() if v != IGNORE_INDEX]
        names = [f"class_{i}" for i in range(max(found, default=1) + 1)]
    pairs = []
    for key, (problem, values) in zip(keys, checks):
        if problem is None:
            bad = [v for v in values.tolist() if v >= len(names) and v != IGNORE_INDEX]
            if bad:
                problem = f"mask values {bad[:5]} outside the {len(names)} classes (0..{len(names) - 1}, 255 = ignore)"
        if problem is None:
            pairs.append((images[key], masks[key]))
        else:
            skipped.append(f"{masks[key]}: {problem}")
    if skipped and strict:
        raise DataError(f"{skipped[0]} ({len(skipped)} problem(s) in {images_dir} / {masks_dir}; drop --strict to skip them)")
    if not pairs:
        detail = f"; first problem: {skipped[0]}" if skipped else ""
        raise DataError(f"no usable image/mask pairs in {images_dir} and {masks_dir}{detail}")
    return pairs, names, skipped


class MaskFolderDataset(Dataset):
    """``(image, mask)`` path pairs checked by :func:`scan_mask_folder`.

    ``dataset[i]`` -> ``(Image [3, H, W] uint8 RGB, Mask [H, W] uint8)``, through ``transforms``.
    """

    def __init__(self, pairs: Sequence[tuple[Path, Path]], class_names: Sequence[str], transforms: Callable | None = None):
        self.pairs = list(pairs)
        self.class_names = tuple(class_names)
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        image_path, mask_path = self.pairs[index]
        image = tv_tensors.Image(pil_to_tensor(load_image(image_path)))
        mask = tv_tensors.Mask(torch.from_numpy(read_mask(mask_path).astype(np.uint8)))
        sample = (image, mask)
        return self.transforms(*sample) if self.transforms is not None else sample


# ---- one entry point ---------------------------------------------------------------------------------
def _split_pairs(pairs: list, fraction: float, seed: int) -> tuple[list, list]:
    if len(pairs) < 2:
        raise DataError(f"cannot split {len(pairs)} image/mask pair(s) into train and validation; add val/ folders")
    n_val = min(max(1, round(len(pairs) * fraction)), len(pairs) - 1)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    return [pairs[i] for i in sorted(order[n_val:])], [pairs[i] for i in sorted(order[:n_val])]


def _mask_folder_data(spec: str, *, train: bool, val_fraction: float, seed: int, strict: bool,
                      class_names: Sequence[str] | None) -> tuple[list | None, list, list[str], list[str], str]:
    images_dir, masks_dir = parse_masks_spec(spec)
    val_name = next((n for n in VAL_DIR_NAMES if (images_dir / n).is_dir() and (masks_dir / n).is_dir()), None)
    if val_name is not None and (images_dir / "train").is_dir() and (masks_dir / "train").is_dir():
        known = _read_class_names(masks_dir) or class_names
        train_pairs, names, skipped = (
            scan_mask_folder(images_dir / "train", masks_dir / "train", class_names=known, strict=strict) if train else (None, known, [])
        )
        val_pairs, val_names, val_skipped = scan_mask_folder(images_dir / val_name, masks_dir / val_name, class_names=names, strict=strict)
        names = names or val_names
        return train_pairs, val_pairs, names, skipped + val_skipped, f"train/ + {val_name}/"
    pairs, names, skipped = scan_mask_folder(images_dir, masks_dir, class_names=class_names, strict=strict)
    train_pairs, val_pairs = _split_pairs(pairs, val_fraction, seed)  # eval scores the same held-out part
    return train_pairs if train else None, val_pairs, names, skipped, f"one folder split {1 - val_fraction:.0%}/{val_fraction:.0%}"


def build_segmentation_data(
    spec: str,
    *,
    crop_size: int,
    train: bool = True,
    val_fraction: float = 0.2,
    seed: int = 0,
    strict: bool = False,
    class_names: Sequence[str] | None = None,
    limit_train: int = 0,
    limit_val: int = 0,
    scale: tuple[float, float] = (0.75, 1.25),
    color_jitter: float = 0.2,
) -> TaskData:
    """Datasets for ``--data shapes`` or ``--data masks:IMAGES_DIR:MASKS_DIR``.

    Args:
        spec: the ``--data`` value.
        crop_size: side of the square training crops (the network's input size).
        train: False builds only the evaluation split (``train`` is None).
        val_fraction, seed: the split of a mask folder without ``train/`` and ``val/``.
        strict: fail on the first bad image or mask instead of skipping it.
        class_names: the classes a checkpoint was trained on (masks data only; ``classes.txt`` wins).
        limit_train, limit_val: keep a seeded random subset of n samples (:func:`~vovnet.data.splits.seeded_subset`
            with ``seed``; 0 = all); shapes renders only those.
        scale, color_jitter: training augmentation (see :func:`segmentation_transforms`).
    Returns:
        TaskData whose samples are ``(float image [3, H, W] in 0..1, mask [H, W])``, batched by :func:`collate_padded`.
    """
    make = {is_train: segmentation_transforms(is_train, crop_size, scale, color_jitter) for is_train in (True, False)}
    if spec == "shapes":
        def scenes(split: str, limit: int) -> Dataset:
            chosen = seeded_subset(ShapesSegmentation(split, seed=seed, transforms=make[split == "train"]), limit, seed)
            render_scenes(chosen)
            return chosen

        train_set = scenes("train", limit_train) if train else None
        val_set = scenes("val", limit_val)
        names, skipped, info = list(SHAPES_CLASS_NAMES), [], dict(source="shapes", seed=seed)
        in_memory = True
    else:
        train_pairs, val_pairs, names, skipped, layout = _mask_folder_data(
            spec, train=train, val_fraction=val_fraction, seed=seed, strict=strict, class_names=class_names
        )
        train_set = seeded_subset(MaskFolderDataset(train_pairs, names, make[True]), limit_train, seed) if train else None
        val_set = seeded_subset(MaskFolderDataset(val_pairs, names, make[False]), limit_val, seed)
        info, in_memory = dict(source=spec, layout=layout), False
    if class_names is not None and list(class_names) != list(names):
        raise DataError(f"the data's classes {list(names)} differ from the model's {list(class_names)}")
    info.update(train_images=len(train_set) if train_set is not None else 0, val_images=len(val_set), skipped=len(skipped))
    return TaskData(train_set, val_set, list(names), collate_padded, skipped, info, in_memory)
