"""Detection library: FPN backbones, the SAG-Mask head, CenterMask's area rule, the detector builders,
checkpoints, metrics and drawing. Images are 64 px and batches two images, so every test is quick."""

import math
from types import SimpleNamespace

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

import vovnet
from vovnet import create_detector, load_detector, read_checkpoint, save_detector
from vovnet.errors import CheckpointError, UsageError
from vovnet.models.backbone import BackboneConfig, fpn_backbone
from vovnet.models.detection import ARCHS, AreaRuleRoIAlign, CenterMask, SAGMaskHead, assign_levels_by_area, builders
from vovnet.models.detection.builders import HEAD_SIZES
from vovnet.models.detection.sag_mask import SpatialAttention
from vovnet.tasks.detection import DetectionMetrics, draw_detections, prediction_record

SIZE = 64
CLASSES = ["circle", "square"]


def _targets(n: int = 2) -> list[dict]:
    targets = []
    for i in range(n):
        masks = torch.zeros(2, SIZE, SIZE, dtype=torch.uint8)
        masks[0, 8:30, 6:34] = 1
        masks[1, 36 - i : 60, 30:58] = 1
        boxes = torch.tensor([[6.0, 8, 34, 30], [30, 36 - i, 58, 60]])
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks})
    return targets


# ---- backbone ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, extra, out_channels",
    [
        ("vovnet19_slim_dw", "p6p7", 128),
        ("vovnet19_slim_dw", "maxpool", 256),
        ("vovnet39", "maxpool", 64),
        ("timm:ese_vovnet19b_dw", "p6p7", 128),
    ],
)
def test_fpn_backbone_levels_strides_channels(model, extra, out_channels):
    backbone = fpn_backbone(BackboneConfig(model), extra=extra, out_channels=out_channels).eval()
    shapes = backbone.output_shape()
    expected = {"p6p7": ["p3", "p4", "p5", "p6", "p7"], "maxpool": ["p2", "p3", "p4", "p5", "pool"]}[extra]
    assert list(shapes) == expected
    assert backbone.out_channels == out_channels
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 128, 96))
    assert list(feats) == expected
    for name, fmap in feats.items():
        spec = shapes[name]
        assert spec.channels == out_channels == fmap.shape[1]
        assert fmap.shape[-2:] == (math.ceil(128 / spec.stride), math.ceil(96 / spec.stride)), name
    assert [s.stride for s in shapes.values()] == ([8, 16, 32, 64, 128] if extra == "p6p7" else [4, 8, 16, 32, 64])


