import json
import pickle
import struct

import numpy as np
import pytest
import torch
from conftest import randomize_norm_stats

import vovnet
from vovnet.weights.checkpoint import FORMAT, file_kind, load_weights, read_checkpoint


def test_round_trip_rebuilds_the_exact_network(tmp_path):
    torch.manual_seed(0)
    model = randomize_norm_stats(vovnet.create_model("vovnet39", ese="last", norm="batch", act="relu6", num_classes=3, drop_rate=0.1))
    path = vovnet.save_checkpoint(model, tmp_path / "m.safetensors", class_names=["cat", "dog", "eel"])
    loaded = vovnet.load_checkpoint(path)
    assert loaded.config == model.config and loaded.name == "vovnet39" and loaded.class_names == ["cat", "dog", "eel"]
    assert not loaded.training
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    tensors, meta = read_checkpoint(path)
    assert meta["format"] == FORMAT and meta["config"]["ese"] == "last" and meta["num_classes"] == 3
    assert meta["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert set(tensors) == set(model.state_dict())


def test_file_is_plain_safetensors_with_json_metadata(tmp_path):
    path = vovnet.save_checkpoint(vovnet.create_model("vovnet19_slim_dw", num_classes=2), tmp_path / "m.safetensors")
    data = path.read_bytes()
    header = json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])
    meta = json.loads(header["__metadata__"]["vovnet"])
    assert meta["model"] == "vovnet19_slim_dw" and meta["config"]["depthwise"] is True


def test_group_norm_and_in_chans_survive_round_trip(tmp_path):
    model = vovnet.create_model("vovnet19_slim_dw", norm="group", in_chans=1, num_classes=4).eval()
    loaded = vovnet.load_checkpoint(vovnet.save_checkpoint(model, tmp_path / "g.safetensors"))
    x = torch.randn(1, 1, 48, 48)
    assert torch.equal(loaded(x), model(x))


def test_classifier_checkpoint_loads_into_features_only(tmp_path):
    model = randomize_norm_stats(vovnet.create_model("vovnet19_slim_dw", num_classes=5))
    path = vovnet.save_checkpoint(model, tmp_path / "m.safetensors")
    feats = vovnet.load_checkpoint(path, features_only=True, out_indices=(2, 3))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model.forward_intermediates(x, (2, 3))
        for a, b in zip(feats(x), ref):
            assert torch.equal(a, b)


def test_pretrained_with_other_head_size_keeps_backbone(tmp_path):
    model = randomize_norm_stats(vovnet.create_model("vovnet19_slim_dw", num_classes=5))
    path = vovnet.save_checkpoint(model, tmp_path / "m.safetensors", class_names=list("abcde"))
    same = vovnet.create_model("vovnet19_slim_dw", num_classes=5, pretrained=str(path))
    assert torch.equal(same.head.fc.weight, model.head.fc.weight) and same.class_names == list("abcde")
    new = vovnet.create_model("vovnet19_slim_dw", num_classes=7, pretrained=str(path))
    assert new.head.fc.out_features == 7 and new.class_names is None
    assert torch.equal(new.stages[3].blocks[0].concat.conv.weight, model.stages[3].blocks[0].concat.conv.weight)


