"""The VoVNet files of the camera-3D repositories (DD3D, DETR3D, PETR, BEVFormer, GeMap): every wrapper and prefix
loads, a whole detector's other keys are reported, broken files fail in one line, and every layout is written
back exactly (``vovnet convert --to``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.serialization
from conftest import randomize_norm_stats, rel_err
from timm.models.vovnet import VovNet, model_cfgs

import vovnet
from vovnet.weights.checkpoint import IgnoredWeightsWarning, convert_file, load_checkpoint, load_pretrained, write_target
from vovnet.weights.convert import IDENTITY_GATE_BIAS, TARGETS, convert_state_dict, find_body

NAME = "vovnet19_slim_dw"
# What a whole detector keeps beside its body: DD3D's FPN (P6 top block) and heads, an mmdet3d neck and head.
DETECTOR_EXTRAS = {
    "backbone.fpn_lateral3.weight": torch.zeros(4, 4, 1, 1), "backbone.fpn_lateral4.weight": torch.zeros(4, 4, 1, 1),
    "backbone.fpn_output3.weight": torch.zeros(4, 4, 3, 3), "backbone.top_block.p6.weight": torch.zeros(4, 4, 3, 3),
    "fcos2d_head.cls_logits.weight": torch.zeros(10, 4, 3, 3), "fcos3d_head.box3d_quat.0.weight": torch.zeros(4, 4, 3, 3),
}
MMDET3D_EXTRAS = {"img_neck.lateral_convs.0.conv.weight": torch.zeros(4, 4, 1, 1),
                  "pts_bbox_head.cls_branches.0.0.weight": torch.zeros(4, 4)}


@pytest.fixture(scope="module")
def body():
    torch.manual_seed(0)
    return randomize_norm_stats(vovnet.create_model(NAME, features_only=True))


def official_keys(model) -> dict[str, torch.Tensor]:
    return convert_state_dict(model.state_dict(), "vovnet", "official")


# (what the file is, how it wraps the official keys, the groups reported as ignored)
LAYOUTS = {
    "DD3D remapped (model, backbone.bottom_up., FPN and heads)": (
        lambda sd: {"model": {**{f"backbone.bottom_up.{k}": v for k, v in sd.items()}, **DETECTOR_EXTRAS}},
        {"backbone.fpn_lateral*": 2, "backbone.fpn_output*": 1, "backbone.top_block*": 1, "fcos2d_head*": 1, "fcos3d_head*": 1}),
    "GeMap _cpu (flat, backbone.bottom_up.)": (
        lambda sd: {**{f"backbone.bottom_up.{k}": v for k, v in sd.items()}, **DETECTOR_EXTRAS},
        {"backbone.fpn_lateral*": 2, "backbone.fpn_output*": 1, "backbone.top_block*": 1, "fcos2d_head*": 1, "fcos3d_head*": 1}),
    "mmdet3d (meta, state_dict, img_backbone., neck and head)": (
        lambda sd: {"meta": {"epoch": 24}, "state_dict": {**{f"img_backbone.{k}": v for k, v in sd.items()}, **MMDET3D_EXTRAS}},
        {"img_neck*": 1, "pts_bbox_head*": 1}),
    "DataParallel mmdet3d (module.img_backbone.)": (
        lambda sd: {"state_dict": {f"module.img_backbone.{k}": v for k, v in sd.items()}}, {}),
    "detectron2 FPN alone (bottom_up.)": (
        lambda sd: {**{f"bottom_up.{k}": v for k, v in sd.items()}, "fpn_lateral2.weight": torch.zeros(1)}, {"fpn_lateral*": 1}),
    "mmdet backbone (backbone.)": (lambda sd: {"state_dict": {f"backbone.{k}": v for k, v in sd.items()}}, {}),
    "VoVNetCP plain (flat official keys)": (lambda sd: dict(sd), {}),
}


@pytest.mark.parametrize("case", LAYOUTS, ids=list(LAYOUTS))
def test_every_circulating_layout_loads(case, body, tmp_path):
    make, ignored = LAYOUTS[case]
    torch.save(make(official_keys(body)), tmp_path / "file.pth")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = vovnet.create_model(NAME, features_only=True, pretrained=str(tmp_path / "file.pth")).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), body(x)))
    notes = [str(w.message) for w in caught if issubclass(w.category, IgnoredWeightsWarning)]
    assert len(notes) == (1 if ignored else 0)
    found = find_body(torch.load(tmp_path / "file.pth", weights_only=True)).ignored
    assert found == ignored
    if ignored:
        assert all(f"{group} ({n})" in notes[0] for group, n in ignored.items()), notes
    info = convert_file(tmp_path / "file.pth", tmp_path / "ours.safetensors")
    assert info["model"] == NAME and info["source"] == "official"
    assert ("ignored" in info["found"]) == bool(ignored)
    # the official layout's input (detectron2's BGR) follows the converted weights
    assert load_checkpoint(tmp_path / "ours.safetensors").preprocessing["channel_order"] == "BGR"


def test_dd3d_summary_line(body, tmp_path):
    torch.save(LAYOUTS["DD3D remapped (model, backbone.bottom_up., FPN and heads)"][0](official_keys(body)), tmp_path / "dd3d.pth")
    info = convert_file(tmp_path / "dd3d.pth", tmp_path / "ours.safetensors")
    assert info["found"].startswith("official layout, ")
    assert "inside 'model', prefix backbone.bottom_up. stripped, ignored 6 keys outside the body: backbone.fpn_lateral* (2)" in info["found"]


def test_tensors_saved_on_a_gpu_load_on_the_cpu(body, tmp_path, monkeypatch):
    with monkeypatch.context() as m:  # torch.save records each storage's device as its location tag
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save({"model": {f"backbone.bottom_up.{k}": v for k, v in official_keys(body).items()}}, tmp_path / "gpu.pth")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "gpu.pth", weights_only=True)
    model = vovnet.create_model(NAME, features_only=True, pretrained=str(tmp_path / "gpu.pth")).eval()
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert torch.equal(model.stem[0].conv.weight, body.stem[0].conv.weight)


def test_a_file_without_the_body_names_the_prefixes_it_found(tmp_path):
    torch.save({"state_dict": {"img_neck.fpn.weight": torch.zeros(1), "pts_bbox_head.fc.weight": torch.zeros(1)}}, tmp_path / "x.pth")
    with pytest.raises(vovnet.CheckpointError, match=r"x\.pth: 2 key\(s\) do not fit any known layout.*top-level names found: img_neck\., pts_bbox_head\."):
        vovnet.create_model(NAME, pretrained=str(tmp_path / "x.pth"))


def test_a_half_body_fails_naming_what_is_missing(body, tmp_path):
    half = {k: v for k, v in official_keys(body).items() if not k.startswith("stage5.")}
    torch.save({"state_dict": {f"img_backbone.{k}": v for k, v in half.items()}}, tmp_path / "half.pth")
    model = vovnet.create_model(NAME, features_only=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(vovnet.CheckpointError, match=r"missing \(first: stages\.3\.blocks\.0\."):
        load_pretrained(model, tmp_path / "half.pth")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # nothing half-loaded
    with pytest.raises(vovnet.CheckpointError, match=r"half\.pth: cannot read the architecture .* a stage is missing"):
        convert_file(tmp_path / "half.pth", tmp_path / "out.safetensors")
    # a layer short inside a stage: the shapes still read, the load names the gap
    holed = {k: v for k, v in official_keys(body).items() if not k.startswith("stage3.OSA3_1.layers.1.")}
    torch.save({"model": {f"backbone.bottom_up.{k}": v for k, v in holed.items()}}, tmp_path / "holed.pth")
    with pytest.raises(vovnet.CheckpointError, match=r"missing \(first: stages\.1\.blocks\.0\.layers\.1\.conv_dw\.weight"):
        vovnet.create_model(NAME, pretrained=str(tmp_path / "holed.pth"))
    assert not (tmp_path / "out.safetensors").exists()


# ---- writing every layout ------------------------------------------------------------------------
def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict()


@pytest.mark.parametrize("target", ["official", "detectron2", "mmdet3d", "timm"])
def test_round_trip_through_each_layout_is_bit_exact(target, body, tmp_path):
    ours = tmp_path / "ours.safetensors"
    model = randomize_norm_stats(vovnet.create_model(NAME, num_classes=0))
    vovnet.save_checkpoint(model, ours)
    info = write_target(ours, tmp_path / f"{target}.pth", target)
    layout, wrapper, prefix = TARGETS[target]
    saved = torch.load(tmp_path / f"{target}.pth", weights_only=True)
    keys = list(saved[wrapper] if wrapper else saved)
    assert all(k.startswith(prefix) for k in keys) and info["keys"] == len(keys)
    convert_file(tmp_path / f"{target}.pth", tmp_path / "back.safetensors", model_name=NAME)
    back = _state(tmp_path / "back.safetensors")
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_timm_weights_written_official_stay_exact(tmp_path):
    """timm gates the last block of a stage; the official layout gates every block: identity gates fill the gap."""
    torch.manual_seed(0)
    timm_model = randomize_norm_stats(VovNet(model_cfgs["ese_vovnet39b"], num_classes=0))
    torch.save(timm_model.state_dict(), tmp_path / "timm.pth")
    info = write_target(tmp_path / "timm.pth", tmp_path / "official.pth", "official")
    assert info["model"] == "vovnet39" and info["found"].startswith("timm layout")
    official = torch.load(tmp_path / "official.pth", weights_only=True)
    gate = official["stage4.OSA4_1.ese.fc.weight"], official["stage4.OSA4_1.ese.fc.bias"]
    assert not gate[0].any() and (gate[1] == IDENTITY_GATE_BIAS).all()
    from_timm = vovnet.create_model("vovnet39", num_classes=0, ese="last", pretrained=str(tmp_path / "timm.pth")).eval()
    from_official = vovnet.create_model("vovnet39", num_classes=0, pretrained=str(tmp_path / "official.pth")).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        reference = timm_model.forward_features(x)
        assert torch.equal(from_official.forward_features(x), from_timm.forward_features(x))
        assert rel_err(from_official.forward_features(x), reference) <= 1e-5
    # and back to timm: the identity gates go again, every tensor as timm saved it
    write_target(tmp_path / "official.pth", tmp_path / "timm_again.pth", "timm")
    again = torch.load(tmp_path / "timm_again.pth", weights_only=True)
    assert again.keys() == timm_model.state_dict().keys()
    assert all(torch.equal(again[k], v) for k, v in timm_model.state_dict().items())


def test_targets_that_cannot_express_the_network_refuse_in_one_line(tmp_path):
    v2 = randomize_norm_stats(vovnet.create_model("vovnet39", num_classes=0))
    vovnet.save_checkpoint(v2, tmp_path / "v2.safetensors")
    with pytest.raises(vovnet.CheckpointError, match=r"timm layout cannot express this network: eSE on every block .*stage 4 block 1"):
        write_target(tmp_path / "v2.safetensors", tmp_path / "timm.pth", "timm")
    blog = vovnet.create_model("vovnet27_slim", num_classes=0, act="relu6", gate="relu_sigmoid", shortcut="projection",
                               stem_strides=(2, 1, 1), pool="padded")
    vovnet.save_checkpoint(blog, tmp_path / "blog.safetensors")
    with pytest.raises(vovnet.CheckpointError, match=r"the mmdet3d layout cannot express this network: gate='relu_sigmoid'"):
        write_target(tmp_path / "blog.safetensors", tmp_path / "m.pth", "mmdet3d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blog.safetensors", "v2.safetensors"]


def test_cli_writes_an_mmdet3d_file_and_reads_it_back(body, tmp_path, capsys):
    from vovnet.cli import main

    torch.save(LAYOUTS["DD3D remapped (model, backbone.bottom_up., FPN and heads)"][0](official_keys(body)), tmp_path / "dd3d.pth")
    assert main(["convert", "--to", "mmdet3d", str(tmp_path / "dd3d.pth"), str(tmp_path / "mm.pth")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{tmp_path / 'mm.pth'}: {NAME} as mmdet3d weights") and "ignored 6 keys" in line and "\n" not in line
    assert list(torch.load(tmp_path / "mm.pth", weights_only=True)) == ["state_dict"]
    assert main(["convert", str(tmp_path / "mm.pth"), str(tmp_path / "ours.safetensors")]) == 0
    assert "prefix img_backbone. stripped" in capsys.readouterr().out
    # bad input: one line, exit 1, nothing written
    (tmp_path / "notes.txt").write_text("not weights")
    assert main(["convert", "--to", "timm", str(tmp_path / "notes.txt"), str(tmp_path / "t.pth")]) == 1
    err = capsys.readouterr().err.strip()
    assert "a text file, not a checkpoint" in err and "\n" not in err and not (tmp_path / "t.pth").exists()
    with pytest.raises(SystemExit):
        main(["convert", "--to", "onnx", str(tmp_path / "mm.pth"), str(tmp_path / "x.pth")])


# ---- the camera-3D tags --------------------------------------------------------------------------
def test_camera_3d_tags_say_what_they_are():
    from vovnet.weights.pretrained import PRETRAINED

    dd3d, fcos3d, trainval = (PRETRAINED[f"vovnet99.{n}"] for n in ("dd3d_ddad15m", "fcos3d_nuscenes", "dd3d_det_final_nuscenes_trainval"))
    assert dd3d.urls == ["https://tri-ml-public.s3.amazonaws.com/github/dd3d/pretrained/"
                         "depth_pretrained_v99-3jlw0p36-20210423_010520-model_final-remapped.pth"]
    assert not fcos3d.urls and fcos3d.files[0].page.startswith("https://drive.google.com/")
    assert "train+val" in trainval.caveats and "not valid" in trainval.caveats
    for w in (dd3d, fcos3d, trainval):
        p = w.preprocessing
        assert (p.channel_order, p.scale, p.mean, p.std) == ("BGR", 255.0, (103.53, 116.28, 123.675), (57.375, 57.12, 58.395))
        assert w.num_classes == 0 and w.layout == "official" and w.license and w.reference and w.to_dict()["caveats"]


def _small_copy(monkeypatch, tag: str, new_tag: str):
    """``tag``'s record for the small body (same files, hosts and input), so that the test converts in a moment."""
    import dataclasses

    from vovnet.weights.pretrained import PRETRAINED

    monkeypatch.setitem(PRETRAINED, new_tag, dataclasses.replace(PRETRAINED[tag], tag=new_tag))
    return PRETRAINED[new_tag]


