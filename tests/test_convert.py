"""Parity with the three layouts in use: timm's classes, an independent official-layout forward, the blog's code."""

from pathlib import Path

import pytest
import torch
from conftest import randomize_norm_stats, rel_err
from reference.blog import blog_model
from reference.official import official_features
from timm.models.vovnet import VovNet, model_cfgs

import vovnet
from vovnet.weights.checkpoint import convert_file, load_checkpoint
from vovnet.weights.convert import LAYOUTS, convert_state_dict, detect_layout, infer_config, match_model_name

TIMM = {
    "ese_vovnet19b_slim_dw": "vovnet19_slim_dw",
    "ese_vovnet19b_dw": "vovnet19_dw",
    "ese_vovnet19b_slim": "vovnet19_slim",
    "ese_vovnet19b": "vovnet19",
    "ese_vovnet39b": "vovnet39",
    "ese_vovnet57b": "vovnet57",
    "ese_vovnet99b": "vovnet99",
    "vovnet39a": "vovnet39_v1",
    "vovnet57a": "vovnet57_v1",
}


# The deepest variants use the same key templates with more blocks a stage.
DEEP = {"ese_vovnet57b", "ese_vovnet99b", "vovnet57a"}


@pytest.mark.parametrize("timm_name", [pytest.param(n, marks=pytest.mark.slow) if n in DEEP else n for n in TIMM])
def test_timm_parity(timm_name, tmp_path):
    torch.manual_seed(0)
    reference = randomize_norm_stats(VovNet(model_cfgs[timm_name], num_classes=10))
    src = tmp_path / "timm.pth"
    torch.save(reference.state_dict(), src)
    info = convert_file(src, tmp_path / "ours.safetensors", "timm")
    assert info["model"] == TIMM[timm_name] and info["num_classes"] == 10
    ours = load_checkpoint(tmp_path / "ours.safetensors")
    # timm places eSE on the last block of a stage only; the checkpoint records that.
    multi_block = any(b > 1 for b in ours.config.blocks_per_stage)
    assert ours.config.ese == ("none" if timm_name.endswith("a") else "last" if multi_block else ours.config.ese)
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        assert rel_err(ours(x), reference(x)) <= 1e-5


def test_timm_round_trip_is_lossless():
    model = vovnet.create_model("vovnet39", ese="last", num_classes=5)
    timm_sd = convert_state_dict(model.state_dict(), "vovnet", "timm")
    reference = VovNet(model_cfgs["ese_vovnet39b"], num_classes=5)
    reference.load_state_dict(timm_sd, strict=True)
    back = convert_state_dict(timm_sd, "timm", "vovnet")
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    assert len(convert_state_dict(VovNet(model_cfgs["ese_vovnet39b"]).state_dict(), "timm")) == len(timm_sd)


@pytest.mark.parametrize("name", ["vovnet19_slim_dw", "vovnet19_dw", "vovnet39"])
def test_official_layout_parity(name):
    """Ours -> official keys -> an independent functional forward gives our features."""
    torch.manual_seed(0)
    model = randomize_norm_stats(vovnet.create_model(name, features_only=True))
    official = convert_state_dict(model.state_dict(), "vovnet", "official")
    assert "stem.stem_1/conv.weight" in official
    assert ("stem.stem_2/dw_conv3x3.weight" in official) == name.endswith("_dw")
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        for ours, ref in zip(model(x), official_features(official, x)):
            assert rel_err(ours, ref) <= 1e-5


def test_detectron2_checkpoint_converts_backbone_only(tmp_path):
    torch.manual_seed(0)
    model = randomize_norm_stats(vovnet.create_model("vovnet19_slim_dw", features_only=True))
    official = convert_state_dict(model.state_dict(), "vovnet", "official")
    wrapped = {"model": {**{f"backbone.bottom_up.{k}": v for k, v in official.items()},
                         "backbone.fpn_lateral3.weight": torch.zeros(128, 256, 1, 1),
                         "proposal_generator.fcos_head.cls_logits.weight": torch.zeros(80, 128, 3, 3)},
               "iteration": 90000}
    torch.save(wrapped, tmp_path / "centermask2.pth")
    info = convert_file(tmp_path / "centermask2.pth", tmp_path / "backbone.safetensors", "official")
    assert info["model"] == "vovnet19_slim_dw" and info["num_classes"] == 0
    # a backbone-only checkpoint loads into features_only models and into classifiers with a fresh head
    feats = load_checkpoint(tmp_path / "backbone.safetensors", features_only=True)
    clf = vovnet.create_model("vovnet19_slim_dw", num_classes=10, pretrained=str(tmp_path / "backbone.safetensors")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(feats(x), model(x)):
            assert torch.equal(a, b)
        assert clf(x).shape == (1, 10)
        assert torch.equal(clf.forward_features(x), model(x)[-1])
    # detectron2 expects BGR 0..255 input; the checkpoint says so
    assert feats.preprocessing["mean"] == (103.53, 116.28, 123.675)


def test_official_v1_imagenet_file_with_classifier_and_dataparallel_prefix(tmp_path):
    torch.manual_seed(0)
    model = randomize_norm_stats(vovnet.create_model("vovnet39_v1"))
    official = convert_state_dict(model.state_dict(), "vovnet", "official")
    assert "classifier.weight" in official
    torch.save({"state_dict": {f"module.{k}": v for k, v in official.items()}}, tmp_path / "v1.pth")
    info = convert_file(tmp_path / "v1.pth", tmp_path / "v1.safetensors", "official")
    assert info["model"] == "vovnet39_v1" and info["num_classes"] == 1000
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(tmp_path / "v1.safetensors")(x), model(x))


