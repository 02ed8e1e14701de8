"""vovnet.deploy on whole detectors and semantic segmenters: the deployed copy gives the eval model's results
(same labels, boxes and scores within 1e-4, masks IoU >= 0.99) on random and on briefly trained weights."""

import dataclasses
import warnings

import pytest
import torch
from conftest import randomize_norm_stats, spread_detector_heads
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation, FrozenBatchNorm2d

import vovnet
from vovnet import create_detector, create_segmenter, load_detector, save_detector
from vovnet.data.shapes import ShapesConfig, render_scene
from vovnet.deployment import DeployWarning, deploy, fold_batch_norm_, fuse_onednn_
from vovnet.deployment import precision as precision_module
from vovnet.deployment.detection import compare_detections
from vovnet.deployment.fuse import OneDNNConvAct, OneDNNConvTransposeAct, PooledLinear, fuse_conv_act_, pack_convolutions_
from vovnet.deployment.optimize import DeployedDetector
from vovnet.deployment.winograd import WinogradConv2d, winograd_eligible
from vovnet.models.detection.builders import DetectorConfig
from vovnet.models.detection.sag_mask import SAGMaskHead

CLASSES = ["circle", "triangle", "rectangle", "ellipse"]
ARCHS = ["fcos", "retinanet", "faster_rcnn", "mask_rcnn_sag", "centermask"]


def _images(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 80, 112, generator=g), torch.rand(3, 96, 72, generator=g)]


def _scenes(n: int = 2, size: int = 64) -> list[torch.Tensor]:
    return [render_scene(i, split="val", config=ShapesConfig(image_size=size)).image.float() / 255 for i in range(n)]


def _random_detector(arch: str, **options) -> nn.Module:
    torch.manual_seed(0)
    model = create_detector(arch, "vovnet19_slim_dw", CLASSES, image_size=96, score_thresh=0.0, **options)
    randomize_norm_stats(model)
    return spread_detector_heads(model).eval()


def _assert_same_detections(want: list[dict], got: list[dict]) -> None:
    assert len(want) == len(got)
    for w, g in zip(want, got):
        assert set(w) == set(g)
        agreement = compare_detections(w, g)
        assert agreement.ok(), str(agreement)
        if "masks" in w:
            assert g["masks"].shape[1:] == w["masks"].shape[1:] and g["masks"].dtype == w["masks"].dtype


# ---- fusions found by module type --------------------------------------------------------------------


def test_batch_norm_in_any_sequential_is_folded_and_fused():
    torch.manual_seed(0)
    frozen = FrozenBatchNorm2d(8)
    frozen.running_mean.normal_()
    frozen.running_var.uniform_(0.5, 2)
    frozen.weight.normal_()
    frozen.bias.normal_()
    net = nn.Sequential(
        Conv2dNormActivation(3, 8, norm_layer=nn.BatchNorm2d),  # torchvision's conv-BN-ReLU
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), frozen, nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU()),  # group norm stays
    )
    randomize_norm_stats(net)
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        want = net(x)
        assert fold_batch_norm_(net) == 2
        assert not any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in net.modules())
        assert torch.allclose(net(x), want, atol=1e-5)
        net = net.to(memory_format=torch.channels_last)
        assert fuse_onednn_(net) == 2 and sum(isinstance(m, OneDNNConvAct) for m in net.modules()) == 2
        assert torch.allclose(net(x.contiguous(memory_format=torch.channels_last)), want, atol=1e-5)


