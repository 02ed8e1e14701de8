"""The vovnet-detectron2 COCO zoo: conversion of whole Faster / Mask R-CNN and Panoptic FPN checkpoints, and parity of
our ``detectron2`` dialect with an independent functional forward of detectron2's inference
(``reference/detectron2_rcnn.py``) on generated official-layout weights, stage by stage: FPN maps, RPN proposals,
box head, detections, masks, semantic logits, the panoptic map. V-19-slim-DW bodies, images of about 100 x 140 px."""

import json

import pytest
import torch
from conftest import randomize_norm_stats, rel_err
from reference.detectron2_rcnn import generate_cell_anchors, make_state_dict, rcnn_inference

import vovnet
from vovnet.cli import main
from vovnet.deployment.detection import compare_detections, export_detector, panoptic_agreement
from vovnet.errors import CheckpointError
from vovnet.models.detection import rcnn_detectron2
from vovnet.weights.convert import convert_state_dict
from vovnet.weights.detector_checkpoint import detector_metadata
from vovnet.weights.detector_convert import detectron2_to_ours, ours_to_detectron2
from vovnet.weights.official_detectors import COCO_CLASSES, COCO_STUFF_CLASSES, convert_detectron2, detectron2_config
from vovnet.weights.pretrained import PRETRAINED

MEAN = torch.tensor([103.530, 116.280, 123.675])[:, None, None]
# The 15 models of vovnet-detectron2's README: tag -> (arch, backbone, FPNLite).
ZOO = {
    "faster_rcnn_lite_vovnet19.coco": ("faster_rcnn", "vovnet19", True),
    "faster_rcnn_lite_vovnet19_dw.coco": ("faster_rcnn", "vovnet19_dw", True),
    "faster_rcnn_lite_vovnet19_slim.coco": ("faster_rcnn", "vovnet19_slim", True),
    "faster_rcnn_lite_vovnet19_slim_dw.coco": ("faster_rcnn", "vovnet19_slim_dw", True),
    "faster_rcnn_vovnet19.coco": ("faster_rcnn", "vovnet19", False),
    "faster_rcnn_vovnet39.coco": ("faster_rcnn", "vovnet39", False),
    "faster_rcnn_vovnet57.coco": ("faster_rcnn", "vovnet57", False),
    "faster_rcnn_vovnet99.coco": ("faster_rcnn", "vovnet99", False),
    "mask_rcnn_lite_vovnet19.coco": ("mask_rcnn", "vovnet19", True),
    "mask_rcnn_vovnet19.coco": ("mask_rcnn", "vovnet19", False),
    "mask_rcnn_vovnet39.coco": ("mask_rcnn", "vovnet39", False),
    "mask_rcnn_vovnet57.coco": ("mask_rcnn", "vovnet57", False),
    "mask_rcnn_vovnet99.coco": ("mask_rcnn", "vovnet99", False),
    "panoptic_fpn_vovnet39.coco": ("panoptic_fpn", "vovnet39", False),
    "panoptic_fpn_vovnet57.coco": ("panoptic_fpn", "vovnet57", False),
}


def official_checkpoint(name, arch, lite, num_classes=3, stuff_classes=3, seed=0, shapes_only=False):
    """A generated vovnet-detectron2 ``model`` dict: our randomly initialised VoVNet in the official layout
    (validated against reference/official.py by test_convert.py) plus the reference's FPN and heads."""
    torch.manual_seed(seed)
    if shapes_only:
        with torch.device("meta"):
            body = vovnet.create_model(name, features_only=True)
    else:
        body = randomize_norm_stats(vovnet.create_model(name, features_only=True), seed)
    channels = [body.feature_info[i]["num_chs"] for i in (1, 2, 3, 4)]
    backbone = convert_state_dict(body.state_dict(), "vovnet", "official")
    return make_state_dict(backbone, channels, num_classes, arch, 128 if lite else 256, stuff_classes, seed, shapes_only)


