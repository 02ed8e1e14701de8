"""The embedded shapes dataset: deterministic scenes whose boxes, masks and class map agree."""

import pytest
import torch
from torchvision import tv_tensors

from vovnet.data.shapes import CLASSES, ShapesConfig, ShapesDataset, masks_to_boxes, render_scene

SMALL = ShapesConfig(image_size=64)


def test_scenes_are_deterministic_and_splits_differ():
    a, b = render_scene(5, seed=1, config=SMALL), render_scene(5, seed=1, config=SMALL)
    for field in ("image", "boxes", "labels", "masks", "class_map"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.image, render_scene(6, seed=1, config=SMALL).image)
    assert not torch.equal(a.image, render_scene(5, seed=2, config=SMALL).image)
    assert not torch.equal(a.image, render_scene(5, seed=1, split="val", config=SMALL).image)
    with pytest.raises(ValueError, match="split"):
        render_scene(0, split="test")


def test_scene_annotations_agree():
    seen = set()
    for index in range(12):
        s = render_scene(index, config=SMALL)
        n = len(s.labels)
        assert s.image.shape == (3, 64, 64) and s.image.dtype == torch.uint8
        assert s.masks.shape == (n, 64, 64) and s.masks.dtype == torch.bool
        assert s.boxes.shape == (n, 4) and s.labels.dtype == torch.int64
        assert ((s.labels >= 1) & (s.labels <= len(CLASSES))).all()
        seen.update(s.labels.tolist())
        # masks are the visible parts: disjoint, non-trivial, tightly boxed
        assert (s.masks.sum(0) <= 1).all()
        assert (s.masks.flatten(1).sum(1) >= 8).all()
        assert torch.equal(s.boxes, masks_to_boxes(s.masks))
        # the class map is the label of the visible shape at each pixel, 0 elsewhere
        expected = (s.masks.long() * s.labels[:, None, None]).sum(0)
        assert torch.equal(s.class_map, expected)
        assert (s.class_map == 0).any()  # there is background
    assert seen == {1, 2, 3, 4}


def test_masks_to_boxes_uses_pixel_edges():
    m = torch.zeros(2, 10, 12, dtype=torch.bool)
    m[0, 3, 4] = True
    m[1, 2:5, 6:12] = True
    assert masks_to_boxes(m).tolist() == [[4, 3, 5, 4], [6, 2, 12, 5]]


def test_dataset_items_are_tv_tensors_and_sizes_are_configurable():
    ds = ShapesDataset("val", 3, seed=4, config=SMALL)
    assert len(ds) == 3 and ds.class_names == CLASSES
    image, target = ds[2]
    assert isinstance(image, tv_tensors.Image) and image.shape == (3, 64, 64)
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes) and target["boxes"].canvas_size == (64, 64)
    assert isinstance(target["masks"], tv_tensors.Mask) and target["masks"].dtype == torch.uint8
    scene = render_scene(2, seed=4, split="val", config=SMALL)
    assert torch.equal(image, scene.image) and torch.equal(target["labels"], scene.labels)
    assert len(ShapesDataset("train")) == 2000 and len(ShapesDataset("val")) == 200
    with pytest.raises(IndexError):
        ds[3]


def test_cache_keeps_each_scene_once_rendered():
    cached = ShapesDataset("val", 3, seed=2, config=SMALL, cache=True).render_all(progress=False)
    plain = ShapesDataset("val", 3, seed=2, config=SMALL)
    assert cached.scene(1) is cached.scene(1)  # rendered once, then kept
    assert plain.scene(1) is not plain.scene(1)
    assert torch.equal(cached.scene(1).image, plain.scene(1).image) and torch.equal(cached[2][0], plain[2][0])