def test_sag_mask_deconvolution_and_its_relu_become_one_onednn_call():
    torch.manual_seed(0)
    head = SAGMaskHead(16, 5, conv_dims=8, num_convs=2).eval()
    nn.init.normal_(head.deconv.bias)  # values on both sides of the ReLU's threshold
    x = torch.randn(3, 16, 7, 7)
    with torch.no_grad():
        want = head(x)
        assert (want != head.predictor.bias[:, None, None]).any()  # the deconvolution's ReLU output reaches the logits
        head = head.to(memory_format=torch.channels_last)
        assert fuse_conv_act_(head, "deconv", "deconv_act")
        assert isinstance(head.deconv, OneDNNConvTransposeAct) and isinstance(head.deconv_act, nn.Identity)
        got = head(x.contiguous(memory_format=torch.channels_last))
        assert got.shape == (3, 5, 14, 14) and torch.allclose(got, want, atol=1e-6)
        assert torch.allclose(head(x[:2].contiguous(memory_format=torch.channels_last)), want[:2], atol=1e-6)  # repacked per shape
    unit = nn.Module()
    unit.conv, unit.act = nn.ConvTranspose2d(4, 4, 2, stride=2), nn.Sigmoid()  # no oneDNN post-op for it
    assert not fuse_conv_act_(unit, "conv", "act") and isinstance(unit.conv, nn.ConvTranspose2d)



def test_sag_mask_head_computes_each_rois_own_channel_alone():
    """The deployed mask path: only each RoI's class channel, equal to that channel of all channels."""
    torch.manual_seed(0)
    head = SAGMaskHead(16, 6, conv_dims=8, num_convs=2).eval()
    nn.init.normal_(head.predictor.weight)
    nn.init.normal_(head.predictor.bias)
    x = torch.randn(5, 16, 7, 7)
    channels = torch.tensor([3, 0, 5, 3, 1])
    with torch.no_grad():
        want = head(x)[torch.arange(5), channels][:, None]
        assert torch.allclose(head(x, channels), want, atol=1e-5)
        head = head.to(memory_format=torch.channels_last)
        pack_convolutions_(head)  # the deployed head: packed weights, channels_last maps
        assert isinstance(head.predictor, OneDNNConvAct)
        got = head(x.contiguous(memory_format=torch.channels_last), channels)
    assert got.shape == (5, 1, 14, 14) and torch.allclose(got, want, atol=1e-5)