def test_fpn_backbone_freeze_at_and_norm_choice():
    backbone = fpn_backbone(BackboneConfig("vovnet19_slim_dw", freeze_at=2), extra="maxpool")
    body = backbone.body
    assert not any(p.requires_grad for p in body.stem.parameters())
    assert not any(p.requires_grad for p in body.stages[0].parameters())
    assert all(p.requires_grad for p in body.stages[1].parameters())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in body.stages[0].modules())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in body.stages[1].modules())
    frozen = fpn_backbone(BackboneConfig("vovnet19_slim_dw", norm="frozen_batch"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    grouped = fpn_backbone(BackboneConfig("vovnet19_slim_dw", norm="group"))
    assert any(isinstance(m, torch.nn.GroupNorm) for m in grouped.body.modules())
    with pytest.raises(UsageError, match="freeze_at"):
        fpn_backbone(BackboneConfig("vovnet19_slim_dw", freeze_at=9))
    with pytest.raises(UsageError, match="extra"):
        fpn_backbone(BackboneConfig("vovnet19_slim_dw"), extra="p6")


# ---- SAG-Mask --------------------------------------------------------------------------------------


def test_sag_mask_head_shapes_and_sizes():
    head = SAGMaskHead(128, 5, conv_dims=128, num_convs=2)
    assert head(torch.randn(3, 128, 14, 14)).shape == (3, 5, 28, 28)
    assert head(torch.randn(0, 128, 14, 14)).shape == (0, 5, 28, 28)
    full = SAGMaskHead(256, 81)
    convs = [m for m in full.convs if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(256, 256, (3, 3))] * 4
    assert full.attention.conv.weight.shape == (1, 2, 3, 3) and full.attention.conv.bias is None
    assert full.deconv.kernel_size == (2, 2) and full.deconv.stride == (2, 2)
    assert full.predictor.kernel_size == (1, 1) and full.predictor.out_channels == 81
    assert full.predictor.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert all(c.bias.abs().sum() == 0 for c in convs) and full.predictor.bias.abs().sum() == 0


def test_sag_mask_is_exported_under_the_blog_name():
    assert vovnet.SAG_Mask is vovnet.SAGMaskHead is SAGMaskHead
    assert vovnet.SAG_Mask(64, 2)(torch.randn(1, 64, 14, 14)).shape == (1, 2, 28, 28)


def test_spatial_attention_pools_over_channels_by_hand():
    torch.manual_seed(0)
    att = SpatialAttention(3)
    x = torch.randn(2, 5, 6, 7)
    w = att.conv.weight.detach()[0]  # [2, 3, 3]: channel 0 sees the mean, channel 1 the max
    # Hand computation: per pixel the mean and max over the 5 channels, then a zero-padded 3x3 correlation.
    mean = [[[sum(x[n, c, i, j].item() for c in range(5)) / 5 for j in range(7)] for i in range(6)] for n in range(2)]
    mx = [[[max(x[n, c, i, j].item() for c in range(5)) for j in range(7)] for i in range(6)] for n in range(2)]
    expected = torch.zeros(2, 5, 6, 7)
    for n in range(2):
        for i in range(6):
            for j in range(7):
                logit = 0.0
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        if 0 <= i + di < 6 and 0 <= j + dj < 7:
                            logit += w[0, di + 1, dj + 1].item() * mean[n][i + di][j + dj]
                            logit += w[1, di + 1, dj + 1].item() * mx[n][i + di][j + dj]
                expected[n, :, i, j] = x[n, :, i, j] * (1 / (1 + math.exp(-logit)))
    torch.testing.assert_close(att(x), expected, rtol=1e-5, atol=1e-5)
    # One gate per pixel shared by all channels: the blog's spatial 3x3 pooling would not give this.
    gate = att.attention(x)
    assert gate.shape == (2, 1, 6, 7)
    # Shuffling the channels changes neither mean nor max, so the gate is unchanged.
    torch.testing.assert_close(att.attention(x[:, torch.randperm(5)]), gate)


# ---- CenterMask's level rule and pooler --------------------------------------------------------------------


def test_area_rule_levels():
    image_area = torch.tensor(100.0 * 100.0)
    sides = torch.tensor([100.0, 70.0, 60.0, 50.0, 10.0, 140.0])
    boxes = torch.stack([torch.zeros(6), torch.zeros(6), sides, sides], dim=1)
    # ceil(5 - log2(10000 / side^2)), clamped to [3, 5]
    expected = [min(max(math.ceil(5 - math.log2(1e4 / s**2)), 3), 5) for s in sides.tolist()]
    assert expected == [5, 4, 4, 3, 3, 5]
    assert assign_levels_by_area(boxes, image_area).tolist() == expected


def test_area_rule_differs_from_fpn_canonical_rule():
    # A 224x224 box in an 800x800 image: the FPN paper sends it to P4, CenterMask to P3 (1/12.8 of the image).
    box = torch.tensor([[0.0, 0.0, 224.0, 224.0]])
    assert assign_levels_by_area(box, torch.tensor(800.0 * 800.0)).item() == 3
    canonical = MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 7, 2)
    feats = {f"p{k}": torch.zeros(1, 1, 800 // 2**k, 800 // 2**k) for k in range(2, 6)}
    canonical(feats, [box], [(800, 800)])
    assert canonical.map_levels([box]).item() + 2 == 4


def test_area_rule_roi_align_pools_from_the_assigned_level():
    feats = {
        name: torch.full((2, 1, 256 // s, 256 // s), float(level))
        for name, s, level in (("p3", 8, 3), ("p4", 16, 4), ("p5", 32, 5))
    }
    pool = AreaRuleRoIAlign(["p3", "p4", "p5"], [8, 16, 32], output_size=4)
    boxes = [torch.tensor([[0.0, 0, 256, 256], [10, 10, 40, 40]]), torch.tensor([[0.0, 0, 160, 160]])]
    out = pool(feats, boxes, [(256, 256), (256, 256)])
    assert out.shape == (3, 1, 4, 4)
    assert out[:, 0, 1, 1].tolist() == [5.0, 3.0, 4.0]  # 160^2 / 256^2 = 0.39 -> ceil(5 - 1.36) = 4


def test_centermask_training_rois_add_matching_detections():
    targets = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]])}, {"boxes": torch.zeros(0, 4)}]
    detections = [
        {"boxes": torch.tensor([[1.0, 0, 10, 10], [50, 50, 60, 60], [21, 21, 40, 40]])},
        {"boxes": torch.tensor([[0.0, 0, 5, 5]])},
    ]
    rois, matched = CenterMask._mask_training_rois(SimpleNamespace(mask_detections_per_gt=None), targets, detections)
    assert rois[0].tolist() == [[0, 0, 10, 10], [20, 20, 40, 40], [1, 0, 10, 10], [21, 21, 40, 40]]
    assert matched[0].tolist() == [0, 1, 0, 1]
    assert rois[1].shape == (0, 4) and matched[1].tolist() == []


