"""Segmentation library: heads at odd sizes, both architectures, losses and metrics against hand computations,
checkpoints, predict outputs. Inputs are at most 131 px and batches two images, so every test is quick."""

import math

import pytest
import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from vovnet import create_segmenter, load_segmenter, read_checkpoint, save_segmenter
from vovnet.data.segmentation import read_mask
from vovnet.errors import CheckpointError, UsageError
from vovnet.models.backbone import ShapeSpec
from vovnet.models.segmentation import DeepLabV3Head, DeepLabV3PlusHead, SemanticFPNHead
from vovnet.models.segmentation.model import AuxClassifier
from vovnet.tasks.segmentation import SegmentationMetrics, overlay, palette, predict_files, segmentation_losses, soft_dice_loss
from vovnet.weights.checkpoint import save_checkpoint

CLASSES = ["background", "circle", "square"]


def _segmenter(arch="fpn_semantic", model="vovnet19_slim_dw", **options):
    torch.manual_seed(0)
    return create_segmenter(arch, model, CLASSES, fpn_channels=32, head_channels=32, **options)


# ---- shapes of the heads -------------------------------------------------------------------------


@pytest.mark.parametrize("arch, options", [("fpn_semantic", {}), ("deeplabv3", {"deeplab_stride": 16}), ("deeplabv3", {"deeplab_stride": 32}),
                                           ("deeplabv3plus", {"deeplab_stride": 16}), ("deeplabv3plus", {"deeplab_stride": 32})])
def test_logits_at_odd_input_sizes(arch, options):
    model = _segmenter(arch, **options).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 97, 131))
    assert logits.shape == (2, len(CLASSES), 97, 131)
    assert torch.isfinite(logits).all()


