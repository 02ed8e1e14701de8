"""An embedded, deterministic shapes dataset for detection, instance and semantic segmentation.

Each scene is rendered from ``(seed, split, index)`` alone, on the fly: circles, triangles, rectangles and
ellipses of random colour, size, rotation and overlap on a textured background (smooth blotches and faint
stripes: nothing in the texture has a shape's sharp edges). A scene carries boxes,
instance masks (of the visible part), a class per instance and a per-pixel class map, so detection and
semantic segmentation train on the same pictures. Shapes may overlap, but never hide more than
``1 - min_visible`` of another shape, so every painted shape is a fair, annotated target.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from torchvision import tv_tensors

CLASSES = ("circle", "triangle", "rectangle", "ellipse")
SPLITS = {"train": 0, "val": 1}
DEFAULT_SIZES = {"train": 2000, "val": 200}


@dataclass(frozen=True)
class ShapesConfig:
    """How scenes look.

    Attributes:
        image_size: side of the square images in pixels.
        min_objects, max_objects: shapes attempted per scene (a shape that cannot be placed is left out).
        min_size, max_size: shape diameter as a fraction of ``image_size``.
        min_visible: every shape keeps at least this fraction of its area visible.
    """

    image_size: int = 160
    min_objects: int = 1
    max_objects: int = 4
    min_size: float = 0.2
    max_size: float = 0.5
    min_visible: float = 0.8


@dataclass
class Scene:
    """One rendered scene.

    Attributes:
        image: ``[3, H, W]`` uint8 RGB.
        boxes: ``[N, 4]`` float32 x1, y1, x2, y2 (pixel edges) of the visible parts.
        labels: ``[N]`` int64 in 1..4 (``CLASSES[label - 1]``).
        masks: ``[N, H, W]`` bool visible part of each shape.
        class_map: ``[H, W]`` int64 label of the shape on top at each pixel, 0 for background.
    """

    image: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    class_map: torch.Tensor


def _rotated(dx: np.ndarray, dy: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    return dx * c + dy * s, -dx * s + dy * c


def _circle(dx, dy, radius, rng) -> np.ndarray:
    return dx**2 + dy**2 <= radius**2


def _ellipse(dx, dy, radius, rng) -> np.ndarray:
    u, v = _rotated(dx, dy, rng.uniform(0, np.pi))
    minor = radius * rng.uniform(0.4, 0.65)  # clearly not a circle
    return (u / radius) ** 2 + (v / minor) ** 2 <= 1.0


def _rectangle(dx, dy, radius, rng) -> np.ndarray:
    u, v = _rotated(dx, dy, rng.uniform(0, np.pi / 2))
    half_w = radius / np.sqrt(2) * rng.uniform(0.9, 1.2)
    half_h = half_w * rng.uniform(0.5, 1.0)
    return (np.abs(u) <= half_w) & (np.abs(v) <= half_h)


def _triangle(dx, dy, radius, rng) -> np.ndarray:
    start = rng.uniform(0, 2 * np.pi)
    angles = start + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.35, 0.35, 3)
    xs, ys = radius * np.cos(angles), radius * np.sin(angles)
    # Inside a counter-clockwise triangle = left of all three edges.
    inside = np.ones_like(dx, dtype=bool)
    for i in range(3):
        j = (i + 1) % 3
        inside &= (xs[j] - xs[i]) * (dy - ys[i]) - (ys[j] - ys[i]) * (dx - xs[i]) >= 0
    return inside


SHAPE_MASKS = {"circle": _circle, "triangle": _triangle, "rectangle": _rectangle, "ellipse": _ellipse}


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(y, x)`` coordinates of the pixel centres of a ``size`` square, ``[size, size]`` float32 each."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, sigma: float) -> np.ndarray:
    """``[size, size, 3]`` low-frequency noise: a ``cells + 1`` square grid of normal values, bilinearly
    interpolated, so the texture has soft blotches and no edges a shape could be mistaken for."""
    knots = rng.normal(0, sigma, (cells + 1, cells + 1, 3)).astype(np.float32)
    position = (np.arange(size, dtype=np.float32) + 0.5) * (cells / size)
    low = np.minimum(position.astype(int), cells - 1)
    frac = (position - low)[:, None]
    rows = knots[low] * (1 - frac)[..., None] + knots[low + 1] * frac[..., None]  # [size, cells + 1, 3]
    return rows[:, low] * (1 - frac.T)[..., None] + rows[:, low + 1] * frac.T[..., None]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """``[H, W, 3]`` float32 texture: base colour + smooth blotchy noise + faint stripes."""
    base = rng.uniform(0.15, 0.85, 3).astype(np.float32)
    blotches = _smooth_noise(rng, size, int(rng.integers(2, 6)), 0.12)
    yy, xx = _pixel_grid(size)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 24)
    wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period))
    stripes = (rng.uniform(0.0, 0.08) * rng.choice([-1, 1], 3)).astype(np.float32)
    return base + blotches + wave[..., None] * stripes


def _shape_colour(rng: np.random.Generator, underneath: np.ndarray, min_distance: float = 0.75) -> np.ndarray:
    """A random colour at least ``min_distance`` (L1 over RGB in 0..1) from ``underneath``, the mean colour
    of what the shape covers, so no shape melts into its surroundings (the most distant of 50 draws otherwise)."""
    candidates = rng.uniform(0, 1, (50, 3))
    distance = np.abs(candidates - underneath).sum(axis=1)
    far_enough = np.flatnonzero(distance >= min_distance)
    return candidates[far_enough[0] if len(far_enough) else distance.argmax()]


def render_scene(index: int, *, seed: int = 0, split: str = "train", config: ShapesConfig = ShapesConfig()) -> Scene:
    """Render scene ``index`` of ``split``; the same arguments always give the same scene, on any machine."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    size = config.image_size
    canvas = _background(rng, size)
    yy, xx = _pixel_grid(size)
    shapes: list[np.ndarray] = []  # full masks, in painting order
    areas: list[int] = []
    labels: list[int] = []
    owner = np.full((size, size), -1)  # which shape is visible at each pixel
    for _ in range(rng.integers(config.min_objects, config.max_objects + 1)):
        label = int(rng.integers(len(CLASSES)))
        for _attempt in range(10):
            radius = rng.uniform(config.min_size, config.max_size) * size / 2
            cx, cy = rng.uniform(radius, size - radius, 2)
            mask = SHAPE_MASKS[CLASSES[label]](xx - cx, yy - cy, radius, rng)
            new_owner = np.where(mask, len(shapes), owner)
            visible = np.bincount(new_owner.ravel() + 1, minlength=len(shapes) + 2)[1:-1]
            if mask.sum() >= 16 and np.all(visible >= config.min_visible * np.array(areas)):
                break
        else:
            continue
        shade = 1.0 + (xx[mask] - cx) * np.float32(rng.uniform(-0.004, 0.004))  # a gentle gradient across the shape
        canvas[mask] = _shape_colour(rng, canvas[mask].mean(axis=0)).astype(np.float32) * shade[:, None]
        shapes.append(mask)
        areas.append(int(mask.sum()))
        labels.append(label + 1)
        owner = new_owner
    grain = rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(0.025)
    image = np.clip(canvas + grain, 0, 1)
    masks = np.stack([owner == k for k in range(len(shapes))]) if shapes else np.zeros((0, size, size), bool)
    label_array = np.array(labels, dtype=np.int64)
    class_map = np.where(owner >= 0, np.concatenate([[0], label_array])[owner + 1], 0)
    return Scene(
        image=torch.from_numpy(np.ascontiguousarray((image * 255).round().astype(np.uint8).transpose(2, 0, 1))),
        boxes=torch.from_numpy(_tight_boxes(masks)),
        labels=torch.from_numpy(label_array),
        masks=torch.from_numpy(masks),
        class_map=torch.from_numpy(class_map.astype(np.int64)),
    )