@pytest.mark.parametrize("per_gt, expected", [(None, [1, 2, 3, 4]), (1, [3, 4]), (2, [2, 3, 4]), (0, [])])
def test_centermask_training_rois_keep_the_best_detections_per_ground_truth(per_gt, expected):
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]])
    detections = torch.tensor([
        [0.0, 0, 20, 10],  # gt 0, IoU 0.5
        [0.0, 0, 10, 16],  # gt 0, IoU 0.625
        [0.0, 0, 10, 11],  # gt 0, IoU 0.91
        [21.0, 21, 40, 40],  # gt 1, IoU 0.90
        [50.0, 50, 60, 60],  # no match
    ])
    model = SimpleNamespace(mask_detections_per_gt=per_gt)
    rois, matched = CenterMask._mask_training_rois(model, [{"boxes": gt}], [{"boxes": detections}])
    kept = sorted(next(i for i, d in enumerate(detections.tolist()) if d == r) + 1 for r in rois[0][2:].tolist())
    assert kept == expected
    assert rois[0][:2].tolist() == gt.tolist()  # ground truths always come first


# ---- builders --------------------------------------------------------------------------------------------------

LOSSES = {
    "faster_rcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"},
    "mask_rcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_mask"},
    "mask_rcnn_sag": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_mask"},
    "fcos": {"classification", "bbox_regression", "bbox_ctrness"},
    "retinanet": {"classification", "bbox_regression"},
    "centermask": {"classification", "bbox_regression", "bbox_ctrness", "loss_mask"},
}


@pytest.mark.parametrize("arch", sorted(set(ARCHS) - {"panoptic_fpn"}))  # detectron2's only: test_rcnn_official.py
def test_builder_train_and_eval_forward(arch, seeded):
    model = create_detector(arch, "vovnet19_slim_dw", CLASSES, image_size=SIZE, score_thresh=0.0)
    assert model.transform.min_size == (SIZE,)
    images = [torch.rand(3, SIZE, SIZE), torch.rand(3, SIZE, SIZE)]
    model.train()
    losses = model(images, _targets())
    assert set(losses) == LOSSES[arch]
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.body.stem[0].conv.weight.grad is not None
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, SIZE, SIZE), torch.rand(3, 48, 80)])
    assert len(out) == 2
    for det, (h, w) in zip(out, [(SIZE, SIZE), (48, 80)]):
        n = len(det["boxes"])
        assert n > 0  # score_thresh 0: even an untrained detector returns its best candidates
        assert det["scores"].shape == det["labels"].shape == (n,)
        assert 0 <= det["labels"].min() and det["labels"].max() <= len(CLASSES)
        assert ("masks" in det) == ARCHS[arch].masks
        if ARCHS[arch].masks:
            assert det["masks"].shape == (n, 1, h, w)
            assert 0 <= det["masks"].min() and det["masks"].max() <= 1


