"""COCO-format data: make-shapes round trip, and every kind of bad annotation skipped and counted (or refused)."""

import json

import numpy as np
import pytest
import torch

from vovnet.cli import main
from vovnet.data.coco import AnnotationError, CocoDataset, encode_uncompressed_rle, png_bytes, segmentation_to_mask
from vovnet.data.shapes import ShapesConfig, ShapesDataset


def test_make_shapes_round_trip_through_the_loader(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["make-shapes", str(out), "--n", "4", "--val-n", "2", "--image-size", "64", "--seed", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train"]["images"] == 4 and summary["val"]["images"] == 2
    kind, annotations, image_dir = summary["val"]["data"].split(":")
    assert kind == "coco"
    loaded = CocoDataset(annotations, image_dir)
    reference = ShapesDataset("val", 2, seed=3, config=ShapesConfig(image_size=64))
    assert loaded.class_names == list(reference.class_names) and loaded.has_masks
    assert loaded.report.problems == {} and loaded.report.images == 2
    for i in range(2):
        (a, ta), (b, tb) = loaded[i], reference[i]
        assert torch.equal(a, b)
        for key in ("boxes", "labels", "masks"):
            assert torch.equal(ta[key], tb[key]), key


def test_make_shapes_usage_error(tmp_path, capsys):
    assert main(["make-shapes", str(tmp_path / "x"), "--n", "0"]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err


def test_rle_round_trip_and_polygons():
    rng = np.random.default_rng(0)
    for shape in ((5, 7), (1, 1), (6, 6)):
        mask = rng.random(shape) > 0.5
        rle = encode_uncompressed_rle(mask)
        assert rle["size"] == list(shape)
        assert np.array_equal(segmentation_to_mask(rle, *shape), mask)
    square = segmentation_to_mask([[2, 2, 6, 2, 6, 6, 2, 6]], 10, 10)
    assert square[3:6, 3:6].all() and not square[7:, :].any() and not square[:, 8:].any()
    pycocotools_mask = pytest.importorskip("pycocotools.mask")
    mask = np.zeros((8, 9), dtype=np.uint8)
    mask[2:6, 1:4] = 1
    compressed = pycocotools_mask.encode(np.asfortranarray(mask))
    compressed["counts"] = compressed["counts"].decode()
    assert np.array_equal(segmentation_to_mask(compressed, 8, 9), mask.astype(bool))


# ---- bad annotations ------------------------------------------------------------------------------------

W, H = 40, 30
GOOD_POLYGON = [[5, 5, 15, 5, 15, 15, 5, 15]]


def _write_dataset(root, annotations, images=None, categories=None):
    (root / "img").mkdir(parents=True)
    images = images or [{"id": i, "file_name": f"{i}.png", "height": H, "width": W} for i in (1, 2, 3)]
    for img in images:
        if img["file_name"] != "missing.png":
            (root / "img" / img["file_name"]).write_bytes(png_bytes(torch.zeros(3, H, W, dtype=torch.uint8)))
    categories = categories or [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, root / "img"


def _ann(ann_id, image_id=1, category_id=3, bbox=(5, 5, 10, 10), segmentation=None, **extra):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": list(bbox),
        "segmentation": GOOD_POLYGON if segmentation is None else segmentation,
        "iscrowd": 0,
        **extra,
    }


BAD_CASES = {
    "zero_area_box": _ann(10, bbox=(5, 5, 0, 8)),
    "box_outside_image": _ann(11, bbox=(W + 5, 2, 10, 10)),
    "degenerate_polygon": _ann(12, segmentation=[[1, 1, 5, 5]]),
    "unknown_category": _ann(13, category_id=99),
    "unknown_image": _ann(14, image_id=42),
    "bad_segmentation": _ann(15, segmentation={"counts": [0, 4], "size": [2, 2]}),
}


@pytest.mark.parametrize("problem", sorted(BAD_CASES))
def test_each_bad_annotation_is_skipped_and_counted_or_refused_when_strict(tmp_path, problem):
    path, image_dir = _write_dataset(tmp_path, [_ann(1), BAD_CASES[problem]])
    dataset = CocoDataset(path, image_dir)
    assert dataset.report.problems == {problem: 1}
    assert dataset.report.annotations == 1 and problem in dataset.report.summary()
    _, target = dataset[0]
    assert target["labels"].tolist() == [1]  # category id 3 "cat" sorts before 7 "dog"
    with pytest.raises(AnnotationError, match=f"1 {problem}"):
        CocoDataset(path, image_dir, strict=True)


def test_missing_image_is_skipped_with_its_annotations(tmp_path):
    images = [
        {"id": 1, "file_name": "1.png", "height": H, "width": W},
        {"id": 2, "file_name": "missing.png", "height": H, "width": W},
    ]
    path, image_dir = _write_dataset(tmp_path, [_ann(1), _ann(2, image_id=2), _ann(3, image_id=2)], images=images)
    dataset = CocoDataset(path, image_dir)
    assert len(dataset) == 1 and dataset.report.problems == {"missing_image": 1}
    assert "missing.png" in dataset.report.examples("missing_image")[0]
    with pytest.raises(AnnotationError, match="1 missing_image .*missing.png"):
        CocoDataset(path, image_dir, strict=True)


def test_negatives_crowds_clipping_and_category_order(tmp_path):
    anns = [
        _ann(1, category_id=7, bbox=(30, 20, 20, 20)),  # partly outside: clipped to the image
        _ann(2, image_id=2, iscrowd=1),  # crowd regions are ignored, never an error
    ]
    path, image_dir = _write_dataset(tmp_path, anns)
    dataset = CocoDataset(path, image_dir, strict=True)
    assert dataset.class_names == ["cat", "dog"]
    assert len(dataset) == 3 and dataset.report.negatives == 2 and dataset.report.skipped["crowd"] == 1
    _, target = dataset[0]
    assert target["boxes"].tolist() == [[30.0, 20.0, 40.0, 30.0]] and target["labels"].tolist() == [2]
    assert target["masks"].shape == (1, H, W)
    image, negative = dataset[1]
    assert image.shape == (3, H, W) and negative["boxes"].shape == (0, 4) and negative["masks"].shape == (0, H, W)


def test_unusable_files_raise_one_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        CocoDataset(bad, tmp_path)
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(AnnotationError, match="not a COCO instances file"):
        CocoDataset(bad, tmp_path)
    with pytest.raises(AnnotationError, match="cannot read"):
        CocoDataset(tmp_path / "nope.json", tmp_path)