@pytest.mark.parametrize("name", ["vovnet27_slim", "vovnet39", pytest.param("vovnet57", marks=pytest.mark.slow)])
def test_blog_weights_give_the_blog_outputs(name, tmp_path):
    torch.manual_seed(0)
    blog = randomize_norm_stats(blog_model(name, num_classes=2))
    torch.save(blog.state_dict(), tmp_path / "blog.pth")
    info = convert_file(tmp_path / "blog.pth", tmp_path / "ours.safetensors", "blog")
    assert info["model"] == name
    ours = load_checkpoint(tmp_path / "ours.safetensors")
    assert ours.config.shortcut == "projection" and ours.config.gate == "relu_sigmoid" and ours.config.act == "relu6"
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert rel_err(ours(x), blog(x)) <= 1e-5
    back = convert_state_dict(ours.state_dict(), "vovnet", "blog")
    assert back.keys() == blog.state_dict().keys()


def test_detect_layout():
    model = vovnet.create_model("vovnet19_slim_dw", num_classes=3)
    sd = model.state_dict()
    for layout in ("vovnet", "timm", "official"):
        assert detect_layout(convert_state_dict(sd, "vovnet", layout)) == layout
    assert detect_layout(blog_model("vovnet27_slim").state_dict()) == "blog"


def test_infer_config_and_model_name_from_shapes():
    for name in vovnet.list_models(task="classify"):
        with torch.device("meta"):
            sd = vovnet.create_model(name).state_dict()
        config, num_classes, in_chans = infer_config(sd)
        assert match_model_name(config) == name and num_classes == 1000 and in_chans == 3
        assert config == vovnet.MODEL_SPECS[name].config


def test_every_layout_template_round_trips():
    sd = vovnet.create_model("vovnet19_slim_dw", num_classes=3).state_dict()
    for layout in ("timm", "official"):
        there = convert_state_dict(sd, "vovnet", layout)
        assert convert_state_dict(there, layout, "vovnet").keys() == sd.keys()
    assert set(LAYOUTS) == {"vovnet", "timm", "official", "blog"}


def test_wrong_source_names_keys_and_expected_layout(tmp_path):
    torch.save(VovNet(model_cfgs["ese_vovnet19b_slim_dw"]).state_dict(), tmp_path / "timm.pth")
    with pytest.raises(vovnet.CheckpointError, match=r"do not fit the official layout, first: stem\.0\.conv\.weight.*expected keys like stage2\.OSA2_1"):
        convert_file(tmp_path / "timm.pth", tmp_path / "out.safetensors", "official")
    assert not (tmp_path / "out.safetensors").exists()


def test_model_flag_checked_against_shapes(tmp_path):
    torch.save(VovNet(model_cfgs["ese_vovnet19b_slim_dw"]).state_dict(), tmp_path / "timm.pth")
    with pytest.raises(vovnet.CheckpointError, match="does not hold a vovnet39: stem_chs"):
        convert_file(tmp_path / "timm.pth", tmp_path / "out.safetensors", "timm", "vovnet39")


def test_failed_conversion_keeps_existing_destination(tmp_path):
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"previous")
    (tmp_path / "broken.pth").write_bytes(b"\x80\x02garbage")
    with pytest.raises(vovnet.CheckpointError):
        convert_file(tmp_path / "broken.pth", dst, "timm")
    assert dst.read_bytes() == b"previous"
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["broken.pth", "out.safetensors"]


def test_foreign_safetensors_file_converts(tmp_path):
    from safetensors.torch import save_file

    reference = randomize_norm_stats(VovNet(model_cfgs["ese_vovnet19b_dw"], num_classes=3))
    save_file(reference.state_dict(), tmp_path / "model.safetensors")  # a hub-style file: no vovnet metadata
    convert_file(tmp_path / "model.safetensors", tmp_path / "ours.safetensors", "timm")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(load_checkpoint(tmp_path / "ours.safetensors")(x), reference(x)) <= 1e-5


def test_unsupported_timm_experiment_names_its_keys(tmp_path):
    # timm's eca_vovnet39b swaps eSE for ECA: not a published VoVNet, and refused with the offending key named
    torch.save(VovNet(model_cfgs["eca_vovnet39b"]).state_dict(), tmp_path / "eca.pth")
    with pytest.raises(vovnet.CheckpointError, match=r"do not fit the timm layout, first: stages\.0\.blocks\.0\.attn\.conv\.weight"):
        convert_file(tmp_path / "eca.pth", tmp_path / "out.safetensors", "timm")
