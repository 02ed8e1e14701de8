"""Segmentation data: the masks:IMAGES:MASKS reader with every kind of bad input, joint augmentation, batching, shapes."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from vovnet.data.segmentation import (
    IGNORE_INDEX,
    SHAPES_CLASS_NAMES,
    ShapesSegmentation,
    build_segmentation_data,
    collate_padded,
    read_mask,
    scan_mask_folder,
    segmentation_transforms,
)
from vovnet.data.shapes import ShapesConfig, render_scene
from vovnet.errors import DataError, UsageError

W, H = 40, 30


def _image(path, size=(W, H), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _mask(path, values, size=(W, H), mode="L"):
    """A mask whose left part is values[0], then values[1], ... in vertical bands."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), dtype=np.uint16 if mode == "I;16" else np.uint8)  # uint16 -> PIL mode I;16
    for i, v in enumerate(values):
        arr[:, i * size[0] // len(values):] = v
    Image.fromarray(arr).save(path)


@pytest.fixture
def folder(tmp_path):
    """Three good pairs and one file for every kind of bad input."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    _image(images / "a.png"), _mask(masks / "a.png", [0, 1, 2])
    _image(images / "sub" / "b.jpg"), _mask(masks / "sub" / "b.png", [0, 2])  # nested folders pair by relative path
    _image(images / "c.png"), _mask(masks / "c.png", [1, IGNORE_INDEX])  # 255 = ignore is valid
    _image(images / "size.png"), _mask(masks / "size.png", [0, 1], size=(W + 1, H))
    _image(images / "range.png"), _mask(masks / "range.png", [0, 7])
    _image(images / "no_mask.png")
    _mask(masks / "no_image.png", [0, 1])
    _image(images / "colour.png")
    Image.fromarray(np.dstack([np.zeros((H, W), np.uint8), np.ones((H, W), np.uint8), np.zeros((H, W), np.uint8)])).save(masks / "colour.png")
    _image(images / "broken_mask.png"), (masks / "broken_mask.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (images / "broken_image.png").write_bytes(b"not an image"), _mask(masks / "broken_image.png", [0])
    (masks / "classes.txt").write_text("background\none\ntwo\n")
    return images, masks


def test_every_bad_pair_is_reported_and_skipped(folder):
    images, masks = folder
    pairs, names, skipped = scan_mask_folder(images, masks)
    assert names == ["background", "one", "two"]
    assert sorted(p.name for p, _ in pairs) == ["a.png", "b.jpg", "c.png"]
    assert all(m.with_suffix("").name == p.with_suffix("").name for p, m in pairs)
    reasons = {line.split(":")[0].rsplit("/", 1)[-1]: line for line in skipped}
    assert len(skipped) == 7
    assert "no mask named no_mask.png" in reasons["no_mask.png"]
    assert "no image named no_image" in [r for k, r in reasons.items() if "no_image" in r][0]
    assert "mask is 41x30 but its image size.png is 40x30" in reasons["size.png"]
    assert "mask values [7] outside the 3 classes" in reasons["range.png"]
    assert "differing channels" in reasons["colour.png"]
    assert "unreadable mask" in reasons["broken_mask.png"]
    assert "unreadable image" in reasons["broken_image.png"]


def test_strict_fails_on_the_first_problem(folder):
    with pytest.raises(DataError, match=r"problem\(s\).*drop --strict"):
        scan_mask_folder(*folder, strict=True)


def test_without_classes_file_the_classes_are_read_off_the_masks(folder):
    images, masks = folder
    (masks / "classes.txt").unlink()
    pairs, names, skipped = scan_mask_folder(images, masks)
    assert names == [f"class_{i}" for i in range(8)]  # values up to 7 seen, 255 not a class
    assert "range.png" in {p.name for p, _ in pairs} and len(skipped) == 6
    # Given the classes a checkpoint was trained on, value 7 is out of range again.
    _, names, skipped = scan_mask_folder(images, masks, class_names=["bg", "one", "two"])
    assert names == ["bg", "one", "two"] and any("range.png" in s for s in skipped)


def test_no_usable_pair_is_an_error(tmp_path):
    _image(tmp_path / "i" / "x.png")
    _mask(tmp_path / "m" / "y.png", [0])
    with pytest.raises(DataError, match="no usable image/mask pairs"):
        scan_mask_folder(tmp_path / "i", tmp_path / "m")


def test_mask_formats(tmp_path):
    palette_mask = Image.fromarray(np.array([[0, 1], [2, 255]], np.uint8), "P")
    palette_mask.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [9] * (256 * 3 - 9))
    palette_mask.save(tmp_path / "p.png")
    assert read_mask(tmp_path / "p.png").tolist() == [[0, 1], [2, 255]]  # indices, not colours (VOC)
    _mask(tmp_path / "wide.png", [0, 300], mode="I;16")
    assert set(np.unique(read_mask(tmp_path / "wide.png"))) == {0, 300}
    Image.fromarray(np.full((2, 2, 3), 4, np.uint8)).save(tmp_path / "grey_rgb.png")
    assert read_mask(tmp_path / "grey_rgb.png").tolist() == [[4, 4], [4, 4]]


def test_spec_errors(tmp_path):
    with pytest.raises(UsageError, match="masks:IMAGES_DIR:MASKS_DIR"):
        build_segmentation_data("masks:only_one", crop_size=32)
    with pytest.raises(DataError, match="no such folder"):
        build_segmentation_data(f"masks:{tmp_path}/nope:{tmp_path}", crop_size=32)


def test_one_folder_is_split_and_classes_must_match_the_model(folder):
    images, masks = folder
    data = build_segmentation_data(f"masks:{images}:{masks}", crop_size=32, val_fraction=0.34, seed=1)
    assert len(data.train) == 2 and len(data.val) == 1 and data.class_names == ["background", "one", "two"]
    assert len(data.skipped) == 7 and data.info["skipped"] == 7 and not data.in_memory
    image, mask = data.train[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32) and mask.shape == (32, 32)
    image, mask = data.val[0]
    assert image.shape == (3, H, W) and mask.shape == (H, W)  # evaluation keeps the label's size
    with pytest.raises(DataError, match="differ from the model's"):
        build_segmentation_data(f"masks:{images}:{masks}", crop_size=32, class_names=["x", "y", "z"])


def test_train_and_val_subfolders(tmp_path):
    for split, names in (("train", "abc"), ("val", "d")):
        for n in names:
            _image(tmp_path / "img" / split / f"{n}.png")
            _mask(tmp_path / "lab" / split / f"{n}.png", [0, 3])
    data = build_segmentation_data(f"masks:{tmp_path}/img:{tmp_path}/lab", crop_size=32)
    assert (len(data.train), len(data.val), data.info["layout"]) == (3, 1, "train/ + val/")
    assert data.class_names == ["class_0", "class_1", "class_2", "class_3"]
    only_val = build_segmentation_data(f"masks:{tmp_path}/img:{tmp_path}/lab", crop_size=32, train=False)
    assert only_val.train is None and len(only_val.val) == 1


def test_augmentation_moves_image_and_mask_together():
    # Each class has its own grey level, so after any geometric change the mask must still name the pixel's grey.
    torch.manual_seed(0)
    mask = torch.zeros(64, 80, dtype=torch.uint8)
    mask[10:40, 5:30], mask[30:60, 45:75] = 1, 2
    image = (mask * 100).expand(3, -1, -1).clone()
    transform = segmentation_transforms(True, 48, scale=(0.5, 1.5), color_jitter=0.0)
    for _ in range(10):
        out_image, out_mask = transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        assert out_image.shape == (3, 48, 48) and out_mask.shape == (48, 48)
        assert set(out_mask.unique().tolist()) <= {0, 1, 2, IGNORE_INDEX}
        labelled = out_mask != IGNORE_INDEX
        grey = (out_image[0] * 255).round()
        pure = labelled & ((grey == 0) | (grey == 100) | (grey == 200))  # not blended with a neighbour by resizing
        assert pure.sum() > 0.5 * labelled.sum()  # even at half size most pixels are interior
        assert (grey[pure] / 100 == out_mask[pure].float()).float().mean() > 0.99
        assert (out_image[:, ~labelled] == 0).all()  # padding: black image, ignored label


@pytest.mark.parametrize("size", [128, 200])
def test_resized_label_edges_stay_on_the_image_edges(size):
    # A step from black to white at every row e of a 160-px image: after resizing, the mask's first labelled
    # row must be the image's first row above half grey. torchvision's NEAREST for masks misses 48 of these.
    transform = segmentation_transforms(True, size, scale=(1.0, 1.0), color_jitter=0.0)
    missed = []
    for e in range(20, 140):
        image, mask = torch.zeros(3, 160, 160, dtype=torch.uint8), torch.zeros(160, 160, dtype=torch.uint8)
        image[:, e:], mask[e:] = 255, 1
        out_image, out_mask = transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        assert out_mask.shape == (size, size)
        if (out_image[0, :, 0] > 0.5).int().argmax() != out_mask[:, 0].int().argmax():
            missed.append(e)
    assert missed == []


def test_collate_pads_images_with_zero_and_masks_with_ignore():
    a = (torch.ones(3, 4, 5), torch.zeros(4, 5, dtype=torch.uint8))
    b = (torch.ones(3, 6, 3), torch.ones(6, 3, dtype=torch.uint8))
    images, masks = collate_padded([a, b])
    assert images.shape == (2, 3, 6, 5) and masks.shape == (2, 6, 5) and masks.dtype == torch.int64
    assert (images[0, :, 4:] == 0).all() and (masks[0, 4:] == IGNORE_INDEX).all() and (masks[1, :, 3:] == IGNORE_INDEX).all()
    assert (masks[0, :4] == 0).all() and (masks[1, :, :3] == 1).all()


def test_shapes_class_maps_are_the_scenes():
    config = ShapesConfig(image_size=48)
    data = ShapesSegmentation("val", 3, seed=5, config=config)
    assert data.class_names == SHAPES_CLASS_NAMES == ("background", "circle", "triangle", "rectangle", "ellipse")
    image, mask = data[2]
    scene = render_scene(2, seed=5, split="val", config=config)
    assert torch.equal(image, scene.image) and torch.equal(mask.long(), scene.class_map)
    assert data.raw(2)[0] is data.raw(2)[0]  # rendered once, then kept
    with pytest.raises(IndexError):
        data.raw(3)