@pytest.fixture(scope="module")
def panoptic(tmp_path_factory):
    """A V-19-slim-DW Panoptic FPN (FPNLite width) with solver state and 2020's saved cell anchors, converted."""
    tmp = tmp_path_factory.mktemp("d2")
    sd = official_checkpoint("vovnet19_slim_dw", "panoptic_fpn", True)
    sd["roi_heads.box_predictor.cls_score.bias"][-1] += 1.5  # fewer confident things and "things" pixels:
    sd["sem_seg_head.predictor.bias"][0] -= 2.0  # a stuff class keeps more than 4096 free pixels
    anchors = {f"proposal_generator.anchor_generator.cell_anchors.{i}": generate_cell_anchors(s) for i, s in enumerate((32, 64, 128, 256, 512))}
    torch.save({"model": {**sd, **anchors}, "iteration": 270000, "optimizer": {"state": {}, "param_groups": []}}, tmp / "pan.pth")
    info = convert_detectron2(tmp / "pan.pth", tmp / "pan.safetensors")
    assert info["arch"] == "panoptic_fpn" and info["model"] == "vovnet19_slim_dw" and info["lite"]
    return sd, tmp / "pan.safetensors"


def _same_rows(a, b, atol):
    """``a`` and ``b`` hold as many rows, each within ``atol`` of one of the other's: the same rows in any order
    (ties in a sort may swap neighbours)."""
    assert a.shape == b.shape
    distance = torch.cdist(a.double(), b.double(), p=float("inf"))
    assert distance.min(dim=1).values.max() <= atol and distance.min(dim=0).values.max() <= atol


def _compare(model, sd, image):
    """Ours vs the reference on one RGB 0..1 image, stage by stage; returns our result and the reference's."""
    with torch.no_grad():
        ours = model([image])[0]
        batch, _ = model.transform([image])
        h, w = batch.image_sizes[0]
        seen = batch.tensors[0, :, :h, :w]
        ref = rcnn_inference(sd, seen + MEAN, output_size=tuple(image.shape[-2:]))
        features = model.backbone(batch.tensors)
        for a, b in zip(features.values(), ref["fpn"], strict=True):
            assert a.shape == b.shape and rel_err(a, b) <= 1e-5
        proposals, _ = model.rpn(batch, features)
        ref_boxes = ref["proposals"][0]
        _same_rows(proposals[0], ref_boxes, 1e-3)
        heads = model.roi_heads  # the box head on the reference's proposals
        class_logits, deltas = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, [ref_boxes], batch.image_sizes)))
        assert rel_err(class_logits, ref["box_head"][0]) <= 1e-5 and rel_err(deltas, ref["box_head"][1]) <= 1e-5
    inst = ref["instances"]
    assert torch.equal(ours["labels"], inst["classes"] + 1)
    assert torch.allclose(ours["boxes"], inst["boxes"], rtol=1e-5, atol=1e-5 * image.shape[-1])
    assert torch.allclose(ours["scores"], inst["scores"], rtol=1e-5, atol=1e-6)
    if "masks" in inst:
        assert ours["masks"].shape == (len(inst["masks"]), 1, *image.shape[-2:])
        assert torch.equal(ours["masks"][:, 0].bool(), inst["masks"])
    return ours, ref


def test_key_rules_round_trip_and_saved_anchors():
    sd = official_checkpoint("vovnet19_slim_dw", "panoptic_fpn", True, shapes_only=True)
    ours = detectron2_to_ours(sd)
    assert {"rpn.head.conv.0.0.weight", "roi_heads.box_head.fc7.bias", "roi_heads.mask_head.3.0.weight",
            "roi_heads.mask_predictor.conv5_mask.weight", "sem_seg_head.scale_heads.p5.4.norm.bias"} <= ours.keys()
    back = ours_to_detectron2(ours)
    assert back.keys() == sd.keys() and all(back[k] is sd[k] for k in sd)
    detectron2_to_ours({**sd, "proposal_generator.anchor_generator.cell_anchors.0": generate_cell_anchors(32)})
    rounded = {**sd, "proposal_generator.anchor_generator.cell_anchors.0": generate_cell_anchors(32).round()}
    with pytest.raises(CheckpointError, match="cell_anchors.0 holds anchors"):
        detectron2_to_ours(rounded)