def _tight_boxes(masks: np.ndarray) -> np.ndarray:
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # [N, H], [N, W]
    y1, x1 = rows.argmax(axis=1), cols.argmax(axis=1)
    y2, x2 = rows.shape[1] - rows[:, ::-1].argmax(axis=1), cols.shape[1] - cols[:, ::-1].argmax(axis=1)
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.float32).reshape(-1, 4)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes ``[N, 4]`` (x1, y1, x2, y2 at pixel edges: a 1-pixel mask has area 1) of non-empty ``[N, H, W]`` masks."""
    return torch.from_numpy(_tight_boxes(masks.cpu().numpy().astype(bool)))


class ShapesDataset(Dataset):
    """``num_images`` scenes of one split as a map-style dataset.

    Args:
        split: ``train`` or ``val`` (disjoint random streams).
        num_images: length (default 2000 train, 200 val).
        seed: dataset seed.
        config: scene look.
        transforms: a torchvision transforms v2 callable applied to ``(image, target)``.
        cache: keep each scene once rendered (about 60 kB a 128-px scene), so later epochs render nothing;
            :meth:`render_all` renders them all up front.

    ``dataset[i]`` -> ``(image, target)``: a ``tv_tensors.Image`` ``[3, H, W]`` uint8 and a dict with
    ``boxes`` (``tv_tensors.BoundingBoxes`` XYXY), ``masks`` (``tv_tensors.Mask`` ``[N, H, W]`` uint8),
    ``labels`` ``[N]`` int64, ``image_id`` int; before ``transforms``.
    """

    class_names = CLASSES
    has_masks = True

    def __init__(
        self,
        split: str = "train",
        num_images: int | None = None,
        *,
        seed: int = 0,
        config: ShapesConfig = ShapesConfig(),
        transforms=None,
        cache: bool = False,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.split = split
        self.num_images = DEFAULT_SIZES[split] if num_images is None else num_images
        self.seed = seed
        self.config = config
        self.transforms = transforms
        self._cache: dict[int, Scene] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_images

    def scene(self, index: int) -> Scene:
        if not 0 <= index < self.num_images:
            raise IndexError(index)
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        scene = render_scene(index, seed=self.seed, split=self.split, config=self.config)
        if self._cache is not None:
            self._cache[index] = scene
        return scene

    def render_all(self, indices=None, progress: bool = True) -> "ShapesDataset":
        """Render (and, with ``cache``, keep) the scenes at ``indices`` (all by default) now, so that training
        time is training alone; a progress bar shows on a terminal."""
        from tqdm import tqdm

        indices = range(self.num_images) if indices is None else indices
        for index in tqdm(indices, desc=f"rendering {self.split} scenes", leave=False, disable=None if progress else True):
            self.scene(index)
        return self

    def __getitem__(self, index: int):
        scene = self.scene(index)
        size = (self.config.image_size, self.config.image_size)
        image = tv_tensors.Image(scene.image)
        target = {
            "boxes": tv_tensors.BoundingBoxes(scene.boxes, format="XYXY", canvas_size=size),
            "masks": tv_tensors.Mask(scene.masks.to(torch.uint8)),
            "labels": scene.labels,
            "image_id": index,
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def render_scenes(dataset: Dataset, progress: bool = True) -> None:
    """Render (and keep) now the scenes ``dataset`` holds, so that training time is training alone:
    ``dataset`` is a shapes dataset (:class:`ShapesDataset`, ``ShapesSegmentation``) or a
    :class:`~torch.utils.data.Subset` of one, of which only the chosen scenes are rendered."""
    if isinstance(dataset, Subset):
        dataset.dataset.render_all(dataset.indices, progress=progress)
    else:
        dataset.render_all(progress=progress)


def export_shapes(
    out_dir: str | os.PathLike, sizes: dict[str, int], *, seed: int = 0, config: ShapesConfig = ShapesConfig()
) -> dict:
    """Write splits of the shapes dataset in COCO format: ``OUT/{split}/*.png`` + ``OUT/annotations/{split}.json``.

    ``sizes`` maps split -> number of images. Returns per split the image and annotation counts and the
    ``--data`` spec that reads it back (``coco:ANNOTATIONS:IMAGE_DIR``).
    """
    from .coco import write_coco

    out = Path(out_dir)
    summary = {}
    for split, n in sizes.items():
        dataset = ShapesDataset(split, n, seed=seed, config=config)
        image_dir, annotations = out / split, out / "annotations" / f"{split}.json"
        samples = ((s.image, {"boxes": s.boxes, "labels": s.labels, "masks": s.masks}) for s in map(dataset.scene, range(n)))
        counts = write_coco(samples, CLASSES, image_dir, annotations)
        summary[split] = dict(counts, data=f"coco:{annotations}:{image_dir}")
    return summary
