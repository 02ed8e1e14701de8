"""vovnet export: ONNX checked by onnxruntime, TorchScript checked by reloading; nothing written on failure."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import randomize_norm_stats

import vovnet
from vovnet.cli import main
from vovnet.deployment import ExportError, export_onnx, target_from_checkpoint, vovnet_target


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_norm_stats(vovnet.create_model("vovnet19_slim_dw", num_classes=4))
    model.preprocessing = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(3, 64, 48))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    vovnet.save_checkpoint(model, path, class_names=["a", "b", "c", "d"])
    return path, model


def run_onnx(path, x: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})


def max_rel(got: np.ndarray, want: torch.Tensor) -> float:
    return float(np.abs(got - want.numpy()).max() / want.abs().max())


@pytest.mark.slow  # an ONNX export
def test_classifier_round_trip_with_dynamic_axes(checkpoint, tmp_path, capsys):
    path, model = checkpoint
    out = tmp_path / "model.onnx"
    assert main(["export", str(path), str(out), "--exporter", "legacy", "--dynamic-batch", "--dynamic-size", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outputs"] == {"logits": [1, 4]} and report["max_relative_error"] <= 1e-4
    x = torch.randn(3, 3, 80, 72)  # another batch and size than the export's 1 x 3 x 64 x 48
    with torch.no_grad():
        want = model(x)
    (got,) = run_onnx(out, x)
    assert max_rel(got, want) <= 1e-4
    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    meta = json.loads(props["vovnet"])
    assert meta["class_names"] == ["a", "b", "c", "d"] and meta["preprocessing"]["input_size"] == [3, 64, 48]


@pytest.mark.slow  # an ONNX export
def test_feature_maps_with_the_dynamo_exporter(checkpoint, tmp_path):
    path, model = checkpoint
    out = tmp_path / "features.onnx"
    assert main(["export", str(path), str(out), "--features", "--out-indices", "0", "2", "4"]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["stem", "stage3", "stage5"]
    x = torch.randn(1, 3, 64, 48)
    features = vovnet.load_checkpoint(path, features_only=True, out_indices=(0, 2, 4))
    with torch.no_grad():
        want = features(x)
    for got, w in zip(session.run(None, {"input": x.numpy()}), want):
        assert got.shape == tuple(w.shape) and max_rel(got, w) <= 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_export_accepts_other_sizes(checkpoint, tmp_path):
    path, model = checkpoint
    out = tmp_path / "model.pt"
    assert main(["export", str(path), str(out), "--img-size", "64"]) == 0
    extra = {"vovnet.json": ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["vovnet.json"])["outputs"] == ["logits"]
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        (got,) = scripted(x)
        assert max_rel(got.numpy(), model(x)) <= 1e-4


@pytest.mark.slow  # an ONNX export
def test_a_failed_check_writes_nothing(checkpoint, tmp_path):
    path, model = checkpoint
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous file")
    with pytest.raises(ExportError, match=r"relative error .* > 0e\+00; nothing written"):
        export_onnx(vovnet_target(model), out, exporter="legacy", tolerance=0.0)  # float rounding alone exceeds 0
    assert out.read_bytes() == b"previous file" and list(tmp_path.iterdir()) == [out]


@pytest.mark.slow  # an ONNX export
def test_detector_checkpoint_exports_its_fpn_backbone_with_features(tmp_path):
    from vovnet import create_detector, save_detector

    torch.manual_seed(0)
    detector = create_detector("fcos", "vovnet19_slim_dw", ["circle"], image_size=64).eval()
    path = tmp_path / "detector.safetensors"
    save_detector(detector, path)
    target = target_from_checkpoint(path, features=True)
    assert target.output_names == list(detector.backbone.output_shape()) and target.input_size == (3, 64, 64)
    out = tmp_path / "fpn.onnx"
    report = export_onnx(target, out, exporter="legacy")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = list(detector.backbone(x).values())
    got = run_onnx(out, x)
    assert list(report["outputs"]) == target.output_names and len(got) == len(want)
    for g, w in zip(got, want):
        assert max_rel(g, w) <= 1e-4


@pytest.mark.parametrize("args, code, message", [
    (["missing.safetensors", "out.onnx"], 1, "cannot read"),
    (["{ckpt}", "out.txt"], 2, "unknown output format"),
    (["{ckpt}", "out.pt", "--dynamic-batch"], 2, "ONNX-only"),
    (["{ckpt}", "out.onnx", "--features", "--out-indices", "7"], 2, "out_indices"),
])
def test_errors_are_one_line(checkpoint, tmp_path, capsys, monkeypatch, args, code, message):
    monkeypatch.chdir(tmp_path)
    assert main(["export", *(a.format(ckpt=checkpoint[0]) for a in args)]) == code
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("vovnet export: error:")
    assert not list(tmp_path.glob("out.*"))