# ---- detectors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_deployed_detector_equals_the_eval_model_on_random_weights(arch):
    model = _random_detector(arch)
    images = _images()
    with torch.no_grad():
        want = model(images)
    deployed = deploy(model)
    assert isinstance(deployed, DeployedDetector) and deployed.precision == "fp32"
    assert not any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in deployed.modules())
    assert any(isinstance(m, OneDNNConvAct) for m in deployed.modules())
    assert any(isinstance(m, PooledLinear) for m in deployed.modules())  # eSE's 1x1 conv on the pooled vector
    if arch in ("mask_rcnn_sag", "centermask"):  # the SAG-Mask head's deconvolution and its ReLU
        assert any(isinstance(m, OneDNNConvTransposeAct) for m in deployed.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the model itself is left alone
    got = deployed(images)
    assert all(len(w["boxes"]) > 10 for w in want)
    assert all((w["masks"] >= 0.5).flatten(1).any(1).float().mean() > 0.5 for w in want if "masks" in w)  # masks with content
    _assert_same_detections(want, got)


def _briefly_trained(arch: str, path, steps: int = 6) -> nn.Module:
    """A few SGD steps on shapes scenes (batch-norm statistics and heads move away from their init), saved and loaded."""
    torch.manual_seed(0)
    model = create_detector(arch, "vovnet19_slim_dw", CLASSES, image_size=64)
    scenes = [render_scene(i, config=ShapesConfig(image_size=64)) for i in range(2 * steps)]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    model.train()
    for step in range(steps):
        batch = scenes[2 * step : 2 * step + 2]
        images = [s.image.float() / 255 for s in batch]
        targets = [{"boxes": s.boxes, "labels": s.labels, "masks": s.masks.to(torch.uint8)} for s in batch]
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
    save_detector(model, path)
    return load_detector(path)


@pytest.mark.slow  # trains each detector first
@pytest.mark.parametrize("arch", ["centermask", "mask_rcnn_sag"])
def test_deployed_detector_equals_the_eval_model_on_a_trained_checkpoint(arch, tmp_path, request):
    model = _briefly_trained(arch, tmp_path / f"{arch}.safetensors")
    if arch == "centermask":
        model.score_thresh = 0.01  # enough detections of a briefly trained model to compare
    else:
        model.roi_heads.score_thresh = 0.01
    images = _scenes(2, 64) + [torch.rand(3, 70, 90)]
    with torch.no_grad():
        want = model(images)
    assert sum(len(w["boxes"]) for w in want) > 5
    _assert_same_detections(want, deploy(model)(images))
    request.getfixturevalue("wide_winograd")  # and with Winograd in every 3x3 stride-1 layer it can take
    wide = deploy(model)
    eligible = sum(winograd_eligible(m, None, 8) for m in model.modules())  # the FPN's, the towers', the mask head's
    assert sum(isinstance(m, WinogradConv2d) for m in wide.modules()) == eligible >= 7
    _assert_same_detections(want, wide(images))


def test_mask_score_thresh_skips_the_mask_head_for_weak_detections():
    model = _random_detector("centermask")
    images = _images()[:1]
    with torch.no_grad():
        want = model(images)[0]
    ranked = want["scores"].sort(descending=True).values
    threshold = (ranked[len(ranked) // 2] + ranked[len(ranked) // 2 + 1]).item() / 2  # between two scores
    deployed = deploy(model, mask_score_thresh=threshold)
    seen = []
    deployed.model.mask_head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    got = deployed(images)[0]
    strong = want["scores"] >= threshold
    assert seen == [int(strong.sum())] and 0 < seen[0] < len(strong)
    assert torch.equal(got["labels"], want["labels"])
    assert not got["masks"][~strong].any()
    a, b = got["masks"][strong] >= 0.5, want["masks"][strong] >= 0.5
    assert (a & b).sum() / (a | b).sum() >= 0.99
    with pytest.raises(ValueError, match="mask_score_thresh"):
        deploy(model, mask_score_thresh=1.5)


@pytest.mark.skipif("dialect" not in {f.name for f in dataclasses.fields(DetectorConfig)}, reason="no CenterMask dialects")
def test_deployed_official_centermask_gives_its_mask_scores_and_detectron2_masks():
    model = _random_detector("centermask", dialect="centermask2")
    images = _images()
    with torch.no_grad():
        want = model(images)
    got = deploy(model)(images)
    assert "mask_scores" in want[0]
    _assert_same_detections(want, got)
    for w, g in zip(want, got):
        assert torch.allclose(g["mask_scores"], w["mask_scores"], rtol=1e-4, atol=1e-6)


def test_detector_bf16_falls_back_with_the_message(monkeypatch):
    monkeypatch.setattr(precision_module, "_cpu_support", lambda name: "no native bf16 here" if name == "bf16" else None)
    with pytest.warns(DeployWarning, match="bf16 requested but no native bf16 here; running fp32"):
        deployed = deploy(_random_detector("fcos"), "bf16")
    assert deployed.precision == "fp32" and deployed.notes


def test_detector_only_options_are_usage_errors():
    with pytest.raises(vovnet.UsageError, match="compile"):
        deploy(_random_detector("fcos"), compile=True)
    with pytest.raises(vovnet.UsageError, match="mask_score_thresh"):
        deploy(vovnet.create_model("vovnet19_slim_dw", num_classes=3), mask_score_thresh=0.5)


# ---- semantic segmenters ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["fpn_semantic", "deeplabv3", "deeplabv3plus"])
@pytest.mark.parametrize("refine_radius", [0, 3])
def test_deployed_segmenter_equals_the_eval_model(arch, refine_radius):
    torch.manual_seed(0)
    model = create_segmenter(arch, "vovnet19_slim_dw", ["background", *CLASSES], input_size=64, refine_radius=refine_radius)
    randomize_norm_stats(model)
    x = torch.rand(2, 3, 72, 96)
    with torch.no_grad():
        want = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeployWarning)
        deployed = deploy(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    assert any(isinstance(m, OneDNNConvAct) for m in deployed.modules())
    got = deployed(x)
    assert got.shape == want.shape
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-4
    top2 = want.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3  # random weights leave many pixels without a clear class
    assert clear.float().mean() > 0.2 and torch.equal(got.argmax(1)[clear], want.argmax(1)[clear])