def test_lite_and_full_heads():
    lite = create_detector("centermask", "vovnet19_slim_dw", CLASSES)
    full = create_detector("centermask", "vovnet39", CLASSES, image_size=SIZE)
    assert lite.config.lite and not full.config.lite
    for model, size in ((lite, HEAD_SIZES["lite"]), (full, HEAD_SIZES["full"])):
        assert model.backbone.out_channels == size.fpn_channels
        assert sum(isinstance(m, torch.nn.Conv2d) for m in model.mask_head.convs) == size.mask_convs
        assert model.mask_head.deconv.out_channels == size.mask_dims
        assert sum(isinstance(m, torch.nn.Conv2d) for m in model.head.classification_head.conv) == size.tower_convs
    rcnn = create_detector("mask_rcnn_sag", "vovnet19_slim_dw", CLASSES, lite=False)
    assert rcnn.roi_heads.box_head.fc7.out_features == 1024 and rcnn.roi_heads.fg_bg_sampler.batch_size_per_image == 512
    assert rcnn.roi_heads.mask_roi_pool.featmap_names == ["p2", "p3", "p4", "p5"]
    with pytest.raises(UsageError, match="unknown detector arch"):
        create_detector("yolo", "vovnet19_slim_dw", CLASSES)


@pytest.mark.parametrize("dialect", ["torchvision", "centermask2"])
def test_centermask_draws_the_mask_head_before_the_fcos_head(dialect, monkeypatch):
    # A seed's initialisation is the order heads draw their weights in; the shapes recipe's figures rest on it.
    order = []
    for name in ("SAGMaskHead", "ScaledFCOSHead", "FCOSHead", "MaskIoUHead"):
        cls = getattr(builders, name)
        monkeypatch.setattr(builders, name, lambda *a, _cls=cls, _name=name, **k: order.append(_name) or _cls(*a, **k))
    create_detector("centermask", "vovnet19_slim_dw", CLASSES, image_size=SIZE, dialect=dialect)
    assert order[0] == "SAGMaskHead"
    assert order[1] == ("ScaledFCOSHead" if dialect == "centermask2" else "FCOSHead")


def test_timm_backbone_detector_matches_ours_in_layout():
    ours = create_detector("faster_rcnn", "vovnet19_dw", CLASSES, image_size=SIZE)
    timm_based = create_detector("faster_rcnn", "timm:ese_vovnet19b_dw", CLASSES, image_size=SIZE)
    assert timm_based.config.lite  # V-19 -> lite heads for both
    assert ours.backbone.output_shape() == timm_based.backbone.output_shape()
    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(ours) == count(timm_based)  # same network, only the module names differ


# ---- checkpoints ---------------------------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path, seeded):
    model = create_detector("centermask", "vovnet19_slim_dw", CLASSES, image_size=SIZE, freeze_at=1).eval()
    path = save_detector(model, tmp_path / "det.safetensors", epoch=3)
    loaded, meta = load_detector(path), read_checkpoint(path)[1]
    assert meta["task"] == "detect" and meta["arch"] == "centermask" and meta["model"] == "vovnet19_slim_dw"
    assert meta["class_names"] == CLASSES and meta["num_classes"] == 3 and meta["image_size"] == SIZE and meta["epoch"] == 3
    image = [torch.rand(3, SIZE, SIZE)]
    with torch.no_grad():
        a, b = model.backbone(image[0][None]), loaded.backbone(image[0][None])
    for name in a:
        torch.testing.assert_close(a[name], b[name])


