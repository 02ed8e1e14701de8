
import pytest
import torch
from conftest import rel_err
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import vovnet
from vovnet.models.summary import count_params, model_info
from vovnet.models.vovnet import OSABlock

# REFERENCE.md section 1: computed from the official code (V1 from timm's vovnet39a/57a), 1000-class head.
PARAMS = {
    "vovnet19_slim_dw": 1_897_752,
    "vovnet19_dw": 6_543_080,
    "vovnet19_slim": 3_166_136,
    "vovnet19": 11_205_416,
    "vovnet39": 26_209_128,
    "vovnet57": 42_479_912,
    "vovnet99": 70_548_520,
    "vovnet27_slim": 4_018_536,
    "vovnet27_slim_v1": 3_525_736,
    "vovnet39_v1": 22_600_296,
    "vovnet57_v1": 36_640_296,
}
GMACS = {"vovnet19_slim_dw": 0.40, "vovnet19_dw": 1.33, "vovnet19_slim": 1.68, "vovnet19": 4.12,
         "vovnet39": 7.08, "vovnet57": 8.94, "vovnet99": 16.50}


def test_registry_lists_every_variant():
    assert vovnet.list_models(task="classify") == list(PARAMS)
    assert vovnet.list_models("dw", task="classify") == ["vovnet19_slim_dw", "vovnet19_dw"]


def test_list_models_names_every_kind_of_model_in_one_list():
    detectors = ["faster_rcnn", "mask_rcnn", "mask_rcnn_sag", "panoptic_fpn", "fcos", "retinanet", "centermask"]
    segmenters = ["fpn_semantic", "deeplabv3", "deeplabv3plus"]
    assert vovnet.list_models(task="detect") == detectors
    assert vovnet.list_models(task="segment") == segmenters
    assert vovnet.list_models() == list(PARAMS) + detectors + segmenters
    assert vovnet.list_models("deeplab") == ["deeplabv3", "deeplabv3plus"]
    with pytest.raises(vovnet.UsageError, match="task must be one of classify, detect, segment"):
        vovnet.list_models(task="track")


@pytest.mark.parametrize("name", PARAMS)
def test_exact_parameter_count(name):
    with torch.device("meta"):
        model = vovnet.create_model(name)
    assert count_params(model) == PARAMS[name]


@pytest.mark.parametrize("name", GMACS)
def test_gmacs_match_the_paper_table(name):
    assert model_info(name)["gmacs"] == pytest.approx(GMACS[name], abs=0.006)


@pytest.mark.parametrize("size", [(64, 64), (97, 131), (224, 224)])
def test_classifier_output_shape(size):
    model = vovnet.create_model("vovnet19_slim_dw", num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 7)


@pytest.mark.parametrize("name", ["vovnet19_slim_dw", "vovnet39", "vovnet27_slim_v1"])
def test_features_only_strides_and_channels(name):
    model = vovnet.create_model(name, features_only=True, out_indices=(0, 1, 2, 3, 4)).eval()
    h, w = 97, 131
    with torch.no_grad():
        feats = model(torch.randn(1, 3, h, w))
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16, 32]
    assert [f.shape[1] for f in feats] == [f["num_chs"] for f in model.feature_info]
    for f, info in zip(feats, model.feature_info):
        # conv padding and ceil-mode pooling keep every map within one pixel of size / stride
        assert abs(f.shape[2] - h / info["reduction"]) <= 1 and abs(f.shape[3] - w / info["reduction"]) <= 1


def test_features_only_builds_only_what_it_returns():
    model = vovnet.create_model("vovnet39", features_only=True, out_indices=(1, 2))
    assert len(model.stages) == 2 and model.head is None
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [256, 512]
    with pytest.raises(vovnet.UsageError, match="out_indices"):
        vovnet.create_model("vovnet39", features_only=True, out_indices=(5,))


def test_num_classes_zero_returns_pooled_features_and_reset_classifier():
    model = vovnet.create_model("vovnet19_slim_dw", num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 512)
    assert torch.equal(model(x), model.forward_head(model.forward_features(x), pre_logits=True))
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3


def test_in_chans_and_wrong_channel_count():
    model = vovnet.create_model("vovnet19_slim_dw", in_chans=1, num_classes=2).eval()
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 2)
    with pytest.raises(ValueError, match=r"expected input of shape \[N, 1, H, W\], got \[1, 3, 32, 32\]"):
        model(torch.randn(1, 3, 32, 32))


def test_official_structure_ese_everywhere_identity_from_second_block():
    model = vovnet.create_model("vovnet57")
    for stage in model.stages:
        blocks = list(stage.blocks)
        assert all(b.ese is not None for b in blocks)
        assert blocks[0].shortcut is None
        assert all(isinstance(b.shortcut, nn.Identity) for b in blocks[1:])
    assert model.stages[0].pool is None
    assert all(s.pool.ceil_mode and s.pool.kernel_size == 3 and s.pool.stride == 2 for s in model.stages[1:])


def test_ese_last_block_and_v1_options():
    timm_like = vovnet.create_model("vovnet39", ese="last")
    assert [[b.ese is not None for b in s.blocks] for s in timm_like.stages] == [[True], [True], [False, True], [False, True]]
    v1 = vovnet.create_model("vovnet39_v1")
    assert all(b.ese is None and b.shortcut is None for s in v1.stages for b in s.blocks)