def test_semantic_fpn_head_predicts_at_the_finest_level():
    model = _segmenter().eval()
    shapes = model.backbone.output_shape()
    assert [shapes[n].stride for n in model.head.in_features] == [4, 8, 16, 32]
    # p5 takes three conv steps (32 -> 16 -> 8 -> 4), p2 one, as in Panoptic FPN.
    assert [len(steps) for steps in model.head.scale_heads] == [1, 1, 2, 3]
    norms = [m for m in model.head.scale_heads.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 7 and all(n.num_channels // n.num_groups >= 4 for n in norms)  # 32 channels: 8 groups of 4
    with torch.no_grad():
        features = model.backbone(torch.rand(1, 3, 97, 131))
        logits = model.head(features)
    assert logits.shape[-2:] == features["p2"].shape[-2:] == (25, 33)  # ceil-mode pooling: 97 -> 25, 131 -> 33


def test_semantic_fpn_without_the_p2_output_conv_returns_the_top_down_sum():
    standard, light = _segmenter(fpn_p2_conv=True).eval(), _segmenter(fpn_p2_conv=False).eval()
    assert isinstance(light.backbone.fpn.layer_blocks[0], torch.nn.Identity)
    missing, unexpected = light.load_state_dict(standard.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("backbone.fpn.layer_blocks.0.") for k in unexpected)
    seen = {}
    standard.backbone.fpn.layer_blocks[0].register_forward_hook(lambda module, args, out: seen.update(p2_sum=args[0]))
    x = torch.rand(1, 3, 97, 131)
    with torch.no_grad():
        ours, theirs = light.backbone(x), standard.backbone(x)
    assert torch.equal(ours["p2"], seen["p2_sum"])  # lateral 1x1 + upsampled p3, not smoothed again
    for level in ("p3", "p4", "p5", "pool"):
        assert torch.equal(ours[level], theirs[level])
    with pytest.raises(ValueError, match="no FPN level 'p1'"):
        light.backbone.drop_output_conv("p1")


def test_deeplab_head_reads_the_bare_body_at_stride_16_or_32():
    for stride, level, channels, stages, rates in ((16, "c4", 384, 3, (6, 12, 18)), (32, "c5", 512, 4, (3, 6, 9))):
        model = _segmenter("deeplabv3", deeplab_stride=stride)
        assert dict(model.backbone.output_shape()) == {level: (channels, stride)}
        assert len(model.backbone.body.stages) == stages  # no stage past the one read: no unused weights (DDP)
        assert model.head.in_feature == level
        atrous = [m.dilation[0] for m in model.head.head[0].convs.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
        assert tuple(atrous) == rates
    with pytest.raises(UsageError, match="16 or 32"):
        _segmenter("deeplabv3", deeplab_stride=8)
    with pytest.raises(UsageError, match="DeepLabV3 reads the stride-16 map; the backbone gives strides \\[32\\]"):
        DeepLabV3Head(model.backbone.output_shape(), 3, 16)  # a stride-32 backbone has no stride-16 map


def test_deeplabv3plus_joins_the_aspp_with_the_stride_4_map():
    model = _segmenter("deeplabv3plus").eval()
    assert dict(model.backbone.output_shape()) == {"c2": (112, 4), "c4": (384, 16)}
    assert (model.head.in_feature, model.head.low_feature) == ("c4", "c2")
    assert model.head.aspp.project[0].out_channels == 32 and model.head.project[0].out_channels == 48  # head_channels; the paper's 48
    with torch.no_grad():
        features = model.backbone(torch.rand(1, 3, 97, 131))
        assert model.head(features).shape[-2:] == features["c2"].shape[-2:]
    with pytest.raises(UsageError, match="decoder reads the stride-4 map"):
        DeepLabV3PlusHead({"c4": ShapeSpec(384, 16)}, 3)


def test_auxiliary_classifier_reads_the_stride_16_map_and_only_with_aux():
    model = _segmenter(aux_classifier=True).train()
    assert model.aux_head.in_feature == "p4"
    images = torch.rand(2, 3, 64, 64)
    logits, aux = model(images, with_aux=True)
    assert logits.shape == aux.shape == (2, 3, 64, 64)
    assert torch.equal(model.eval()(images), model(images, with_aux=True)[0])  # inference ignores the aux head
    assert _segmenter().train()(images, with_aux=True)[1] is None
    # A DeepLab head on stride 32 gets the stride-16 map built for the auxiliary classifier alone.
    deeplab = _segmenter("deeplabv3", deeplab_stride=32, aux_classifier=True).eval()
    assert {n: s.stride for n, s in deeplab.backbone.output_shape().items()} == {"c4": 16, "c5": 32}
    assert (deeplab.head.in_feature, deeplab.aux_head.in_feature) == ("c5", "c4")
    with pytest.raises(UsageError, match="the auxiliary classifier reads the stride-16 map; the backbone gives strides \\[32\\]"):
        AuxClassifier({"c5": ShapeSpec(512, 32)}, 3)


def test_input_size_override_for_one_call():
    model = _segmenter(input_size=64).eval()
    seen = []
    model.backbone.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64), input_size=32).shape[-2:] == (64, 64)
        model(torch.rand(1, 3, 64, 64))
    assert seen == [(32, 32), (64, 64)]


def test_tta_averages_probabilities_over_mirrors_and_sizes():
    model = _segmenter(input_size=64).eval()
    images = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        plain = model(images)
        assert torch.allclose(model.tta_log_probs(images), plain.log_softmax(1), atol=1e-5)
        flipped = model.tta_log_probs(images, flip=True)
        by_hand = (plain.softmax(1) + model(images.flip(-1)).softmax(1).flip(-1)) / 2
        assert torch.allclose(flipped.exp(), by_hand, atol=1e-6)
        # The flip test sees an image and its mirror alike, so a mirrored input gives the mirrored answer.
        assert torch.allclose(model.tta_log_probs(images.flip(-1), flip=True), flipped.flip(-1), atol=1e-5)
        sizes = model.tta_log_probs(images, input_sizes=[48, 64])
        by_hand = (model(images, input_size=48).softmax(1) + plain.softmax(1)) / 2
        assert sizes.shape == plain.shape and torch.allclose(sizes.exp(), by_hand, atol=1e-6)


def test_head_refuses_levels_the_backbone_lacks():
    shapes = _segmenter("deeplabv3").backbone.output_shape()  # c4 only
    with pytest.raises(UsageError, match="no level"):
        SemanticFPNHead(shapes, 3)


@pytest.mark.parametrize("arch", ["fpn_semantic", "deeplabv3", "deeplabv3plus"])
def test_every_arch_trains_every_parameter(arch):
    model = _segmenter(arch, aux_classifier=True).train()
    images, target = torch.rand(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    target[:, :4] = 255
    logits, aux = model(images, with_aux=True)
    losses = segmentation_losses(logits, target)
    assert set(losses) == {"loss_ce", "loss_dice"}
    (sum(losses.values()) + torch.nn.functional.cross_entropy(aux, target, ignore_index=255)).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert no_grad == []


def test_input_size_resizes_inside_and_returns_logits_at_the_callers_size():
    model = _segmenter(input_size=48).eval()
    seen = []
    model.backbone.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 97, 131))
    assert seen == [(48, 64)] and logits.shape[-2:] == (97, 131)


