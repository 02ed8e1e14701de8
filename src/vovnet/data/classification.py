"""Classification data: the embedded digits set, image-folder trees, torchvision datasets, transforms v2.

Every image reaches the model as a 3-channel float tensor normalised with the model's preprocessing
metadata: grayscale, palette, RGBA, CMYK and 16-bit images are converted first (:func:`to_rgb`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets, tv_tensors
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms import v2

from ..errors import DataError
from ..models.vovnet import IMAGENET_MEAN, IMAGENET_STD
from ..weights.hub import pretrained_preprocessing
from .splits import TaskData, seeded_subset

DIGITS_SPLIT_SEED = 0  # the fixed stratified 80/20 split of the digits set
VAL_DIR_NAMES = ("val", "valid", "validation", "test")
IMAGE_EXTENSIONS = (*IMG_EXTENSIONS, ".gif")  # files with other endings in class folders are ignored
FOLDER_CROP_PCT = 0.875  # evaluation resizes to img_size / crop_pct and centre-crops, as timm does


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become model inputs: normalisation on [0, 1] values, input size and evaluation crop,
    channel order (``BGR`` for detectron2-trained weights) and the resize interpolation.

    ``mean``/``std`` given on a 0..255 scale (detectron2-style metadata) are rescaled to [0, 1].
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    img_size: int
    crop_pct: float = 1.0
    channel_order: str = "RGB"
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if max(self.mean) > 1.0:
            object.__setattr__(self, "mean", tuple(m / 255.0 for m in self.mean))
            object.__setattr__(self, "std", tuple(s / 255.0 for s in self.std))

    @classmethod
    def from_record(cls, record: dict | None, img_size: int | None = None, crop_pct: float | None = None) -> "Preprocessing":
        """From a ``model.preprocessing`` / checkpoint-metadata record (None: ImageNet's RGB defaults);
        ``img_size`` and ``crop_pct`` override the record's."""
        record = record or {}
        scale = float(record.get("scale", 1.0))
        mean = tuple(m / scale for m in record.get("mean", IMAGENET_MEAN))
        std = tuple(s / scale for s in record.get("std", IMAGENET_STD))
        size = img_size or int(tuple(record.get("input_size", (3, 224, 224)))[-1])
        crop = crop_pct if crop_pct is not None else float(record.get("crop_pct", FOLDER_CROP_PCT))
        return cls(mean, std, size, crop, record.get("channel_order", "RGB"), record.get("interpolation", "bilinear"))

    def record(self) -> dict:
        """The ``model.preprocessing`` record of these settings (values on the [0, 1] scale)."""
        return dict(channel_order=self.channel_order, scale=1.0, mean=tuple(self.mean), std=tuple(self.std),
                    input_size=(3, self.img_size, self.img_size), crop_pct=self.crop_pct, interpolation=self.interpolation)


# ---- images ------------------------------------------------------------------------------------
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of any PIL image: L, P, LA, RGBA, CMYK, 1-bit, and 16-bit grayscale."""
    if img.mode in _SIXTEEN_BIT:
        # convert("RGB") would clip 16-bit values at 255; scale the full range down instead.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode != "I" or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when palette transparency is dropped directly
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` into 8-bit RGB; DataError naming the file when it cannot be read."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None


def image_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be decoded, or None. JPEGs are decoded at reduced scale, which still reads
    the whole file, so a truncated one is caught without paying for a full decode."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))
            img.load()
        return None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return str(e) or type(e).__name__


def drop_unreadable(samples: list[tuple[str, int]], strict: bool, threads: int = 8) -> tuple[list[tuple[str, int]], list[str]]:
    """Split ``(path, label)`` samples into readable ones and the paths of unreadable files.

    With ``strict`` the first unreadable file raises DataError instead.
    """
    with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL releases the GIL while decoding
        problems = list(pool.map(image_problem, [p for p, _ in samples]))
    bad = [(p, why) for (p, _), why in zip(samples, problems) if why is not None]
    if bad and strict:
        raise DataError(f"{bad[0][0]}: unreadable image ({bad[0][1]}); {len(bad)} such file(s) (drop --strict to skip them)")
    return [s for s, why in zip(samples, problems) if why is None], [p for p, _ in bad]


# ---- transforms --------------------------------------------------------------------------------
# Small random warps for small images (digits, MNIST, CIFAR): rotation in degrees, shift as a fraction
# of the size, scale range. Used per image (v2.RandomAffine) and per batch (BatchRandomAffine).
AFFINE_DEGREES, AFFINE_SHIFT, AFFINE_SCALE = 10.0, 0.1, (0.9, 1.1)


class ToBGR(v2.Transform):
    """Reverses the channel axis (``[..., 3, H, W]``) of images: RGB -> BGR for detectron2-trained weights."""

    _transformed_types = (tv_tensors.Image, torch.Tensor)

    def transform(self, inpt, params):
        return inpt.flip(-3)


def _to_input(prep: Preprocessing) -> list:
    """The common tail: 3 channels (in the weights' order), float in [0, 1], normalised."""
    order = [ToBGR()] if prep.channel_order == "BGR" else []
    return [v2.RGB(), v2.ToDtype(torch.float32, scale=True), *order, v2.Normalize(prep.mean, prep.std)]


def train_transform(prep: Preprocessing, policy: str, flip: bool) -> v2.Compose:
    """Training augmentation on a PIL image or uint8 tensor -> normalised float ``[3, S, S]``.

    ``policy``: ``crop`` = RandomResizedCrop (photographs); ``affine`` = resize, then small random
    rotation, shift and scale (small images such as digits, MNIST, CIFAR).
    """
    size = prep.img_size
    if policy == "crop":
        geometry = [v2.RandomResizedCrop(size, antialias=True)]
    else:
        geometry = [v2.Resize(size, antialias=True), v2.CenterCrop(size),
                    v2.RandomAffine(degrees=AFFINE_DEGREES, translate=(AFFINE_SHIFT, AFFINE_SHIFT), scale=AFFINE_SCALE)]
    flips = [v2.RandomHorizontalFlip()] if flip else []
    return v2.Compose([v2.ToImage(), *geometry, *flips, *_to_input(prep)])


def eval_transform(prep: Preprocessing) -> v2.Compose:
    """Resize the short side to ``img_size / crop_pct``, centre-crop ``img_size``, normalise -> ``[3, S, S]``."""
    resize = v2.Resize(round(prep.img_size / prep.crop_pct), interpolation=v2.InterpolationMode(prep.interpolation), antialias=True)
    return v2.Compose([v2.ToImage(), resize, v2.CenterCrop(prep.img_size), *_to_input(prep)])


def pretrained_transforms(pretrained) -> v2.Compose:
    """The inference pipeline of a tag's or a checkpoint's weights, as torchvision's ``weights.transforms()``:
    a PIL image or uint8 tensor ``[3, H, W]`` -> float ``[3, S, S]`` in the channel order, scale and
    normalisation the weights were trained with, resized by ``S / crop_pct`` and centre-cropped. A tag
    needs no download."""
    return eval_transform(Preprocessing.from_record(pretrained_preprocessing(pretrained)))


# ---- datasets ----------------------------------------------------------------------------------
class ImageDataset(Dataset):
    """``items[i] = (source, label)``; ``decode(source)`` gives an RGB PIL image; item = ``(transform(image), label)``.

    Sources are file paths (decoded by :func:`load_image`) or the PIL images a torchvision dataset yields
    (converted by :func:`to_rgb`).
    """

    def __init__(self, items: Sequence, classes: Sequence[str], transform: Callable, decode: Callable = load_image):
        self.items = items
        self.classes = list(classes)
        self.transform = transform
        self.decode = decode

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        source, label = self.items[i]
        return self.transform(self.decode(source)), int(label)


class BatchRandomAffine(torch.nn.Module):
    """Random rotation, shift and scale drawn per image of a batch ``[B, C, H, W]`` (float).

    ``v2.RandomAffine`` draws one set of parameters per call; for in-memory images one call per batch
    is what keeps augmentation cheap, so this draws ``B`` sets and warps them in one ``grid_sample``.
    """

    def __init__(self, degrees: float = AFFINE_DEGREES, translate: float = AFFINE_SHIFT, scale: tuple[float, float] = AFFINE_SCALE):
        super().__init__()
        self.degrees, self.translate, self.scale = degrees, translate, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        angle = torch.empty(b).uniform_(-self.degrees, self.degrees).deg2rad()
        zoom = torch.empty(b).uniform_(*self.scale)
        shift = torch.empty(b, 2).uniform_(-2 * self.translate, 2 * self.translate)  # grid units span 2
        cos, sin = angle.cos() / zoom, angle.sin() / zoom
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = torch.nn.functional.affine_grid(theta.to(x), list(x.shape), align_corners=False)
        return torch.nn.functional.grid_sample(x, grid, align_corners=False)


class TensorImageDataset(Dataset):
    """Images held as a float tensor ``[N, C, S, S]`` in [0, 1] with labels ``[N]``.

    ``batch_transform`` maps a batch ``[B, C, S, S]`` to model inputs ``[B, 3, S, S]``; the DataLoader
    fetches whole batches through ``__getitems__``, so it runs once per batch.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], batch_transform: Callable):
        self.images = images
        self.labels = labels
        self.classes = list(classes)
        self.batch_transform = batch_transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        images = self.batch_transform(self.images[list(indices)])
        return list(zip(images, self.labels[list(indices)].tolist()))

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]


def digits_arrays() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8x8 digits as float images ``[N, 1, 8, 8]`` in [0, 1], split 80/20
    stratified with a fixed seed: ``(train_images, train_labels, test_images, test_labels)``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images / 16.0).float().unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=0.2, stratify=digits.target, random_state=DIGITS_SPLIT_SEED
    )
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


@dataclass(frozen=True)
class TorchvisionSource:
    """A torchvision dataset class and the augmentation that suits its images."""

    dataset: Callable
    flip: bool


TORCHVISION_SOURCES: dict[str, TorchvisionSource] = {
    "cifar10": TorchvisionSource(datasets.CIFAR10, flip=True),
    "cifar100": TorchvisionSource(datasets.CIFAR100, flip=True),
    "mnist": TorchvisionSource(datasets.MNIST, flip=False),
    "fashion-mnist": TorchvisionSource(datasets.FashionMNIST, flip=True),
}
BUILTIN_SOURCES = ("digits", *TORCHVISION_SOURCES)


def _check_classes(counts: dict[str, int], where: str) -> None:
    """DataError before training for an empty class or fewer than two classes."""
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise DataError(f"{where}: class folder(s) without readable images: {', '.join(empty[:5])}")
    if len(counts) < 2:
        found = f"only class {next(iter(counts))!r}" if counts else "no class folders"
        raise DataError(f"{where}: {found}; classification needs at least two classes (one sub-folder per class)")


def _folder_samples(root: Path, strict: bool) -> tuple[list[tuple[str, int]], list[str], list[str]]:
    """``(samples, classes, skipped)`` of a class-per-folder tree, with empty classes refused."""
    try:
        classes, class_to_idx = find_classes(str(root))
    except FileNotFoundError:
        classes, class_to_idx = [], {}
    found = make_dataset(str(root), class_to_idx, extensions=IMAGE_EXTENSIONS, allow_empty=True) if classes else []
    samples, skipped = drop_unreadable(found, strict)
    counts = {name: 0 for name in classes}
    for _, label in samples:
        counts[classes[label]] += 1
    _check_classes(counts, str(root))
    return samples, classes, skipped


def _split(samples: list[tuple[str, int]], fraction: float, seed: int, where: Path) -> tuple[list, list]:
    """Stratified split of one folder's samples into (train, val) with a fixed seed."""
    from sklearn.model_selection import train_test_split

    labels = [label for _, label in samples]
    if min(np.bincount(labels)) < 2:
        raise DataError(f"{where}: every class needs at least 2 images to split off a validation part (or add a val/ folder)")
    try:
        train, val = train_test_split(samples, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as e:
        raise DataError(f"{where}: cannot split {len(samples)} images with --val-fraction {fraction}: {e}") from None
    return train, val


def folder_data(root: Path, prep: Preprocessing, *, val_fraction: float, seed: int, strict: bool, train: bool) -> TaskData:
    """An image-folder tree: ``root/train/<class>/*`` with ``root/val/<class>/*`` (or test/, valid/),
    or ``root/<class>/*`` split stratified with ``val_fraction`` and ``seed``."""
    val_dir = next((root / n for n in VAL_DIR_NAMES if (root / n).is_dir()), None)
    if (root / "train").is_dir() and val_dir is not None:
        val_samples, classes, skipped = _folder_samples(val_dir, strict)
        train_samples = None
        if train:
            train_samples, train_classes, train_skipped = _folder_samples(root / "train", strict)
            if train_classes != classes:
                diff = sorted(set(train_classes) ^ set(classes))
                raise DataError(f"{root}: train/ and {val_dir.name}/ have different classes (only in one: {', '.join(diff[:5])})")
            skipped = train_skipped + skipped
        layout = f"train/ + {val_dir.name}/"
    else:
        samples, classes, skipped = _folder_samples(root, strict)
        train_samples, val_samples = _split(samples, val_fraction, seed, root)
        layout = f"one folder split {1 - val_fraction:.0%}/{val_fraction:.0%}"
    return TaskData(
        train=ImageDataset(train_samples, classes, train_transform(prep, "crop", flip=True)) if train else None,
        val=ImageDataset(val_samples, classes, eval_transform(prep)),
        class_names=classes,
        skipped=skipped,
        info=dict(source=str(root), layout=layout),
    )


def torchvision_data(name: str, root: str, prep: Preprocessing, *, download: bool, train: bool) -> TaskData:
    """A torchvision dataset (its train and test sets) stored under ``root``; fetched only with ``download``."""
    source = TORCHVISION_SOURCES[name]

    def load(is_train: bool) -> Dataset:
        try:
            return source.dataset(root, train=is_train, download=download)
        except RuntimeError as e:
            hint = "" if download else "; pass --download to fetch it (needs internet)"
            raise DataError(f"{name} not found under {root!r} ({str(e).splitlines()[0]}){hint}") from None

    test = load(False)
    classes = [str(c) for c in test.classes]
    return TaskData(
        train=ImageDataset(load(True), classes, train_transform(prep, "affine", source.flip), to_rgb) if train else None,
        val=ImageDataset(test, classes, eval_transform(prep), to_rgb),
        class_names=classes,
        info=dict(source=name, root=str(root)),
    )


def digits_data(prep: Preprocessing, *, train: bool) -> TaskData:
    """The embedded digits set: 1,437 training and 360 test images, 10 classes, upsampled once to
    ``img_size``; training batches get :class:`BatchRandomAffine`."""
    train_x, train_y, test_x, test_y = digits_arrays()
    upsample = v2.Resize(prep.img_size, antialias=True)
    to_input = _to_input(prep)  # the images are float already; ToDtype leaves them as they are
    classes = [str(d) for d in range(10)]
    return TaskData(
        train=TensorImageDataset(upsample(train_x), train_y, classes, v2.Compose([BatchRandomAffine(), *to_input])) if train else None,
        val=TensorImageDataset(upsample(test_x), test_y, classes, v2.Compose(to_input)),
        class_names=classes,
        info=dict(source="digits", split=f"stratified 80/20, seed {DIGITS_SPLIT_SEED}"),
        in_memory=True,
    )


def build_classification_data(
    data: str,
    prep: Preprocessing,
    *,
    train: bool = True,
    data_root: str = "data",
    download: bool = False,
    val_fraction: float = 0.2,
    seed: int = 0,
    strict: bool = False,
    limit_train: int = 0,
    limit_val: int = 0,
) -> TaskData:
    """Datasets for ``data``: ``digits``, a torchvision name, or an image-folder path.

    Items are ``(image [3, S, S] float, label int)``. ``limit_train``/``limit_val`` keep seeded random
    subsets (:func:`~vovnet.data.splits.seeded_subset`; 0 = everything). Raises DataError for missing data, empty or single classes, and unreadable
    files under ``strict``.
    """
    if data == "digits":
        result = digits_data(prep, train=train)
    elif data in TORCHVISION_SOURCES:
        result = torchvision_data(data, data_root, prep, download=download, train=train)
    elif Path(data).is_dir():
        result = folder_data(Path(data), prep, val_fraction=val_fraction, seed=seed, strict=strict, train=train)
    else:
        raise DataError(f"--data {data!r} is neither a folder nor one of {', '.join(BUILTIN_SOURCES)}")
    if result.train is not None:
        result.train = seeded_subset(result.train, limit_train, seed)
    result.val = seeded_subset(result.val, limit_val, seed)
    result.info.update(train_size=len(result.train) if result.train is not None else 0, val_size=len(result.val),
                       skipped=len(result.skipped))
    return result
