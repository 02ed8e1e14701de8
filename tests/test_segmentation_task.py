"""``--task segment`` through the one training loop: train, eval, predict on a tiny mask folder of shapes scenes."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vovnet import load_segmenter, read_checkpoint
from vovnet.cli import main
from vovnet.data.segmentation import read_mask
from vovnet.data.shapes import ShapesConfig, render_scene
from vovnet.engine.task import task_config
from vovnet.tasks.segmentation import SegmentationMetrics, SegmentationTask

SMALL = ["-o", "fpn_channels=32", "-o", "head_channels=32", "--img-size", "64", "--epochs", "1", "--batch-size", "2", "--quiet"]
CLASSES = ["background", "circle", "triangle", "rectangle", "ellipse"]


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    """Eight 64-px shapes scenes as an image folder and a mask folder (with classes.txt)."""
    root = tmp_path_factory.mktemp("masks")
    for i in range(8):
        scene = render_scene(i, config=ShapesConfig(image_size=64))
        (root / "images").mkdir(exist_ok=True), (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(scene.image.permute(1, 2, 0).numpy()).save(root / "images" / f"s{i}.jpg")
        Image.fromarray(scene.class_map.numpy().astype(np.uint8)).save(root / "masks" / f"s{i}.png")
    (root / "masks" / "classes.txt").write_text("\n".join(CLASSES))
    return root, f"masks:{root / 'images'}:{root / 'masks'}"


@pytest.fixture(scope="module")
def fpn_run(tmp_path_factory, shapes_folder):
    out = tmp_path_factory.mktemp("run") / "fpn"
    assert main(["train", "--task", "segment", "--data", shapes_folder[1], "--val-fraction", "0.25", *SMALL, "--out", str(out)]) == 0
    return out


def test_segment_options_follow_the_data_and_the_image_size():
    config = task_config(task="segment")
    shapes = SegmentationTask(config)
    # Progressive resizing: the input grows over the epochs and ends at --img-size, whatever that is.
    assert shapes.train_sizes == sorted(shapes.train_sizes) and shapes.train_sizes[-1] == config.img_size
    assert SegmentationTask(task_config(task="segment", img_size=96)).train_sizes[-1] == 96
    # The shapes scenes are random enough: no scale or colour augmentation unless asked; other data gets both.
    assert (shapes.options["scale"], shapes.options["color_jitter"]) == ([1.0, 1.0], 0.0)
    users = SegmentationTask(task_config(task="segment", data="masks:a:b"))
    low, high = users.options["scale"]
    assert low < 1 < high and users.options["color_jitter"] > 0
    given = SegmentationTask(task_config(task="segment", task_options={"scale": [0.5, 2.0], "color_jitter": 0.1}))
    assert (given.options["scale"], given.options["color_jitter"]) == ([0.5, 2.0], 0.1)


def test_train_writes_the_engines_outputs_with_segmentation_metrics(fpn_run):
    summary = json.loads((fpn_run / "summary.json").read_text())
    assert summary["task"] == "segment" and summary["finished"] and summary["primary_metric"] == "miou"
    metrics = summary["final_metrics"]
    assert 0 <= metrics["miou"] <= 1 and 0 <= metrics["pixel_acc"] <= 1 and metrics["miou"] == summary["miou"] == summary["test_acc"]
    assert summary["best_miou"] == summary["best_acc"] >= summary["miou"] and summary["val_loss"] == metrics["loss"]
    assert set(summary["details"]["per_class_iou"]) == set(CLASSES)
    assert summary["data"]["train_images"] == 6 and summary["data"]["val_images"] == 2
    rows = list(csv.DictReader((fpn_run / "metrics.csv").open()))
    assert {"miou", "pixel_acc"} <= set(rows[0])
    for name in ("iou.png", "curves.png", "best.safetensors", "last.safetensors", "config.yaml"):
        assert (fpn_run / name).stat().st_size > 0, name
    model, meta = load_segmenter(fpn_run / "last.safetensors"), read_checkpoint(fpn_run / "last.safetensors")[1]
    assert model.config.input_size == 64 and meta["class_names"] == CLASSES and meta["epoch"] == 1


def test_eval_reproduces_the_training_metrics(fpn_run, shapes_folder, capsys):
    capsys.readouterr()
    args = ["eval", "--checkpoint", str(fpn_run / "last.safetensors"), "--data", shapes_folder[1], "--val-fraction", "0.25"]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    trained = json.loads((fpn_run / "summary.json").read_text())["final_metrics"]
    for key in ("miou", "pixel_acc", "loss"):
        assert result["metrics"][key] == pytest.approx(trained[key], rel=1e-5), key
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.startswith("mIoU ") and "per-class IoU:" in text and "circle" in text
    assert main([*args, "--json", "--deploy"]) == 0  # the deployed segmenter: the same scores within float rounding
    fast = json.loads(capsys.readouterr().out)
    for key in ("miou", "pixel_acc", "loss"):
        assert fast["metrics"][key] == pytest.approx(result["metrics"][key], rel=1e-3, abs=1e-4), key


def test_predict_writes_overlays_class_maps_and_json(fpn_run, shapes_folder, tmp_path, capsys):
    images = [shapes_folder[0] / "images" / "s0.jpg", shapes_folder[0] / "images" / "s5.jpg"]
    out = tmp_path / "pred"
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(fpn_run / "best.safetensors"), *map(str, images), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "s0_overlay.png" in text and "s5_classes.png" in text
    rows = json.loads((out / "predictions.json").read_text())
    assert [r["image"] for r in rows] == list(map(str, images))
    for row in rows:
        assert Image.open(row["overlay"]).size == (64, 64)
        class_map = read_mask(row["class_map"])
        assert class_map.shape == (64, 64) and class_map.max() < len(CLASSES)
    # Deployed: the same class maps (a pixel or two may flip where two classes tie within float rounding).
    fast_out = tmp_path / "fast"
    assert main(["predict", "--checkpoint", str(fpn_run / "best.safetensors"), *map(str, images), "--deploy", "--json",
                 "--out", str(fast_out)]) == 0
    for want, got in zip(rows, json.loads(capsys.readouterr().out), strict=True):
        agree = (read_mask(got["class_map"]) == read_mask(want["class_map"])).mean()
        assert agree >= 0.999 and got["class_shares"].keys() == want["class_shares"].keys()


def test_eval_and_predict_take_test_time_augmentation(fpn_run, shapes_folder, tmp_path, capsys):
    checkpoint = str(fpn_run / "last.safetensors")
    args = ["eval", "--checkpoint", checkpoint, "--data", shapes_folder[1], "--val-fraction", "0.25", "--json"]
    capsys.readouterr()
    assert main([*args, "-o", "tta_flip=true", "-o", "tta_sizes=[48,64]"]) == 0
    tta = json.loads(capsys.readouterr().out)["metrics"]
    # The same numbers by hand: class probabilities averaged over two sizes and their mirrors.
    model = load_segmenter(checkpoint)
    task = SegmentationTask(task_config(task="segment", data=shapes_folder[1], val_fraction=0.25, img_size=64))
    metrics = SegmentationMetrics(CLASSES)
    with torch.no_grad():
        for images, masks in task.build_data(train=False, checkpoint={"class_names": CLASSES}).val:
            views = [(s, f) for s in (48, 64) for f in (False, True)]
            probs = sum(model(images[None].flip(-1) if f else images[None], input_size=s).softmax(1).flip(-1) if f
                        else model(images[None], input_size=s).softmax(1) for s, f in views) / len(views)
            metrics.update(probs, masks[None])
    assert tta["miou"] == pytest.approx(metrics.compute()["miou"], rel=1e-6)
    image = str(shapes_folder[0] / "images" / "s0.jpg")
    assert main(["predict", "--checkpoint", checkpoint, image, "-o", "tta_flip=true", "--out", str(tmp_path / "p"),
                 "--json"]) == 0
    assert read_mask(json.loads(capsys.readouterr().out)[0]["class_map"]).shape == (64, 64)
    assert main(["eval", "--checkpoint", checkpoint, "-o", "tta_flip=yes please"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["eval", "--checkpoint", checkpoint, "-o", "tta_sizes=[8]"]) == 2
    assert "-o tta_sizes takes a list of input sizes of 16 px or more" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", checkpoint, image, "-o", "tta_flip"]) == 2
    assert "-o takes KEY=VALUE, got 'tta_flip'" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", checkpoint, image, "-o", "tta_flip=true", "--deploy"]) == 2
    err = capsys.readouterr().err
    assert "leave out --deploy" in err and err.count("\n") == 1


@pytest.mark.slow  # a training run
def test_deeplabv3_trains_through_the_same_loop(shapes_folder, tmp_path):
    out = tmp_path / "deeplab"
    assert main(["train", "--task", "segment", "--arch", "deeplabv3", "-o", "deeplab_stride=32", "--data", shapes_folder[1], *SMALL, "--out", str(out)]) == 0
    model = load_segmenter(out / "last.safetensors")
    assert model.config.arch == "deeplabv3" and model.config.deeplab_stride == 32


@pytest.mark.slow  # a training run
def test_aux_loss_and_resolution_schedule_train_through_the_loop(shapes_folder, tmp_path, monkeypatch):
    sizes, losses = [], []
    original = SegmentationTask.training_losses

    def spy(self, model, batch, epoch):
        seen = {}
        module = model.module if hasattr(model, "module") else model
        real_forward = module.forward

        def forward(images, **kwargs):
            seen["size"] = kwargs.get("input_size")
            return real_forward(images, **kwargs)

        module.forward = forward
        try:
            out = original(self, model, batch, epoch)
        finally:
            del module.forward
        sizes.append(seen["size"])
        losses.append(set(out.losses))
        return out

    monkeypatch.setattr(SegmentationTask, "training_losses", spy)
    out = tmp_path / "v3plus"
    args = ["train", "--task", "segment", "--arch", "deeplabv3plus", "--data", shapes_folder[1], *SMALL, "--epochs", "3",
            "-o", "aux_weight=0.5", "-o", "train_scales=[0.5,0.75]", "--out", str(out)]
    assert main(args) == 0
    assert sizes == [32] * 3 + [48] * 6  # 6 images in batches of 2: epoch 1 at half of 64 px, then the last size repeats
    assert losses[0] == {"loss_ce", "loss_dice", "loss_aux"}
    model = load_segmenter(out / "last.safetensors")
    assert model.config.arch == "deeplabv3plus" and model.config.aux_classifier and model.config.input_size == 64
    # eval without --data takes the task's own data: the shapes scenes (five classes, as the checkpoint).
    assert main(["eval", "--checkpoint", str(out / "last.safetensors"), "--json"]) == 0


def test_user_errors_are_one_line(shapes_folder, fpn_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["train", "--task", "segment", "--arch", "centermask", "--out", str(tmp_path / "x")]) == 2
    assert "takes fpn_semantic, deeplabv3, deeplabv3plus" in capsys.readouterr().err
    assert main(["train", "--task", "segment", "-o", "bogus=1", "--out", str(tmp_path / "y")]) == 2
    assert "unknown option(s) for --task segment: bogus" in capsys.readouterr().err
    assert main(["train", "--task", "segment", "-o", "scale=0.5", "--out", str(tmp_path / "s")]) == 2
    assert "-o scale takes [LOW, HIGH]" in capsys.readouterr().err
    assert main(["train", "--task", "segment", "-o", "train_scales=[0,1]", "--out", str(tmp_path / "t")]) == 2
    assert "-o train_scales takes a list of fractions of --img-size in (0, 4]" in capsys.readouterr().err
    assert main(["train", "--task", "segment", "-o", "fpn_p2_conv=maybe", "--out", str(tmp_path / "p")]) == 2
    assert "-o fpn_p2_conv takes true or false, got 'maybe'" in capsys.readouterr().err
    assert main(["train", "--task", "segment", "-o", "aux_weight=-1", "--out", str(tmp_path / "a")]) == 2
    assert "must be 0 or more" in capsys.readouterr().err
    # Data with other classes than the checkpoint's is refused.
    root = tmp_path / "other"
    for i in range(3):
        (root / "i").mkdir(parents=True, exist_ok=True), (root / "m").mkdir(exist_ok=True)
        Image.new("RGB", (16, 16)).save(root / "i" / f"{i}.png")
        Image.new("L", (16, 16)).save(root / "m" / f"{i}.png")
    (root / "m" / "classes.txt").write_text("sky\nroad\n")
    assert main(["eval", "--checkpoint", str(fpn_run / "last.safetensors"), "--data", f"masks:{root}/i:{root}/m"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differ from the model's" in err
    # --strict fails on a bad mask before any training.
    Image.new("L", (17, 16)).save(root / "m" / "0.png")
    assert main(["train", "--task", "segment", "--data", f"masks:{root}/i:{root}/m", "--strict", *SMALL, "--out", str(tmp_path / "z")]) == 1
    err = capsys.readouterr().err
    assert "mask is 17x16 but its image 0.png is 16x16" in err and not (tmp_path / "z" / "last.safetensors").exists()
