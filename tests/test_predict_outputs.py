"""What ``vovnet predict`` gives a user: masks as COCO RLE (detections and segmenters' classes), a COCO results file
that pycocotools and faster-coco-eval score as ``vovnet eval`` does, and the score threshold of what is listed."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch
from conftest import randomize_norm_stats, spread_detector_heads
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import vovnet
from vovnet.cli import main
from vovnet.data.classification import load_image
from vovnet.data.coco import image_tensor
from vovnet.tasks.detection.metrics import binary_masks
from vovnet.tasks.detection.predict import coco_category_ids, predict_detections
from vovnet.weights.official_detectors import COCO_CATEGORY_IDS, COCO_CLASSES

NAMES = ["circle", "triangle", "rectangle", "ellipse"]  # the shapes classes, category ids 1..4


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """make-shapes output: three 64-px validation images (and one training image, the least it writes)."""
    root = tmp_path_factory.mktemp("shapes")
    assert main(["make-shapes", str(root), "--n", "1", "--val-n", "3", "--image-size", "64"]) == 0
    return root


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A random CenterMask in the centermask2 dialect (its MaskIoU head scores the masks), every candidate kept."""
    torch.manual_seed(0)
    model = vovnet.create_detector("centermask", "vovnet19_slim_dw", NAMES, image_size=64, max_size=64, dialect="centermask2",
                                   score_thresh=0.0)
    spread_detector_heads(randomize_norm_stats(model))
    return model, vovnet.save_detector(model, tmp_path_factory.mktemp("ckpt") / "detector.safetensors")


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_detections_carry_their_masks_as_coco_rle(detector, shapes, tmp_path, capsys):
    model, path = detector
    image = shapes / "val" / "000000.png"
    assert main(["predict", "--checkpoint", str(path), str(image), "--score-thresh", "0", "--out", str(tmp_path), "--json"]) == 0
    records = _json(capsys)[0]["detections"]
    assert json.loads((tmp_path / "predictions.json").read_text())[0]["detections"] == records
    want = predict_detections(model, image_tensor(load_image(image)))
    masks = binary_masks(want).numpy()
    assert len(records) == len(masks) > 0
    for record, mask in zip(records, masks):
        rle = record["segmentation"]
        assert rle["size"] == [64, 64] and isinstance(rle["counts"], str)
        decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), mask)  # the pasted mask, pixel for pixel
        assert record["mask_area"] == int(mask.sum()) == int(coco_mask.area({"size": rle["size"], "counts": rle["counts"].encode()}))
        assert isinstance(record["mask_score"], float)  # the MaskIoU head's score (random here)