def test_pretrained_from_foreign_layout_is_detected(tmp_path):
    model = randomize_norm_stats(vovnet.create_model("vovnet19_slim_dw", num_classes=0))
    torch.save(vovnet.convert_state_dict(model.state_dict(), "vovnet", "timm"), tmp_path / "timm.pth")
    loaded = vovnet.create_model("vovnet19_slim_dw", num_classes=0, pretrained=str(tmp_path / "timm.pth")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
    model = vovnet.create_model("vovnet19_slim_dw", num_classes=5)
    sd = model.state_dict()
    del sd["stem.0.conv.weight"]
    sd["stages.0.blocks.0.extra.weight"] = torch.zeros(1)
    sd["head.fc.weight"] = torch.zeros(5, 3)
    with pytest.raises(vovnet.CheckpointError) as err:
        load_weights(vovnet.create_model("vovnet19_slim_dw", num_classes=5), sd, source="x.safetensors")
    msg = str(err.value)
    assert "1 missing (first: stem.0.conv.weight)" in msg
    assert "1 unexpected (first: stages.0.blocks.0.extra.weight)" in msg
    assert "mis-shaped (first: head.fc.weight (5, 3) vs (5, 512))" in msg
    assert "Expected the vovnet layout, e.g. stem.0.conv.weight" in msg and "\n" not in msg


def test_wrong_variant_checkpoint_is_refused(tmp_path):
    path = vovnet.save_checkpoint(vovnet.create_model("vovnet19_slim_dw", num_classes=2), tmp_path / "m.safetensors")
    with pytest.raises(vovnet.CheckpointError, match="does not fit vovnet39"):
        vovnet.create_model("vovnet39", num_classes=2, pretrained=str(path))


def test_truncated_file_is_a_one_line_error(tmp_path):
    path = vovnet.save_checkpoint(vovnet.create_model("vovnet19_slim_dw", num_classes=2), tmp_path / "m.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(vovnet.CheckpointError, match=r"cut.safetensors: truncated or corrupt safetensors file") as err:
        vovnet.load_checkpoint(tmp_path / "cut.safetensors")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content, kind", [
    (b"", "an empty file"), (b"hello, not a checkpoint", "a text file"),
    (b"\x00" * 64, "a file of unknown kind (it starts with 00 00 00 00 00 00 00 00)"),
])
def test_not_a_checkpoint(tmp_path, content, kind):
    (tmp_path / "x.pth").write_bytes(content)
    with pytest.raises(vovnet.CheckpointError) as err:
        vovnet.load_checkpoint(tmp_path / "x.pth")
    assert str(err.value) == f"{tmp_path / 'x.pth'}: {kind}, not a checkpoint"


def test_file_kind_names_what_a_file_seems_to_be(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "a.jpg")
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    assert file_kind((tmp_path / "a.jpg").read_bytes()[:64]) == "a JPEG image"
    assert file_kind((tmp_path / "a.png").read_bytes()[:64]) == "a PNG image"
    assert file_kind(b"<!DOCTYPE html><html>403</html>") == "a web page (HTML)"
    assert file_kind(b'{"images": []}') == "a JSON file"
    assert file_kind("größe: 3\n".encode()) == "a text file"
    torch.save({"w": torch.zeros(2)}, tmp_path / "w.pth")
    vovnet.save_checkpoint(vovnet.create_model("vovnet19_slim_dw", num_classes=2), tmp_path / "m.safetensors")
    assert file_kind((tmp_path / "w.pth").read_bytes()[:64]) is None
    assert file_kind((tmp_path / "m.safetensors").read_bytes()[:64]) is None
    assert file_kind(pickle.dumps({"w": 1}, protocol=2)[:64]) is None


def test_torchscript_and_pickled_objects_are_named(tmp_path):
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), tmp_path / "ts.pt")
    with pytest.raises(vovnet.CheckpointError) as err:
        read_checkpoint(tmp_path / "ts.pt")
    assert str(err.value) == f"{tmp_path / 'ts.pt'}: a TorchScript model, not a checkpoint"
    torch.save({"step": np.int64(3)}, tmp_path / "np.pth")
    with pytest.raises(vovnet.CheckpointError, match=r"np.pth: not a readable checkpoint .*: it pickles Python objects \(numpy") as err:
        read_checkpoint(tmp_path / "np.pth")
    assert "\n" not in str(err.value)


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_are_never_executed(tmp_path, capsys):
    torch.save({"model": _Exploit()}, tmp_path / "evil.pth")
    with pytest.raises(vovnet.CheckpointError, match="evil.pth: not a readable checkpoint"):
        read_checkpoint(tmp_path / "evil.pth")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(vovnet.CheckpointError):
        read_checkpoint(tmp_path / "evil.pkl")
    assert "pwned" not in capsys.readouterr().out


def test_missing_file_and_foreign_file_messages(tmp_path):
    with pytest.raises(vovnet.CheckpointError, match="nope.safetensors: cannot read"):
        vovnet.load_checkpoint(tmp_path / "nope.safetensors")
    torch.save(vovnet.create_model("vovnet19_slim_dw").state_dict(), tmp_path / "plain.pth")
    with pytest.raises(vovnet.CheckpointError, match="no vovnet metadata; convert it first"):
        vovnet.load_checkpoint(tmp_path / "plain.pth")