def test_panoptic_parity_with_the_official_inference(panoptic):
    sd, path = panoptic
    model = vovnet.load_detector(path, image_size=None)
    assert not model.training and model.config.dialect == "detectron2" and model.stuff_classes == ("things", "stuff1", "stuff2")
    torch.manual_seed(1)
    image = torch.rand(3, 100, 140)
    ours, ref = _compare(model, sd, image)
    assert 20 <= len(ours["scores"]) <= 100 and 0.005 < ours["masks"].mean() < 0.5
    assert rel_err(ours["sem_seg"], ref["sem_seg"]) <= 1e-5
    assert torch.equal(ours["panoptic_seg"], ref["panoptic_seg"])
    assert len(ours["segments_info"]) == len(ref["segments_info"])
    for a, b in zip(ours["segments_info"], ref["segments_info"]):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5) for k in a)
    kinds = {s["isthing"] for s in ours["segments_info"]}
    assert kinds == {True, False}  # things and stuff both reach the panoptic map


def test_parity_when_the_model_resizes(panoptic):
    """A 64-px short side: the model resizes (detectron2's rule), the heads run on the small image, boxes, masks
    and the semantic map come back at the input's size."""
    sd, path = panoptic
    model = vovnet.load_detector(path, image_size=64)
    torch.manual_seed(2)
    image = torch.rand(3, 90, 150)
    ours, ref = _compare(model, sd, image)
    assert ours["sem_seg"].shape == (3, 90, 150) and rel_err(ours["sem_seg"], ref["sem_seg"]) <= 1e-5
    assert torch.equal(ours["panoptic_seg"], ref["panoptic_seg"])


def test_faster_rcnn_parity(tmp_path):
    sd = official_checkpoint("vovnet19_slim_dw", "faster_rcnn", False, num_classes=80)
    torch.save({"model": sd}, tmp_path / "f.pth")
    info = convert_detectron2(tmp_path / "f.pth", tmp_path / "f.safetensors")
    assert (info["arch"], info["lite"], info["num_classes"], info["image_size"]) == ("faster_rcnn", False, 80, [800, 1333])
    model = vovnet.load_detector(tmp_path / "f.safetensors", image_size=None)
    assert model.class_names == COCO_CLASSES and not hasattr(model, "sem_seg_head")
    torch.manual_seed(3)
    ours, _ = _compare(model, sd, torch.rand(3, 96, 128))
    assert set(ours) == {"boxes", "labels", "scores"} and len(ours["scores"]) > 10


def test_the_parity_checks_catch_each_torchvision_habit(panoptic):
    """The comparisons above fail with the background column first (final detections), rounded anchors (RPN
    proposals) or RoIAlign not aligned (box head)."""
    sd, path = panoptic
    image = torch.rand(3, 64, 96)
    model = vovnet.load_detector(path, image_size=None)
    with torch.no_grad():
        want = model([image])[0]
        batch, _ = model.transform([image])
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features)
        ref = rcnn_inference(sd, batch.tensors[0] + MEAN)
        _same_rows(proposals[0], ref["proposals"][0], 1e-3)
        anchors = model.rpn.anchor_generator
        anchors.cell_anchors = [a.round() for a in anchors.cell_anchors]
        anchors.set_cell_anchors = lambda dtype, device: None  # keep the rounded ones
        rounded, _ = model.rpn(batch, features)
        with pytest.raises(AssertionError):
            _same_rows(rounded[0], ref["proposals"][0], 1e-3)
        heads = model.roi_heads
        heads.box_roi_pool.aligned = False
        logits, _ = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, [ref["proposals"][0]], batch.image_sizes)))
        assert rel_err(logits, ref["box_head"][0]) > 1e-3
        ref_logits, ref_deltas = ref["box_head"]
        boxes, scores, labels = heads.postprocess_detections(ref_logits, ref_deltas, [ref["proposals"][0]], batch.image_sizes)
        inst_boxes, inst_scores, inst_classes = ref["instances"]["boxes"], ref["instances"]["scores"], ref["instances"]["classes"]
        assert torch.equal(labels[0], inst_classes + 1) and torch.allclose(scores[0], inst_scores, atol=1e-6)
        # the same columns read with the background first (torchvision's layout): other detections
        _, scores, labels = heads.postprocess_detections(ref_logits.roll(1, dims=1), ref_deltas, [ref["proposals"][0]], batch.image_sizes)
        assert not (labels[0].shape == inst_classes.shape and torch.equal(labels[0], inst_classes + 1) and torch.allclose(scores[0], inst_scores, atol=1e-6))
    assert torch.equal(want["labels"], inst_classes + 1) and len(inst_boxes) > 0