def test_score_thresh_picks_what_is_listed_and_drawn(detector, shapes, tmp_path, capsys):
    _, path = detector
    image = str(shapes / "val" / "000001.png")
    def listed(*argv) -> list[float]:
        assert main(["predict", "--checkpoint", str(path), image, "--json", *argv]) == 0
        return [d["score"] for d in _json(capsys)[0]["detections"]]

    every = listed("--score-thresh", "0")
    assert len(every) > 2 and every == sorted(every, reverse=True)
    middle = (every[len(every) // 2] + every[len(every) // 2 - 1]) / 2  # between two listed scores, away from rounding
    assert listed("--score-thresh", str(middle)) == [s for s in every if s >= middle] != every
    assert listed() == [s for s in every if s >= 0.5]  # the default, as detectron2's demo
    for argv, message in [
        (["--score-thresh", "1.5"], "--score-thresh takes a score from 0 to 1"),
        (["--format", "coco"], "--format coco writes DIR/coco_results.json: give --out DIR"),
        (["--format", "coco", "--out", str(tmp_path), "--score-thresh", "0.2"], "--format coco writes every detection"),
    ]:
        assert main(["predict", "--checkpoint", str(path), image, *argv]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "scene.png").write_bytes((shapes / "val" / "000001.png").read_bytes())
    assert main(["predict", "--checkpoint", str(path), str(tmp_path / "scene.png"), "--format", "coco", "--out", str(tmp_path)]) == 2
    assert "scene.png is not named by its COCO image id" in capsys.readouterr().err


def _cocoeval(gt: COCO, results: list[dict], kind: str, evaluator=COCOeval) -> list[float]:
    """AP and AP50 of ``results`` against ``gt``; masks scored as centermask2 does (without boxes, by mask_score)."""
    results = copy.deepcopy(results)
    if kind == "segm":
        for r in results:
            r.pop("bbox")
            r["score"] = r.pop("mask_score")
    with contextlib.redirect_stdout(io.StringIO()):
        e = evaluator(gt, gt.loadRes(results), kind)
        e.evaluate(), e.accumulate(), e.summarize()
    return [float(e.stats[0]), float(e.stats[1])]


def _own_annotations(shapes, results: list[dict], path) -> str:
    """The shapes validation images annotated with every third detection of the model itself on each, so that the
    detections score an AP between 0 and 1 (a random model's against the true shapes is 0). Every image keeps an
    object: torchmetrics, under ``vovnet eval``, leaves images without any out of mask AP, which COCOeval does not."""
    data = json.loads((shapes / "annotations" / "val.json").read_text())
    usable = [r for r in results if r["bbox"][2] > 1 and r["bbox"][3] > 1 and coco_mask.area(
        {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()}) > 0]
    chosen = [r for image in data["images"] for r in [u for u in usable if u["image_id"] == image["id"]][::3]]
    assert {r["image_id"] for r in chosen} == {image["id"] for image in data["images"]}
    data["annotations"] = [
        {"id": k + 1, "image_id": r["image_id"], "category_id": r["category_id"], "bbox": r["bbox"], "segmentation": r["segmentation"],
         "area": float(coco_mask.area({"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()})),
         "iscrowd": 0}
        for k, r in enumerate(chosen)
    ]
    path.write_text(json.dumps(data))
    return str(path)


def test_coco_results_score_as_vovnet_eval(detector, shapes, tmp_path, capsys):
    _, path = detector
    images = sorted(str(p) for p in (shapes / "val").iterdir())
    assert main(["predict", "--checkpoint", str(path), *images, "--format", "coco", "--out", str(tmp_path), "--json"]) == 0
    rows = _json(capsys)
    results = json.loads((tmp_path / "coco_results.json").read_text())
    assert [r["image_id"] for r in rows] == [0, 1, 2] and sum(r["detections"] for r in rows) == len(results) > 0
    assert set(results[0]) == {"image_id", "category_id", "bbox", "score", "segmentation", "mask_score"}
    assert {r["category_id"] for r in results} <= {1, 2, 3, 4}

    from faster_coco_eval import COCO as FastCOCO
    from faster_coco_eval import COCOeval_faster

    own = _own_annotations(shapes, results, tmp_path / "own.json")
    for ann_file in (str(shapes / "annotations" / "val.json"), own):
        assert main(["eval", "--checkpoint", str(path), "--data", f"coco:{ann_file}:{shapes / 'val'}", "--json"]) == 0
        metrics = _json(capsys)["metrics"]
        with contextlib.redirect_stdout(io.StringIO()):
            gt, fast_gt = COCO(ann_file), FastCOCO(ann_file)
        for kind in ("bbox", "segm"):
            want = [metrics[f"{kind}_map"], metrics[f"{kind}_map_50"]]
            assert _cocoeval(gt, results, kind) == pytest.approx(want, abs=1e-6), (ann_file, kind)
            assert _cocoeval(fast_gt, results, kind, COCOeval_faster) == pytest.approx(want, abs=1e-6), (ann_file, kind)
    assert 0 < metrics["bbox_map"] < 1 and 0 < metrics["segm_map"] < 1  # against its own detections: a real comparison


def test_coco_category_ids():
    assert coco_category_ids(NAMES) == [1, 2, 3, 4]
    ids = coco_category_ids(COCO_CLASSES)
    assert ids == list(COCO_CATEGORY_IDS) and len(set(ids)) == 80 and ids[0] == 1 and ids[-1] == 90
    assert dict(zip(COCO_CLASSES, ids))["dining table"] == 67 and dict(zip(COCO_CLASSES, ids))["tv"] == 72


def test_segmenter_predictions_carry_each_class_as_rle(shapes, tmp_path, capsys):
    torch.manual_seed(0)
    segmenter = randomize_norm_stats(vovnet.create_segmenter("fpn_semantic", "vovnet19_slim_dw", ["background", *NAMES],
                                                             fpn_channels=16, head_channels=16))
    path = vovnet.save_segmenter(segmenter, tmp_path / "segmenter.safetensors")
    image = shapes / "val" / "000000.png"
    assert main(["predict", "--checkpoint", str(path), str(image), "--out", str(tmp_path / "out"), "--json"]) == 0
    row = _json(capsys)[0]
    from PIL import Image

    class_map = np.array(Image.open(row["class_map"]))  # the class-index PNG, as before
    assert set(row["segmentation"]) == set(row["class_shares"])
    for k, name in enumerate(["background", *NAMES]):
        if name not in row["segmentation"]:
            assert not (class_map == k).any()
            continue
        rle = row["segmentation"][name]
        decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
        assert np.array_equal(decoded, class_map == k), name
    for argv, message in [(["--format", "coco", "--out", str(tmp_path)], "--format coco: segment predictions are written as json"),
                          (["--score-thresh", "0.3"], "--score-thresh does not apply to a segment checkpoint")]:
        assert main(["predict", "--checkpoint", str(path), str(image), *argv]) == 2
        assert message in capsys.readouterr().err