def test_timm_features_under_the_same_head():
    model = create_segmenter("fpn_semantic", "timm:ese_vovnet19b_dw", CLASSES, fpn_channels=32, head_channels=32).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 96)).shape == (1, 3, 64, 96)


def test_unknown_arch_and_too_few_classes_are_usage_errors():
    with pytest.raises(UsageError, match="fpn_semantic"):
        create_segmenter("unet", "vovnet19_slim_dw", CLASSES)
    with pytest.raises(UsageError, match="two classes"):
        create_segmenter("fpn_semantic", "vovnet19_slim_dw", ["only"])


# ---- losses and metrics ----------------------------------------------------------------------------


def test_metrics_match_a_hand_computation():
    # classes 0..3; 255 ignored; class 3 absent from predictions and targets.
    pred = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, 1]]])
    target = torch.tensor([[[0, 0, 1, 255], [0, 1, 2, 255]]])
    metrics = SegmentationMetrics(["bg", "a", "b", "c"])
    metrics.update(pred, target)
    result = metrics.compute()
    # 6 scored pixels (the two 255s are ignored, with what was predicted there).
    # bg: TP 3, FP 0, FN 0 -> 1. a: TP 1, FN 1 (predicted b) -> 1/2. b: TP 1, FP 1 -> 1/2. c: absent -> None.
    # Pixel accuracy: 3 + 1 + 1 right of 6.
    expected = {"bg": 1.0, "a": 1 / 2, "b": 1 / 2, "c": None}
    for name, value in expected.items():
        assert (result["per_class_iou"][name] is None) if value is None else math.isclose(result["per_class_iou"][name], value, rel_tol=1e-6)
    assert math.isclose(result["miou"], (1 + 1 / 2 + 1 / 2) / 3, rel_tol=1e-6)
    assert math.isclose(result["pixel_acc"], 5 / 6, rel_tol=1e-6)


def test_metrics_accumulate_over_batches_and_take_logits():
    metrics = SegmentationMetrics(["bg", "fg"])
    target = torch.tensor([[[0, 1], [1, 1]]])
    logits = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)], 1)  # predicts bg everywhere
    metrics.update(logits, target)
    metrics.update(target.clone(), target)  # a perfect batch
    result = metrics.compute()
    assert math.isclose(result["per_class_iou"]["bg"], 2 / 5, rel_tol=1e-6)  # TP 2, FP 3
    assert math.isclose(result["per_class_iou"]["fg"], 3 / 6, rel_tol=1e-6)  # TP 3, FN 3
    assert math.isclose(result["pixel_acc"], 5 / 8, rel_tol=1e-6)
    metrics.reset()
    metrics.update(target.clone(), target)
    assert metrics.compute()["miou"] == 1.0


