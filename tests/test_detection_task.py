"""``--task detect`` through the one training loop: train, eval, predict on tiny shapes and COCO data."""

import json

import pytest
import torch
from pycocotools import mask as coco_mask

from vovnet.cli import main
from vovnet.data.classification import load_image
from vovnet.data.coco import png_bytes
from vovnet.data.shapes import ShapesConfig, render_scene
from vovnet.engine.runtime import Runtime
from vovnet.engine.task import task_config
from vovnet.tasks.detection.task import DetectionTask

TINY = ["--img-size", "64", "--epochs", "1", "--batch-size", "2", "--quiet", "--model", "vovnet19_slim_dw"]


@pytest.fixture(scope="module")
def shapes_coco(tmp_path_factory):
    """make-shapes output: 4 training and 2 validation images of 64 px."""
    out = tmp_path_factory.mktemp("shapes")
    assert main(["make-shapes", str(out), "--n", "4", "--val-n", "2", "--image-size", "64"]) == 0
    return out


def _coco(root, split="train"):
    return f"coco:{root}/annotations/{split}.json:{root}/{split}"


@pytest.mark.slow  # a training run
def test_train_eval_predict_centermask(tmp_path, shapes_coco, capsys):
    run = tmp_path / "run"
    args = ["train", "--task", "detect", "--arch", "centermask", "--data", _coco(shapes_coco), *TINY, "--out", str(run)]
    assert main([*args, "-o", f"val_data={_coco(shapes_coco, 'val')}", "--json"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "detect" and summary["finished"] and summary["primary_metric"] == "bbox_map"
    assert summary["bbox_map"] == summary["final_metrics"]["bbox_map"] == summary["test_acc"]
    assert summary["best_bbox_map"] == summary["best_acc"] >= summary["bbox_map"]
    for key in ("bbox_map", "bbox_map_50", "segm_map", "loss"):
        assert 0 <= summary["final_metrics"][key] <= (1 if key != "loss" else 100), key
    assert summary["data"]["train_images"] == 4 and summary["data"]["val_images"] == 2
    capsys.readouterr()

    checkpoint = str(run / "last.safetensors")
    assert main(["eval", "--checkpoint", checkpoint, "--data", _coco(shapes_coco, "val"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"bbox_map", "bbox_map_50", "segm_map"} <= set(result["metrics"]) and result["images"] == 2
    assert main(["eval", "--checkpoint", checkpoint, "--data", _coco(shapes_coco, "val"), "--json", "--deploy"]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert fast["metrics"]["loss"] == result["metrics"]["loss"]  # the eval model's, in training mode
    for key in ("bbox_map", "bbox_map_50", "segm_map"):  # the deployed model's detections, scored
        assert fast["metrics"][key] == pytest.approx(result["metrics"][key], abs=1e-3), key

    image = tmp_path / "scene.png"
    image.write_bytes(png_bytes(render_scene(0, split="val", config=ShapesConfig(image_size=64)).image))
    drawn = tmp_path / "drawn"
    assert main(["predict", "--checkpoint", checkpoint, str(image), "--out", str(drawn), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["image"] == str(image) and isinstance(rows[0]["detections"], list)
    assert (drawn / "scene.png").stat().st_size > 0
    assert json.loads((drawn / "predictions.json").read_text()) == rows
    # Deployed: the same detections (labels; boxes, scores and mask areas within float rounding), listed at any score.
    assert main(["predict", "--checkpoint", checkpoint, str(image), "--deploy", "--json", "--score-thresh", "0"]) == 0
    fast = json.loads(capsys.readouterr().out)[0]["detections"]
    assert main(["predict", "--checkpoint", checkpoint, str(image), "--json", "--score-thresh", "0"]) == 0
    want = json.loads(capsys.readouterr().out)[0]["detections"]
    assert len(want) > 0 and [d["label"] for d in fast] == [d["label"] for d in want]
    for w, g in zip(want, fast):
        assert g["score"] == pytest.approx(w["score"], abs=1e-4) and g["box"] == pytest.approx(w["box"], abs=1e-2)
        assert g["mask_area"] == pytest.approx(w["mask_area"], rel=0.02, abs=2)


@pytest.mark.slow
def test_eval_refuses_data_with_other_classes(tmp_path, shapes_coco, capsys):
    run = tmp_path / "run"
    assert main(["train", "--task", "detect", "--arch", "fcos", "--data", _coco(shapes_coco), *TINY, "--out", str(run)]) == 0
    annotations = json.loads((shapes_coco / "annotations" / "val.json").read_text())
    annotations["categories"][1]["name"] = "hexagon"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(annotations))
    capsys.readouterr()
    code = main(["eval", "--checkpoint", str(run / "last.safetensors"), "--data", f"coco:{other}:{shapes_coco}/val"])
    err = capsys.readouterr().err
    assert code == 1 and "hexagon" in err and "triangle" in err and "Traceback" not in err


@pytest.mark.slow
def test_coco_split_and_box_only_data(tmp_path, shapes_coco, capsys):
    annotations = json.loads((shapes_coco / "annotations" / "train.json").read_text())
    for ann in annotations["annotations"]:
        del ann["segmentation"]
    boxes_only = tmp_path / "boxes.json"
    boxes_only.write_text(json.dumps(annotations))
    data = f"coco:{boxes_only}:{shapes_coco}/train"
    code = main(["train", "--task", "detect", "--arch", "mask_rcnn_sag", "--data", data, *TINY, "--out", str(tmp_path / "a")])
    assert code == 1 and "has no segmentations" in capsys.readouterr().err
    run = tmp_path / "b"
    assert (
        main(
            [
                "train",
                "--task",
                "detect",
                "--arch",
                "retinanet",
                "--data",
                data,
                *TINY,
                "--out",
                str(run),
                "--val-fraction",
                "0.25",
            ]
        )
        == 0
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["train_images"] == 3 and summary["data"]["val_images"] == 1
    assert "segm_map" not in summary["final_metrics"]


def test_unknown_arch_is_a_usage_error(capsys):
    assert main(["train", "--task", "detect", "--arch", "yolo", "--epochs", "1"]) == 2
    assert "unknown detector arch 'yolo'" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "two", "1.5", "true"])
def test_bad_mask_detections_per_gt_is_a_usage_error(capsys, value):
    assert main(["train", "--task", "detect", "-o", f"mask_detections_per_gt={value}", "--epochs", "1"]) == 2
    assert "-o mask_detections_per_gt takes a count" in capsys.readouterr().err


def test_mask_detections_per_gt_reaches_the_detector():
    task = DetectionTask(task_config(task="detect", task_options={"mask_detections_per_gt": None}))
    assert task.build_model(["circle"]).mask_detections_per_gt is None
    assert DetectionTask(task_config(task="detect")).build_model(["circle"]).mask_detections_per_gt == 0


def test_predict_lists_and_draws_confident_detections(tmp_path):
    class OneDetection(torch.nn.Module):
        def forward(self, images):
            masks = torch.zeros(2, 1, *images[0].shape[-2:])
            masks[:, :, 2:10, 3:12] = 1.0
            boxes = torch.tensor([[3.0, 2, 12, 10], [0.0, 0, 5, 5]])
            return [{"boxes": boxes, "labels": torch.tensor([2, 1]), "scores": torch.tensor([0.9, 0.3]), "masks": masks}]

    image = tmp_path / "blank.png"
    image.write_bytes(png_bytes(torch.zeros(3, 20, 24, dtype=torch.uint8)))
    task = DetectionTask(task_config(task="detect", out=str(tmp_path / "out")))
    rows = task.predict(OneDetection(), {"class_names": ["a", "b"]}, [str(image)], Runtime.create("cpu"))
    (record,) = rows[0]["detections"]
    rle = record.pop("segmentation")
    assert record == {"label": 2, "class": "b", "score": 0.9, "box": [3.0, 2.0, 12.0, 10.0], "mask_area": 72}
    mask = torch.zeros(20, 24, dtype=torch.bool)
    mask[2:10, 3:12] = True
    assert torch.equal(torch.from_numpy(coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})).bool(), mask)
    assert "b 0.90" in task.format_predictions(rows)
    drawn = load_image(tmp_path / "out" / "blank.png")
    assert drawn.size == (24, 20) and drawn.getpixel((6, 5)) != (0, 0, 0)  # the mask overlay is painted


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_drop_path_rate_reaches_dense_backbones(task):
    from vovnet.engine.task import get_task
    from vovnet.models.layers import DropPath

    def drop_paths(rate):
        model = get_task(task)(task_config(task=task, model="vovnet39", drop_path_rate=rate)).build_model(["bg", "circle"])
        return [m.p for m in model.backbone.body.modules() if isinstance(m, DropPath)]

    rates = drop_paths(0.2)
    assert rates and max(rates) == pytest.approx(0.2) and drop_paths(0.0) == []


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_drop_rate_is_refused_for_dense_tasks(capsys, task):
    assert main(["train", "--task", task, "--drop-rate", "0.2", "--epochs", "1"]) == 2
    assert "--drop-rate applies to classifiers" in capsys.readouterr().err