@pytest.mark.parametrize("tag", ZOO)
def test_every_zoo_config_is_read_off_the_shapes(tag):
    arch, name, lite = ZOO[tag]
    record = PRETRAINED[tag]
    assert (record.model, record.license, record.num_classes, record.sha256) == (name, "CC-BY-NC-4.0", 80, None)
    assert record.metric.box_ap > 30 and (record.metric.mask_ap is None) == (arch == "faster_rcnn")
    assert (record.metric.pq is not None) == (arch == "panoptic_fpn") and "no checksum" in record.metric.note
    sd = official_checkpoint(name, arch, lite, num_classes=80, stuff_classes=54, shapes_only=True)
    cfg = detectron2_config(detectron2_to_ours(sd))
    assert (cfg.arch, cfg.model, cfg.lite, cfg.dialect, cfg.norm) == (arch, name, lite, "detectron2", "frozen_batch")
    assert cfg.class_names == COCO_CLASSES and (cfg.min_size, cfg.max_size) == (800, 1333)
    assert cfg.train_sizes == (640, 672, 704, 736, 768, 800)
    assert cfg.stuff_classes == (COCO_STUFF_CLASSES if arch == "panoptic_fpn" else None)


def test_zoo_urls_are_the_readme_links():
    assert PRETRAINED["faster_rcnn_vovnet39.coco"].urls == ["https://dl.dropbox.com/s/dkto39ececze6l4/faster_V_39_eSE_ms_3x.pth"]
    assert PRETRAINED["panoptic_fpn_vovnet57.coco"].urls == ["https://www.dropbox.com/s/zhoqx5rvc0jj0oa/panoptic_V_57_eSE_3x.pth?dl=1"]
    assert PRETRAINED["mask_rcnn_lite_vovnet19.coco"].file == "mask_V_19_eSE_FPNLite_ms_3x.pth"
    assert len(COCO_STUFF_CLASSES) == 54 and COCO_STUFF_CLASSES[:3] == ("things", "banner", "blanket") and COCO_STUFF_CLASSES[-1] == "rug"


