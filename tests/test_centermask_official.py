"""The published CenterMask2 models: conversion of whole centermask2 checkpoints, and parity of our
``centermask2`` dialect with an independent functional forward of the official inference
(``reference/centermask2.py``) on generated official-layout weights. Images are about 100 x 140 px."""

import json

import pytest
import torch
from conftest import randomize_norm_stats, rel_err
from reference.centermask2 import centermask2_inference, make_state_dict

import vovnet
from vovnet.cli import main
from vovnet.engine.task import task_config
from vovnet.errors import CheckpointError, UsageError
from vovnet.models.detection.builders import DetectorConfig, build_detector
from vovnet.models.detection.fcos import centerness_targets, fcos_losses, fcos_points, fcos_targets
from vovnet.models.detection.maskiou import gt_share_inside, maskiou_loss, maskiou_targets
from vovnet.models.detection.transform import detectron2_size
from vovnet.tasks.detection.task import DetectionTask
from vovnet.weights.convert import convert_state_dict
from vovnet.weights.detector_convert import centermask2_to_ours, ours_to_centermask2
from vovnet.weights.official_detectors import COCO_CLASSES, centermask2_config, convert_centermask2

# Every centermask2 config without deformable convolutions: (backbone, lite).
CONFIGS = {
    "lite_V_19_slim_dw": ("vovnet19_slim_dw", True),
    "lite_V_19_slim": ("vovnet19_slim", True),
    "lite_V_19": ("vovnet19", True),
    "lite_V_39": ("vovnet39", True),
    "V_39": ("vovnet39", False),
    "V_57": ("vovnet57", False),
    "V_99": ("vovnet99", False),
}


def official_checkpoint(name, lite, num_classes=3, seed=0, shapes_only=False):
    """A generated centermask2 ``model`` dict: our randomly initialised VoVNet in the official layout
    (validated against reference/official.py by test_convert.py) plus the reference's heads."""
    torch.manual_seed(seed)
    if shapes_only:
        with torch.device("meta"):
            body = vovnet.create_model(name, features_only=True)
    else:
        body = randomize_norm_stats(vovnet.create_model(name, features_only=True), seed)
    channels = [body.feature_info[i]["num_chs"] for i in (2, 3, 4)]
    backbone = convert_state_dict(body.state_dict(), "vovnet", "official")
    return make_state_dict(backbone, channels, num_classes, lite, seed, shapes_only)


@pytest.fixture(scope="module")
def lite_checkpoint(tmp_path_factory):
    """A Lite V-19-slim-dw centermask2 file with solver state, and its converted detector checkpoint."""
    tmp = tmp_path_factory.mktemp("cm2")
    sd = official_checkpoint("vovnet19_slim_dw", True)
    torch.save({"model": sd, "iteration": 360000, "optimizer": {"state": {}, "param_groups": []}, "__author__": "test"}, tmp / "cm.pth")
    convert_centermask2(tmp / "cm.pth", tmp / "cm.safetensors")
    return sd, tmp / "cm.safetensors"


MEAN = torch.tensor([103.530, 116.280, 123.675])[:, None, None]


def _compare(model, sd, image):
    """Ours vs the reference on one RGB 0..1 image; returns our detections and the (BGR, normalised, maybe
    resized) image the model saw. The reference gets that image as BGR 0..255, the official input."""
    with torch.no_grad():
        ours = model([image])[0]
        images, _ = model.transform([image])
        h, w = images.image_sizes[0]
        seen = images.tensors[0, :, :h, :w]
        ref = centermask2_inference(sd, seen + MEAN, output_size=tuple(image.shape[-2:]))
        features = model.backbone(images.tensors)
        for a, b in zip(features.values(), ref["fpn"]):
            assert a.shape == b.shape and rel_err(a, b) <= 1e-5
        head = model.head(list(features.values()))
        sizes = [f.shape[-2] * f.shape[-1] for f in features.values()]
        for key, levels in zip(("cls_logits", "bbox_regression", "bbox_ctrness"), ref["head"]):
            for a, b in zip(head[key].split(sizes, dim=1), levels):
                assert rel_err(a[0], b[0].flatten(1).T) <= 1e-5
    inst = ref["instances"]
    assert torch.equal(ours["labels"], inst["classes"] + 1)
    assert torch.allclose(ours["boxes"], inst["boxes"], rtol=1e-5, atol=1e-5 * image.shape[-1])
    assert torch.allclose(ours["scores"], inst["scores"], rtol=1e-5, atol=1e-6)
    assert torch.allclose(ours["mask_scores"], inst["mask_scores"], rtol=1e-4, atol=1e-6)
    assert ours["masks"].shape == (len(inst["masks"]), 1, *image.shape[-2:])
    assert torch.equal(ours["masks"][:, 0].bool(), inst["masks"])
    return ours, seen


