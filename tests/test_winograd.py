"""Winograd F(4x4, 3x3) convolutions: the values of the direct convolution at every map size, the direct call
itself below the tile floor, and a deployed detector running them (by default, on the CPU in fp32) gives the
eval model's detections."""

import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F
from test_deploy_dense import _assert_same_detections, _images, _random_detector
from torch import nn

import vovnet
from vovnet.deployment import DeployWarning
from vovnet.deployment import precision as precision_module
from vovnet.deployment.fuse import OneDNNConvAct
from vovnet.deployment.optimize import deploy_detector
from vovnet.deployment.winograd import WinogradConv2d, winograd_convolutions_, winograd_eligible

MAX_RELATIVE_ERROR = 5e-5  # of the largest output; fp32 transforms give ~1e-5


def _conv(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)
    if bias:
        nn.init.normal_(conv.bias)  # large enough that a bias added at the wrong tile entry shows
    return conv.eval()


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("shape", [[1, 32, 19, 26], [2, 16, 7, 9], [3, 16, 1, 1], [1, 16, 2, 2], [2, 16, 3, 3],
                                   [1, 8, 4, 8], [5, 16, 14, 14]])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_winograd_gives_the_direct_convolution_at_every_map_size(shape, relu, layout):
    conv = _conv(shape[1], 24)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=layout)
    winograd = WinogradConv2d(conv, nn.ReLU() if relu else None, chunk_tiles=8)  # several chunks on the larger maps
    with torch.no_grad():
        got = winograd(x)
    want = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    want = want.relu() if relu else want
    assert got.shape == want.shape and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=layout)
    assert _relative_error(got, want) <= MAX_RELATIVE_ERROR
    if relu:
        assert (got >= 0).all() and (want == 0).any()


def test_winograd_without_bias_and_without_rois():
    conv = _conv(8, 8, bias=False)
    winograd = WinogradConv2d(conv, nn.Identity())
    x = torch.randn(2, 8, 5, 6).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert _relative_error(winograd(x), F.conv2d(x.double(), conv.weight.double(), padding=1)) <= MAX_RELATIVE_ERROR
        assert winograd(torch.randn(0, 8, 14, 14)).shape == (0, 8, 14, 14)  # a mask head given no detections


def test_winograd_replaces_a_onednn_unit_with_its_post_op():
    conv = _conv(16, 16)
    x = torch.randn(2, 16, 11, 13).contiguous(memory_format=torch.channels_last)
    for act in (nn.ReLU(), nn.Identity()):
        unit = OneDNNConvAct(conv, act)
        winograd = WinogradConv2d(unit)
        assert winograd.relu == isinstance(act, nn.ReLU)
        with torch.no_grad():
            assert _relative_error(winograd(x), unit(x).double()) <= MAX_RELATIVE_ERROR


def test_only_eligible_convolutions_are_replaced():
    net = nn.Sequential(
        nn.Conv2d(16, 16, 3, padding=1),  # replaced
        OneDNNConvAct(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()),  # replaced, ReLU fused
        nn.Conv2d(16, 16, 3, padding=1, stride=2),
        nn.Conv2d(16, 16, 3, padding=2, dilation=2),
        nn.Conv2d(16, 16, 3, padding=1, groups=2),
        nn.Conv2d(16, 16, 1),
        nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect"),
        OneDNNConvAct(nn.Conv2d(16, 16, 3, padding=1), nn.SiLU()),
        nn.Conv2d(16, 4, 3, padding=1),  # too narrow for min_channels=8
    )
    kept = list(net)[2:]
    assert winograd_convolutions_(net, min_channels=8) == 2
    assert isinstance(net[0], WinogradConv2d) and not net[0].relu
    assert isinstance(net[1], WinogradConv2d) and net[1].relu
    assert list(net)[2:] == kept
    assert not winograd_eligible(nn.Conv2d(16, 16, 3, padding=1).double())
    with pytest.raises(ValueError, match="3x3 stride-1 padding-1"):
        WinogradConv2d(nn.Conv2d(16, 16, 3, padding=1), nn.SiLU())


def test_small_maps_take_the_direct_convolution():
    conv = _conv(16, 16)
    unit = OneDNNConvAct(conv, nn.ReLU())
    winograd = WinogradConv2d(unit, min_tiles=12)
    small = torch.randn(1, 16, 10, 13).contiguous(memory_format=torch.channels_last)  # 3 x 4 = 12 tiles: Winograd
    smaller = torch.randn(2, 16, 5, 7).contiguous(memory_format=torch.channels_last)  # 2 images of 2 x 2 tiles: 8
    with torch.no_grad():
        assert torch.equal(winograd(smaller), unit(smaller))  # the same oneDNN call, bit for bit
        computed = winograd(small)
        assert not torch.equal(computed, unit(small))  # the transforms round differently ...
        assert _relative_error(computed, unit(small).double()) <= MAX_RELATIVE_ERROR  # ... within the tolerance
    plain = WinogradConv2d(conv, nn.ReLU(), min_tiles=1000)  # a plain Conv2d: its ReLU applied after the direct call
    with torch.no_grad():
        assert torch.equal(plain(small), F.relu(conv(small)))


@pytest.mark.parametrize("arch, options", [("centermask", {}), ("centermask", {"dialect": "centermask2"}),
                                           ("mask_rcnn_sag", {})])
def test_deployed_detector_with_winograd_gives_the_eval_models_detections(wide_winograd, arch, options):
    model = _random_detector(arch, **options)
    images = _images()
    with torch.no_grad():
        want = model(images)
    deployed = (vovnet.deploy if arch == "mask_rcnn_sag" else deploy_detector)(model)  # on by default
    winograd = {name: m for name, m in deployed.named_modules() if isinstance(m, WinogradConv2d)}
    eligible = [name for name, m in model.named_modules() if winograd_eligible(m, None, 8)]
    assert len(winograd) == len(eligible) > 0
    assert any(".fpn." in name for name in winograd)  # the FPN's output convolutions, not only the heads
    # The oneDNN units they replace: the mask heads' with their ReLU, the FPN's and the FCOS towers' (before a group
    # norm) without.
    assert all(m.relu for name, m in winograd.items() if "mask_head." in name)
    assert not any(m.relu for name, m in winograd.items() if ".fpn." in name or "_head.conv." in name)
    _assert_same_detections(want, deployed(images))
    direct = deploy_detector(model, winograd=False)
    assert not any(isinstance(m, WinogradConv2d) for m in direct.modules())


def test_winograd_off_the_cpu_fp32_path_says_so(monkeypatch, wide_winograd):
    monkeypatch.setattr(precision_module, "_cpu_support", lambda name: None)  # bf16 runs natively, as on AMX CPUs
    model = _random_detector("fcos")
    with pytest.warns(DeployWarning, match="winograd=True computes CPU fp32 only; cpu bf16 runs the direct convolutions"):
        deployed = deploy_detector(model, "bf16", winograd=True)
    assert deployed.precision == "bf16"
    assert not any(isinstance(m, WinogradConv2d) for m in deployed.modules())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default says nothing where it does not apply
        deployed = deploy_detector(model, "bf16")
    assert not any(isinstance(m, WinogradConv2d) for m in deployed.modules())
    assert inspect.signature(deploy_detector).parameters["winograd"].default is None


def test_winograd_is_refused_for_a_classifier():
    with pytest.raises(vovnet.UsageError, match="winograd applies to detectors"):
        vovnet.deploy(vovnet.create_model("vovnet19_slim_dw"), winograd=True)