def test_loading_a_classifier_as_detector_is_refused(tmp_path):
    path = vovnet.save_checkpoint(vovnet.create_model("vovnet19_slim_dw", num_classes=3), tmp_path / "cls.safetensors")
    with pytest.raises(CheckpointError, match="not a detector checkpoint"):
        load_detector(path)


# ---- metrics and drawing -------------------------------------------------------------------------------------------------


def _prediction(targets: dict, score: float = 0.9) -> dict:
    n = len(targets["boxes"])
    return {
        "boxes": targets["boxes"],
        "labels": targets["labels"],
        "scores": torch.full((n,), score),
        "masks": targets["masks"][:, None].float(),
    }


def test_metrics_perfect_and_empty_predictions():
    targets = _targets()
    metrics = DetectionMetrics(CLASSES, masks=True)
    metrics.update([_prediction(t) for t in targets], targets)
    values, details = metrics.compute()
    assert values["bbox_map"] == pytest.approx(1.0) and values["segm_map"] == pytest.approx(1.0)
    assert values["bbox_map_50"] == pytest.approx(1.0)
    assert set(details["per_class"]["bbox"]) == set(CLASSES)
    empty = DetectionMetrics(CLASSES, masks=False)
    empty.update(
        [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)}] * 2, targets
    )
    values, _ = empty.compute()
    assert values["bbox_map"] == 0.0 and "segm_map" not in values


def test_draw_detections_and_record():
    image = torch.zeros(3, SIZE, SIZE, dtype=torch.uint8)
    pred = _prediction(_targets(1)[0])
    pred["scores"] = torch.tensor([0.9, 0.2])
    drawn = draw_detections(image, pred, CLASSES, score_thresh=0.5)
    assert drawn.shape == image.shape and drawn.dtype == torch.uint8
    assert drawn[:, 8:30, 6:34].float().mean() > 0  # the confident mask is overlaid
    assert drawn[:, 40:60, 34:56].sum() == 0  # the low-scoring one is not drawn
    (row,) = prediction_record(pred, CLASSES, score_thresh=0.5)
    rle = row.pop("segmentation")  # the mask as COCO RLE: tests/test_predict_outputs.py decodes it
    assert row == {"label": 1, "class": "circle", "score": 0.9, "box": [6.0, 8.0, 34.0, 30.0], "mask_area": 22 * 28}
    assert rle["size"] == [SIZE, SIZE] and isinstance(rle["counts"], str)


def test_pretrained_backbone_weights_are_loaded(tmp_path, seeded):
    classifier = vovnet.create_model("vovnet19_slim_dw", num_classes=7)
    path = vovnet.save_checkpoint(classifier, tmp_path / "cls.safetensors")
    detector = create_detector("fcos", "vovnet19_slim_dw", CLASSES, image_size=SIZE, pretrained=str(path))
    body = detector.backbone.body.state_dict()
    for key, value in classifier.state_dict().items():
        if not key.startswith("head."):
            torch.testing.assert_close(body[key], value, msg=key)


def test_mask_ap_counts_detections_in_images_without_objects():
    """A confident detection in an image without objects is a false positive for mask AP as for box AP (pycocotools
    counts it; torchmetrics alone would leave the image out of the mask evaluation and report 1.0)."""
    def square(x0: int) -> torch.Tensor:
        m = torch.zeros(32, 32, dtype=torch.bool)
        m[x0 : x0 + 8, x0 : x0 + 8] = True
        return m

    metrics = DetectionMetrics(["a"], masks=True)
    hit = {"boxes": torch.tensor([[4.0, 4, 12, 12]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.5]),
           "masks": square(4)[None, None].float()}
    stray = {"boxes": torch.tensor([[10.0, 10, 18, 18]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.9]),
             "masks": square(10)[None, None].float()}
    targets = [{"boxes": hit["boxes"], "labels": hit["labels"], "masks": square(4)[None]},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 32, 32, dtype=torch.bool)}]
    metrics.update([hit, stray], targets)
    values, _ = metrics.compute()
    assert values["bbox_map"] == pytest.approx(0.5) and values["segm_map"] == pytest.approx(0.5)