def test_key_rules_round_trip():
    sd = official_checkpoint("vovnet19_slim_dw", True)
    ours = centermask2_to_ours(sd)
    assert "head.regression_head.scales.4" in ours and "mask_head.convs.2.weight" in ours and "maskiou_head.convs.2.bias" in ours
    back = ours_to_centermask2(ours)
    assert back.keys() == sd.keys() and all(back[k] is sd[k] for k in sd)


def test_lite_parity_with_the_official_inference(lite_checkpoint):
    sd, path = lite_checkpoint
    model = vovnet.load_detector(path, image_size=None)
    assert not model.training and model.config.dialect == "centermask2"
    torch.manual_seed(1)
    image = torch.rand(3, 100, 140)
    ours, seen = _compare(model, sd, image)
    assert torch.allclose(seen, image.flip(0) * 255 - MEAN, atol=1e-4)  # BGR 0..255 minus detectron2's means
    assert 10 <= len(ours["scores"]) <= 50  # the weights are scaled to give several detections
    assert 0 < ours["masks"].mean() < 0.5 and (ours["mask_scores"] < ours["scores"]).all()


def test_lite_parity_when_the_model_resizes(lite_checkpoint):
    """A 64-px short side: the model resizes, the heads run on the small image, boxes and masks come back
    at the input's size (detectron2's detector_postprocess)."""
    sd, path = lite_checkpoint
    model = vovnet.load_detector(path, image_size=64)
    assert (model.transform.test_size, model.transform.long_side) == (64, round(64 * 1000 / 600))
    torch.manual_seed(2)
    image = torch.rand(3, 90, 150)
    ours, seen = _compare(model, sd, image)
    assert seen.shape[-2:] == (64, 107)  # detectron2's rule: 150 * 64 / 90 = 106.7, rounded
    resized = torch.nn.functional.interpolate(image[None], size=(64, 107), mode="bilinear", antialias=True)[0]
    assert torch.allclose(seen, resized.flip(0) * 255 - MEAN, atol=1e-3)
    assert len(ours["scores"]) > 0


@pytest.mark.slow
def test_full_v39_parity_with_the_official_inference(tmp_path):
    sd = official_checkpoint("vovnet39", False, num_classes=80)
    torch.save({"model": sd}, tmp_path / "v39.pth")
    info = convert_centermask2(tmp_path / "v39.pth", tmp_path / "v39.safetensors")
    assert info["model"] == "vovnet39" and not info["lite"] and info["image_size"] == [800, 1333]
    model = vovnet.load_detector(tmp_path / "v39.safetensors", image_size=None)
    assert model.config.class_names == COCO_CLASSES
    torch.manual_seed(3)
    _compare(model, sd, torch.rand(3, 96, 128))


@pytest.mark.parametrize("config", CONFIGS)
def test_every_centermask2_config_is_read_off_the_shapes(config):
    name, lite = CONFIGS[config]
    cfg = centermask2_config(centermask2_to_ours(official_checkpoint(name, lite, num_classes=80, shapes_only=True)))
    assert (cfg.model, cfg.lite, cfg.dialect, cfg.norm) == (name, lite, "centermask2", "frozen_batch")
    assert cfg.class_names == COCO_CLASSES and cfg.class_names[0] == "person" and cfg.class_names[-1] == "toothbrush"
    assert (cfg.min_size, cfg.max_size) == ((600, 1000) if lite else (800, 1333))
    assert cfg.train_sizes == ((580, 600) if lite else (640, 672, 704, 736, 768, 800))