def test_a_google_drive_tag_prints_the_way_by_hand_then_converts_the_file(body, tmp_path, monkeypatch, capsys):
    from vovnet.cli import main

    monkeypatch.setenv("VOVNET_HOME", str(tmp_path / "cache"))
    record = _small_copy(monkeypatch, "vovnet99.fcos3d_nuscenes", f"{NAME}.fcos3d_test")
    assert main(["pull", record.tag, "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot be fetched by URL; by hand: download it from https://drive.google.com/file/d/" in err
    assert f"run `vovnet pull {record.tag}` again" in err
    # the file as PETR's users have it, put where the message says
    (tmp_path / "cache").mkdir(exist_ok=True)
    mmdet3d = {"meta": {"epoch": 12}, "state_dict": {**{f"img_backbone.{k}": v for k, v in official_keys(body).items()}, **MMDET3D_EXTRAS}}
    torch.save(mmdet3d, tmp_path / "cache" / record.file)
    assert main(["pull", record.tag, "--quiet"]) == 0
    model = vovnet.create_model(NAME, features_only=True, pretrained=record.tag).eval()
    assert model.preprocessing["std"] == (57.375, 57.12, 58.395) and model.preprocessing["channel_order"] == "BGR"
    x = torch.randn(1, 2, 3, 64, 96)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), body(x)))


def test_the_dd3d_tag_reads_the_whole_dd3d_file(body, tmp_path, monkeypatch):
    monkeypatch.setenv("VOVNET_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("VOVNET_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setenv("VOVNET_OFFLINE", "1")
    record = _small_copy(monkeypatch, "vovnet99.dd3d_ddad15m", f"{NAME}.dd3d_test")
    (tmp_path / "mirror").mkdir()
    torch.save(LAYOUTS["DD3D remapped (model, backbone.bottom_up., FPN and heads)"][0](official_keys(body)), tmp_path / "mirror" / record.file)
    model = vovnet.create_model(NAME, features_only=True, pretrained=record.tag).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), body(x)))
    assert model.preprocessing["mean"] == (103.53, 116.28, 123.675)