def test_ese_is_a_hard_sigmoid_gate_with_bias():
    ese = vovnet.EffectiveSE(8)
    x = torch.randn(2, 8, 5, 5)
    z = ese.fc(x.mean((2, 3), keepdim=True))
    assert ese.fc.bias is not None
    torch.testing.assert_close(ese(x), x * torch.clamp(z + 3, 0, 6) / 6)
    blog = vovnet.EffectiveSE(8, gate="relu_sigmoid")
    blog.load_state_dict(ese.state_dict())
    gates = blog(torch.ones(2, 8, 5, 5))
    assert gates.min() >= 0.5 and gates.max() < 1


def test_drop_path_only_where_a_shortcut_exists():
    model = vovnet.create_model("vovnet39", drop_path_rate=0.2)
    for stage in model.stages:
        for i, block in enumerate(stage.blocks):
            assert (block.drop_path is not None) == (i > 0)
    assert all(b.drop_path is None for s in vovnet.create_model("vovnet19", drop_path_rate=0.2).stages for b in s.blocks)
    block = list(model.stages[3].blocks)[-1]
    assert block.drop_path.p == pytest.approx(0.2)


@pytest.mark.parametrize("norm,cls", [("group", nn.GroupNorm), ("frozen_batch", FrozenBatchNorm2d), ("sync_batch", nn.SyncBatchNorm)])
def test_norm_choice(norm, cls):
    model = vovnet.create_model("vovnet19_slim_dw", norm=norm, num_classes=3)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, FrozenBatchNorm2d, nn.SyncBatchNorm))]
    assert norms and all(isinstance(m, cls) for m in norms)
    if norm != "sync_batch":  # SyncBatchNorm needs a process group in train mode; eval is enough here
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_activation_choice_and_bad_option():
    model = vovnet.create_model("vovnet19_slim_dw", act="relu6")
    assert any(isinstance(m, nn.ReLU6) for m in model.modules())
    with pytest.raises(vovnet.UsageError, match="act='tanh' is not one of"):
        vovnet.create_model("vovnet19_slim_dw", act="tanh")
    with pytest.raises(vovnet.UsageError, match="unknown model option"):
        vovnet.create_model("vovnet19_slim_dw", dropout=0.1)


def test_unknown_model_names_closest():
    with pytest.raises(vovnet.UnknownModelError, match="did you mean vovnet39"):
        vovnet.create_model("vovnet39b")


@pytest.mark.parametrize("at,frozen_parts", [(0, 0), (1, 1), (3, 3), (5, 5)])
def test_freeze_at_has_detectron2_meaning(at, frozen_parts):
    model = vovnet.create_model("vovnet19_slim_dw", num_classes=4)
    model.freeze_at(at)
    parts = [model.stem, *model.stages]
    for i, part in enumerate(parts):
        frozen = i < frozen_parts
        assert all(p.requires_grad != frozen for p in part.parameters())
        has_frozen_bn = any(isinstance(m, FrozenBatchNorm2d) for m in part.modules())
        has_bn = any(isinstance(m, nn.BatchNorm2d) for m in part.modules())
        assert has_frozen_bn == frozen and has_bn != frozen
    assert all(p.requires_grad for p in model.head.parameters())
    with pytest.raises(ValueError, match="freeze_at takes 0..5"):
        model.freeze_at(6)


def test_frozen_stats_survive_training_mode():
    model = vovnet.create_model("vovnet19_slim_dw", num_classes=4)
    model.freeze_at(2)
    before = model.stem[0].norm.running_mean.clone()
    model.train()(torch.randn(2, 3, 64, 64)).sum().backward()
    assert torch.equal(before, model.stem[0].norm.running_mean)


def test_grad_checkpointing_gives_the_same_gradients():
    """In float64, so that rounding (the memory-efficient aggregation sums its pieces' products) cannot hide a
    difference; float32 accuracy is tested in test_memory_efficient.py."""
    torch.manual_seed(0)
    model = vovnet.create_model("vovnet19_slim_dw", num_classes=3).double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    model(x).sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch.manual_seed(0)
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        assert rel_err(p.grad, plain[n]) < 1e-10, n


def test_blog_entry_points():
    for factory, name in ((vovnet.vovnet27_slim, "vovnet27_slim"), (vovnet.vovnet39, "vovnet39"), (vovnet.vovnet57, "vovnet57")):
        with torch.device("meta"):
            model = factory(num_classes=2)
        assert model.name == name and model.head.fc.out_features == 2


def test_blog_dialect_is_expressible():
    model = vovnet.create_model("vovnet27_slim", **vovnet.models.BLOG_DIALECT)
    assert all(isinstance(b.shortcut, nn.Module) and not isinstance(b.shortcut, nn.Identity) for s in model.stages for b in s.blocks)
    assert all(s.pool.padding == 1 and not s.pool.ceil_mode for s in model.stages)
    assert [m.stride for m in (model.stem[0].conv, model.stem[1].conv, model.stem[2].conv)] == [(2, 2), (1, 1), (1, 1)]


def test_osa_block_concatenates_the_input():
    block = OSABlock(16, 8, 24, 3, ese=False)
    assert block.concat.conv.in_channels == 16 + 3 * 8
    with pytest.raises(ValueError, match="identity shortcut"):
        OSABlock(16, 8, 24, 3, shortcut="identity")
    assert block(torch.randn(1, 16, 9, 9)).shape == (1, 24, 9, 9)