@pytest.mark.parametrize(
    "config", ["lite_V_19_slim", "lite_V_39", *(pytest.param(c, marks=pytest.mark.slow) for c in ("lite_V_19", "V_57", "V_99"))]
)
def test_other_configs_build_and_load(config, tmp_path):
    name, lite = CONFIGS[config]
    sd = official_checkpoint(name, lite, num_classes=2)
    torch.save({"model": sd}, tmp_path / "cm.pth")
    info = convert_centermask2(tmp_path / "cm.pth", tmp_path / "cm.safetensors")
    assert info["model"] == name and info["num_classes"] == 2
    model = vovnet.load_detector(tmp_path / "cm.safetensors")
    assert model.config.class_names == ("class1", "class2")


def test_a_checkpoint_that_does_not_fit_names_the_keys(tmp_path):
    sd = official_checkpoint("vovnet19_slim_dw", True)
    dcn = dict(sd, **{"backbone.bottom_up.stage4.OSA4_1.layers.0.OSA4_1_0/conv_offset.weight": torch.zeros(18, 96, 3, 3)})
    with pytest.raises(CheckpointError, match="OSA4_1_0/conv_offset"):
        centermask2_to_ours(dcn)
    extra = dict(sd, **{"roi_heads.box_head.fc1.weight": torch.zeros(4, 4)})
    with pytest.raises(CheckpointError, match=r"1 key\(s\) fit no centermask2 rule, first: roi_heads\.box_head\.fc1\.weight"):
        centermask2_to_ours(extra)
    deeper = dict(sd, **{"roi_heads.mask_head.mask_fcn3.weight": torch.zeros(128, 128, 3, 3), "roi_heads.mask_head.mask_fcn3.bias": torch.zeros(128)})
    with pytest.raises(CheckpointError, match="neither CenterMask's nor CenterMask-Lite's"):
        centermask2_config(centermask2_to_ours(deeper))
    misshaped = dict(sd, **{"roi_heads.maskiou_head.maskiou_fc2.weight": torch.zeros(1024, 512)})
    torch.save({"model": misshaped}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"mis-shaped \(first: maskiou_head\.fc2\.weight"):
        convert_centermask2(tmp_path / "bad.pth", tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


def test_detectron2_pixel_statistics_are_checked():
    sd = official_checkpoint("vovnet19_slim_dw", True)
    centermask2_to_ours(dict(sd, pixel_mean=torch.tensor([103.530, 116.280, 123.675]).view(3, 1, 1), pixel_std=torch.ones(3, 1, 1)))
    with pytest.raises(CheckpointError, match="pixel_mean"):
        centermask2_to_ours(dict(sd, pixel_mean=torch.tensor([102.98, 115.95, 122.77]).view(3, 1, 1)))


def test_convert_cli_detector_and_backbone_only(lite_checkpoint, tmp_path, capsys):
    src = lite_checkpoint[1].parent / "cm.pth"
    assert main(["convert", "--from", "official", str(src), str(tmp_path / "d.safetensors"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["source"] == "centermask2" and info["model"] == "vovnet19_slim_dw" and info["lite"]
    model = vovnet.load_detector(tmp_path / "d.safetensors")
    assert (model.transform.test_size, model.transform.long_side) == (600, 1000)
    assert main(["convert", "--from", "official", "--backbone-only", str(src), str(tmp_path / "b.safetensors")]) == 0
    assert "vovnet19_slim_dw" in capsys.readouterr().out
    assert vovnet.load_checkpoint(tmp_path / "b.safetensors", features_only=True).name == "vovnet19_slim_dw"


@pytest.mark.slow
def test_load_detector_sizes_and_lazy_import(lite_checkpoint):
    import subprocess
    import sys

    code = "import sys, vovnet; assert 'vovnet.tasks.detection' not in sys.modules; vovnet.load_detector"
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=120).returncode == 0
    path = lite_checkpoint[1]
    assert vovnet.load_detector(path).transform.test_size == 600
    fixed = vovnet.load_detector(path, image_size=(300, 400))
    assert (fixed.transform.test_size, fixed.transform.long_side) == (300, 400)


def test_detectron2_resize_rule():
    assert detectron2_size(480, 640, 800, 1333) == (800, 1067)
    assert detectron2_size(480, 1280, 600, 1000) == (375, 1000)
    assert detectron2_size(101, 99, 600, 1000) == (612, 600)


# ---- training pieces -------------------------------------------------------------------------------------------


def test_fcos_points_are_shifted_by_half_a_stride():
    points = fcos_points([(2, 3), (1, 1)], [8, 16])
    assert points[0].tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert points[1].tolist() == [[8, 8]]


def test_fcos_targets_by_hand():
    points = fcos_points([(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)], [8, 16, 32, 64, 128])
    strides = [8, 16, 32, 64, 128]
    boxes = torch.tensor([[0.0, 0, 40, 40], [0, 0, 16, 16]])
    labels, dist = fcos_targets(points, strides, boxes, torch.tensor([1, 2]))
    p3 = labels[:64].view(8, 8)
    # the small box (largest side distance <= 64 at P3) within 1.5 strides (12 px) of its centre (8, 8)
    assert p3[0, 0] == 2 and p3[1, 1] == 2 and p3[0, 1] == 2
    # the 40 px box's centre (20, 20) +- 12 px, minus points taken by the smaller box
    assert p3[2, 2] == 1 and p3[3, 3] == 1 and p3[4, 4] == 0 and p3[0, 3] == 0
    assert torch.allclose(dist[0], torch.tensor([4.0, 4, 12, 12]) / 8)
    assert (labels[64:] == 0).all()  # no object of P4's size range
    assert torch.allclose(centerness_targets(torch.tensor([[1.0, 1, 1, 1], [1, 2, 3, 2]])), torch.tensor([1.0, (1 / 3) ** 0.5]))


def test_fcos_losses_without_objects_are_finite():
    points = fcos_points([(2, 2)], [8])
    outputs = {"cls_logits": torch.zeros(1, 4, 3, requires_grad=True), "bbox_regression": torch.ones(1, 4, 4), "bbox_ctrness": torch.zeros(1, 4, 1)}
    losses = fcos_losses(outputs, points, [8], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    assert all(torch.isfinite(v) for v in losses.values()) and losses["bbox_regression"] == 0


def test_maskiou_targets_and_loss_by_hand():
    gt = torch.zeros(2, 4, 4)
    gt[:, :2, :2] = 1  # 4 pixels inside the RoI
    logits = torch.full((2, 4, 4), -1.0)
    logits[0, :2, :] = 1  # 8 predicted pixels, 4 of them right
    # the ground truth's full area is 4 / 0.5 = 8: union 8 + 8 - 4 = 12
    targets = maskiou_targets(logits, gt, torch.tensor([0.5, 1.0]))
    assert torch.allclose(targets, torch.tensor([4 / 12, 0.0]))
    pred = torch.tensor([[0.0, 0.5], [0.3, 0.2]], requires_grad=True)
    loss = maskiou_loss(pred, torch.tensor([1, 0]), targets)
    assert torch.isclose(loss, torch.tensor(0.5 * (0.5 - 4 / 12) ** 2))  # only the positive target counts
    loss.backward()


def test_gt_share_inside_counts_pixel_centres():
    masks = torch.zeros(1, 10, 10, dtype=torch.uint8)
    masks[0, 2:6, 2:6] = 1  # 16 pixels
    rois = torch.tensor([[0.0, 0, 10, 10], [4.0, 0, 10, 10], [4.6, 2, 5.6, 3]])  # centres 5.5 and 2.5 only
    assert gt_share_inside(masks, rois, torch.zeros(3, dtype=torch.int64)).tolist() == [1.0, 0.5, 1 / 16]


def test_centermask2_dialect_trains(seeded):
    cfg = DetectorConfig("centermask", "vovnet19_slim_dw", ("a", "b"), True, min_size=64, max_size=64, dialect="centermask2", train_sizes=(48, 64))
    model = build_detector(cfg).train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 8:40, 8:40] = 1
    masks[1, 30:60, 20:50] = 1
    targets = [{"boxes": torch.tensor([[8.0, 8, 40, 40], [20, 30, 50, 60]]), "labels": torch.tensor([1, 2]), "masks": masks}] * 2
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness", "loss_mask", "loss_maskiou"}
    sum(losses.values()).backward()
    assert model.maskiou_head.predictor.weight.grad is not None and model.head.regression_head.scales[0].grad is not None


def test_mask_ap_ranks_masks_by_mask_scores():
    from vovnet.tasks.detection.metrics import DetectionMetrics

    gt_mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    gt_mask[0, 4:20, 4:20] = True
    wrong = torch.zeros(1, 1, 32, 32)
    wrong[0, 0, 24:30, 24:30] = 1
    box = torch.tensor([[4.0, 4, 20, 20]])
    prediction = {
        "boxes": box.repeat(2, 1), "labels": torch.tensor([1, 1]), "scores": torch.tensor([0.9, 0.8]),
        "masks": torch.cat([gt_mask[:, None].float(), wrong]), "mask_scores": torch.tensor([0.1, 0.5]),
    }
    metrics = DetectionMetrics(["thing"], masks=True)
    metrics.update([prediction], [{"boxes": box, "labels": torch.tensor([1]), "masks": gt_mask}])
    values, _ = metrics.compute()
    # boxes rank the right detection first; masks, by mask_scores, the wrong one
    assert values["bbox_map"] == pytest.approx(1.0) and values["segm_map"] < 0.6


def test_finetuning_from_a_converted_model_keeps_the_fitting_layers(lite_checkpoint, capsys):
    sd, path = lite_checkpoint  # 3 classes
    config = task_config(task="detect", pretrained=str(path), img_size=64, task_options={"train_sizes": [48, 64]})
    model = DetectionTask(config).build_model(["circle", "square"])
    cfg = model.config
    assert (cfg.dialect, cfg.model, cfg.norm, cfg.lite) == ("centermask2", "vovnet19_slim_dw", "frozen_batch", True)
    assert (cfg.class_names, cfg.min_size, cfg.train_sizes) == (("circle", "square"), 64, (48, 64))
    said = capsys.readouterr().out
    fresh = ("head.classification_head.cls_logits", "mask_head.predictor", "maskiou_head.predictor")
    assert f"re-initialised for 2 classes: {', '.join(sorted(fresh))}" in said
    ours, official = model.state_dict(), centermask2_to_ours(sd)
    assert ours["mask_head.predictor.weight"].shape[0] == 2
    kept = [k for k in official if not k.startswith(fresh)]
    assert kept and all(torch.equal(ours[k], official[k]) for k in kept)
    same = DetectionTask(task_config(task="detect", pretrained=str(path), img_size=64)).build_model(["a", "b", "c"])
    assert "every layer loaded" in capsys.readouterr().out
    assert torch.equal(same.state_dict()["mask_head.predictor.weight"], official["mask_head.predictor.weight"])
    agreeing = {"dialect": "centermask2", "lite": True}
    DetectionTask(task_config(task="detect", pretrained=str(path), img_size=64, task_options=agreeing)).build_model(["a"])
    for option, message in (({"dialect": "torchvision"}, "has dialect=centermask2; drop -o dialect=torchvision"),
                            ({"lite": False}, "has lite=True; drop -o lite=False")):
        with pytest.raises(UsageError, match=message):
            DetectionTask(task_config(task="detect", pretrained=str(path), img_size=64, task_options=option)).build_model(["a"])


@pytest.mark.slow
def test_eval_and_predict_a_converted_model_on_coco_files(tmp_path, capsys):
    """vovnet eval on a converted checkpoint: the official inference on COCO-format data, box and mask AP
    (masks ranked by mask_scores); vovnet predict runs on it (random weights rarely reach its 0.5 display cut)."""
    from vovnet.data.shapes import CLASSES

    torch.save({"model": official_checkpoint("vovnet19_slim_dw", True, num_classes=len(CLASSES))}, tmp_path / "cm.pth")
    convert_centermask2(tmp_path / "cm.pth", tmp_path / "cm.safetensors", class_names=list(CLASSES))
    assert main(["make-shapes", str(tmp_path / "shapes"), "--n", "1", "--val-n", "2", "--image-size", "64"]) == 0
    data = f"coco:{tmp_path}/shapes/annotations/val.json:{tmp_path}/shapes/val"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "cm.safetensors"), "--data", data, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 2 and 0 <= result["metrics"]["segm_map"] <= 1 and 0 <= result["metrics"]["bbox_map"] <= 1
    image = next((tmp_path / "shapes" / "val").iterdir())
    assert main(["predict", "--checkpoint", str(tmp_path / "cm.safetensors"), str(image), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["image"] == str(image) and all(d["class"] in CLASSES for d in rows[0]["detections"])