def test_dice_loss_by_hand():
    target = torch.tensor([[[0, 1], [1, 255]]])
    perfect = torch.nn.functional.one_hot(torch.tensor([[[0, 1], [1, 0]]]), 2).permute(0, 3, 1, 2).float() * 100
    assert soft_dice_loss(perfect, target).item() < 1e-6
    uniform = torch.zeros(1, 2, 2, 2)  # p = 0.5 everywhere; 3 scored pixels (1 of class 0, 2 of class 1)
    dice0 = (2 * 0.5 + 1) / (1.5 + 1 + 1)
    dice1 = (2 * 1.0 + 1) / (1.5 + 2 + 1)
    assert math.isclose(soft_dice_loss(uniform, target).item(), 1 - (dice0 + dice1) / 2, rel_tol=1e-6)
    ce = segmentation_losses(uniform, target, dice_weight=0)
    assert set(ce) == {"loss_ce"} and math.isclose(ce["loss_ce"].item(), math.log(2), rel_tol=1e-6)


# ---- checkpoints -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, options", [("fpn_semantic", {}), ("fpn_semantic", {"fpn_p2_conv": False}), ("deeplabv3", {})])
def test_checkpoint_round_trip(tmp_path, arch, options):
    model = _segmenter(arch, input_size=64, **options).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
    path = save_segmenter(model, tmp_path / "seg.safetensors", epoch=3)
    loaded, meta = load_segmenter(path), read_checkpoint(path)[1]
    assert meta["task"] == "segment" and meta["epoch"] == 3 and meta["class_names"] == CLASSES
    assert loaded.config == model.config and not loaded.training
    x = torch.rand(1, 3, 70, 90)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary file left


def test_checkpoint_errors_name_the_file(tmp_path):
    classifier = tmp_path / "classifier.safetensors"
    from vovnet import create_model

    save_checkpoint(create_model("vovnet19_slim_dw", num_classes=3), classifier)
    with pytest.raises(CheckpointError, match="not a segmentation checkpoint"):
        load_segmenter(classifier)
    good = save_segmenter(_segmenter(), tmp_path / "seg.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        load_segmenter(truncated)


# ---- predict outputs ---------------------------------------------------------------------------------


def test_palette_is_distinct_with_black_background():
    colours = palette(256)
    assert colours[0] == (0, 0, 0) and len(set(colours)) == 256


def test_overlay_paints_only_foreground_classes():
    image = torch.full((3, 4, 4), 100, dtype=torch.uint8)
    class_map = torch.tensor([[0, 1, 2, 0]] * 4)
    out = overlay(image, class_map, CLASSES, alpha=1.0)
    assert torch.equal(out[:, :, 0], image[:, :, 0])  # background untouched
    assert tuple(out[:, 0, 1].tolist()) == palette(3)[1] and tuple(out[:, 0, 2].tolist()) == palette(3)[2]


def test_predict_writes_overlay_and_class_map(tmp_path):
    model = _segmenter(input_size=48).eval()
    images = []
    for i, size in enumerate([(70, 50), (33, 41)]):
        path = tmp_path / "in" / f"img{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", size, (30 * i, 90, 200)).save(path)
        images.append(path)
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"not a png")
    rows = predict_files(model, [*images, broken], tmp_path / "out")
    assert rows[2]["image"] == str(broken) and "unreadable" in rows[2]["error"]
    for row, path in zip(rows, images):
        width, height = Image.open(path).size
        assert row["size"] == [width, height]
        assert Image.open(row["overlay"]).size == (width, height) and Image.open(row["overlay"]).mode == "RGB"
        class_map = read_mask(row["class_map"])
        assert class_map.shape == (height, width) and Image.open(row["class_map"]).mode == "L"
        with torch.no_grad():
            x = pil_to_tensor(Image.open(path).convert("RGB"))[None].float() / 255
            expected = model(x).argmax(1)[0].numpy()
        assert (class_map == expected).all()
        assert math.isclose(sum(row["class_shares"].values()), 1.0, abs_tol=1e-3)
    assert rows[0]["overlay"].endswith("img0_overlay.png") and rows[0]["class_map"].endswith("img0_classes.png")
    no_files = predict_files(model, images[:1], None)
    assert "overlay" not in no_files[0] and no_files[0]["class_shares"] == rows[0]["class_shares"]