def test_a_checkpoint_that_does_not_fit_names_the_keys(tmp_path):
    sd = official_checkpoint("vovnet19_slim_dw", "mask_rcnn", True)
    with pytest.raises(CheckpointError, match=r"1 key\(s\) fit no detectron2 R-CNN rule, first: roi_heads\.box_head\.conv1\.weight"):
        detectron2_to_ours(dict(sd, **{"roi_heads.box_head.conv1.weight": torch.zeros(4, 4, 3, 3)}))
    agnostic = dict(sd, **{"roi_heads.box_predictor.bbox_pred.weight": torch.zeros(4, 1024), "roi_heads.box_predictor.bbox_pred.bias": torch.zeros(4)})
    torch.save({"model": agnostic}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"mis-shaped \(first: roi_heads\.box_predictor\.bbox_pred\.weight"):
        convert_detectron2(tmp_path / "bad.pth", tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()
    narrow = {k: v for k, v in official_checkpoint("vovnet19_slim_dw", "faster_rcnn", True, shapes_only=True).items() if "fpn_lateral2" not in k and "fpn_output2" not in k}
    with pytest.raises(CheckpointError, match="stages 2-5"):
        detectron2_config(detectron2_to_ours(narrow))
    with pytest.raises(CheckpointError, match="pixel_mean"):
        detectron2_to_ours(dict(sd, pixel_mean=torch.tensor([102.98, 115.95, 122.77]).view(3, 1, 1)))


def test_convert_cli_detector_and_backbone_only(panoptic, tmp_path, capsys):
    src = panoptic[1].parent / "pan.pth"
    assert main(["convert", "--from", "official", str(src), str(tmp_path / "d.safetensors"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["source"] == "detectron2" and info["arch"] == "panoptic_fpn" and info["model"] == "vovnet19_slim_dw"
    assert main(["convert", "--from", "official", "--backbone-only", str(src), str(tmp_path / "b.safetensors")]) == 0
    assert vovnet.load_checkpoint(tmp_path / "b.safetensors", features_only=True).name == "vovnet19_slim_dw"


def test_a_zoo_tag_is_pulled_converted_and_loaded(tmp_path, monkeypatch):
    """``vovnet.load_detector(tag)``: the README's file from a loopback server (the tag's URL pointed at it),
    converted once into the cache as a detectron2-dialect detector."""
    from test_pretrained import Server, _point

    from vovnet.weights.pretrained import WeightFile

    monkeypatch.setenv("VOVNET_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("VOVNET_MIRROR", raising=False)
    monkeypatch.delenv("VOVNET_OFFLINE", raising=False)
    tag = "faster_rcnn_lite_vovnet19_slim_dw.coco"
    sd = official_checkpoint("vovnet19_slim_dw", "faster_rcnn", True, num_classes=80, shapes_only=False)
    torch.save({"model": sd}, tmp_path / "f.pth")
    server = Server()
    try:
        server.routes["/f.pth"] = (tmp_path / "f.pth").read_bytes()
        _point(monkeypatch, tag, WeightFile(PRETRAINED[tag].file, (server.url + "/f.pth",)))
        model = vovnet.load_detector(tag, image_size=None)
        again = vovnet.load_detector(tag)
    finally:
        server.close()
    assert server.requests == ["/f.pth"]  # pulled once, then the cache
    assert (model.config.arch, model.config.dialect, model.config.lite, model.class_names) == ("faster_rcnn", "detectron2", True, COCO_CLASSES)
    assert again.transform.test_size == 800
    torch.manual_seed(4)
    _compare(model, sd, torch.rand(3, 64, 80))


def test_deploy_gives_the_eval_output(panoptic):
    """vovnet.deploy of a converted Panoptic FPN (batch norm folded, fused convolutions, Winograd, channels_last):
    the eval model's detections, masks, semantic scores and panoptic map."""
    model = vovnet.load_detector(panoptic[1], image_size=None)
    deployed = vovnet.deploy(model)
    torch.manual_seed(5)
    image = torch.rand(3, 100, 140)
    with torch.no_grad():
        want = model([image])[0]
    got = deployed([image])[0]
    agreement = compare_detections(want, got)
    assert agreement.ok() and agreement.count >= 20, str(agreement)
    panoptic_check = panoptic_agreement(want, got)
    assert panoptic_check["sem_seg_error"] <= 1e-4 and panoptic_check["panoptic_share"] >= 0.99
    assert [s["isthing"] for s in got["segments_info"]] == [s["isthing"] for s in want["segments_info"]]


@pytest.mark.slow  # ONNX exports of a whole Panoptic FPN (~60 s)
def test_a_converted_panoptic_fpn_exports_whole(panoptic, tmp_path, capsys):
    """vovnet export of a converted Panoptic FPN (saved at a test size of 128 / 213 and 20 detections, so that the
    trace's combine loop stays short): one graph that onnxruntime runs at two image sizes with the eval model's
    detections, masks, semantic scores and panoptic map."""
    model = vovnet.load_detector(panoptic[1], image_size=128, detections_per_img=20)
    meta = vovnet.read_checkpoint(panoptic[1])[1]
    vovnet.save_detector(model, tmp_path / "small.safetensors", **{k: v for k, v in meta.items() if k not in detector_metadata(model)})
    assert main(["export", str(tmp_path / "small.safetensors"), str(tmp_path / "p.onnx"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outputs"] == ["boxes", "labels", "scores", "masks", "sem_seg", "panoptic_seg", "segments"]
    for check in report["checks"]:
        assert check["count"] > 5 and check["unmatched"] == 0 and check["mask_iou"] >= 0.99 and check["panoptic_share"] >= 0.99


@pytest.mark.slow  # an ONNX export of a whole Faster R-CNN (~10 s)
def test_a_converted_faster_rcnn_exports_whole(tmp_path):
    torch.save({"model": official_checkpoint("vovnet19_slim_dw", "faster_rcnn", True)}, tmp_path / "f.pth")
    convert_detectron2(tmp_path / "f.pth", tmp_path / "f.safetensors")
    report = export_detector(vovnet.load_detector(tmp_path / "f.safetensors", image_size=128), tmp_path / "f.onnx")
    assert report["outputs"] == ["boxes", "labels", "scores"] and len(report["checks"]) == 2
    assert all(c["count"] > 5 and c["unmatched"] == 0 and c["box_error"] <= 1e-4 for c in report["checks"])


# ---- training ----------------------------------------------------------------------------------------------------


def test_box_losses_put_the_background_last():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])  # K = 2 classes, then the background
    deltas = torch.tensor([[9.0, 9, 9, 9, 0.5, 0, 0, 0], [7.0, 7, 7, 7, 7, 7, 7, 7]])
    losses = rcnn_detectron2.box_losses(logits, deltas, torch.tensor([2, 0]), torch.zeros(2, 4))  # torchvision's labels
    want = (torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2])))  # class 2 -> column 1, background -> 2
    assert torch.isclose(losses["loss_classifier"], want)
    assert torch.isclose(losses["loss_box_reg"], torch.tensor(0.5 / 2))  # L1 of the foreground's own deltas, over all RoIs


def test_the_detectron2_dialect_trains_and_fine_tunes(panoptic, tmp_path, capsys, seeded):
    """Fine-tuning from a converted Mask R-CNN: fitting layers kept, class layers afresh, detectron2's losses; a
    Panoptic FPN trains its instance part alone (the detection data has no semantic labels)."""
    from vovnet.engine.task import task_config
    from vovnet.tasks.detection.task import DetectionTask

    sd = official_checkpoint("vovnet19_slim_dw", "mask_rcnn", True)
    torch.save({"model": sd}, tmp_path / "m.pth")
    convert_detectron2(tmp_path / "m.pth", tmp_path / "m.safetensors")
    config = task_config(task="detect", arch="mask_rcnn", pretrained=str(tmp_path / "m.safetensors"), img_size=64,
                         task_options={"train_sizes": [48, 64]})
    model = DetectionTask(config).build_model(["circle", "square"])
    fresh = ("roi_heads.box_predictor.bbox_pred", "roi_heads.box_predictor.cls_score", "roi_heads.mask_predictor.mask_fcn_logits")
    assert f"re-initialised for 2 classes: {', '.join(fresh)}" in capsys.readouterr().out
    assert (model.config.dialect, model.config.train_sizes, model.roi_heads.box_predictor.bbox_pred.out_features) == ("detectron2", (48, 64), 8)
    official = detectron2_to_ours(sd)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in official.items() if not k.startswith(fresh))
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 8:40, 8:40] = 1
    masks[1, 30:60, 20:50] = 1
    targets = [{"boxes": torch.tensor([[8.0, 8, 40, 40], [20, 30, 50, 60]]), "labels": torch.tensor([1, 2]), "masks": masks}] * 2
    losses = model.train()([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad is not None
    pan = vovnet.load_detector(panoptic[1], image_size=64).train()
    losses = pan([torch.rand(3, 64, 64)], [{**targets[0], "labels": torch.tensor([1, 3])}])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert all(p.grad is None for p in pan.sem_seg_head.parameters())  # no semantic labels: its head stays as it was


@pytest.mark.slow
def test_eval_and_predict_a_converted_panoptic_fpn_on_coco_files(tmp_path, capsys):
    """vovnet eval on a converted Panoptic FPN: box and mask AP of its instances, and one line saying why there is no
    panoptic quality (instance annotations only); vovnet predict lists its detections."""
    from vovnet.data.shapes import CLASSES

    torch.save({"model": official_checkpoint("vovnet19_slim_dw", "panoptic_fpn", True, num_classes=len(CLASSES))}, tmp_path / "p.pth")
    convert_detectron2(tmp_path / "p.pth", tmp_path / "p.safetensors", class_names=list(CLASSES))
    assert main(["make-shapes", str(tmp_path / "shapes"), "--n", "1", "--val-n", "2", "--image-size", "64"]) == 0
    data = f"coco:{tmp_path}/shapes/annotations/val.json:{tmp_path}/shapes/val"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "p.safetensors"), "--data", data]) == 0
    said = capsys.readouterr().out
    assert "bbox: AP" in said and "segm: AP" in said and "panoptic quality: not computed" in said
    image = next((tmp_path / "shapes" / "val").iterdir())
    assert main(["predict", "--checkpoint", str(tmp_path / "p.safetensors"), str(image), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["image"] == str(image) and all(d["class"] in CLASSES for d in rows[0]["detections"])
