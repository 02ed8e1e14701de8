"""vovnet export of whole detectors and segmenters: one image of any size in, the eval model's detections (or
logits) out of onnxruntime, checked at two sizes before anything is written; refused (exit 1, nothing written)
otherwise."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import randomize_norm_stats, spread_detector_heads
from torch import nn

from vovnet import create_detector, create_segmenter, save_detector, save_segmenter
from vovnet.cli import main
from vovnet.deployment.detection import Agreement, check_images, compare_detections, export_detector
from vovnet.deployment.export import ExportError, relative_error
from vovnet.models.segmentation.resize import resize_matrix, resize_short_side

CLASSES = ["circle", "triangle"]


def _detector(arch: str) -> nn.Module:
    torch.manual_seed(0)
    model = create_detector(arch, "vovnet19_slim_dw", CLASSES, image_size=96, score_thresh=0.0)
    randomize_norm_stats(model)
    return spread_detector_heads(model).eval()


def _run(path, image: torch.Tensor) -> dict:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, (torch.from_numpy(o) for o in session.run(None, {"image": image.numpy()}))))


@pytest.mark.slow  # ONNX exports
@pytest.mark.parametrize("arch", ["centermask", "fcos"])
def test_cli_exports_the_whole_detector_checked_at_two_sizes(arch, tmp_path, capsys):
    model = _detector(arch)
    checkpoint = tmp_path / "detector.safetensors"
    save_detector(model, checkpoint)
    out = tmp_path / "detector.onnx"
    assert main(["export", str(checkpoint), str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    names = ["boxes", "labels", "scores", "masks"] if arch == "centermask" else ["boxes", "labels", "scores"]
    assert report["outputs"] == names and len(report["checks"]) == 2
    assert {tuple(c["image"]) for c in report["checks"]} == {(3, 240, 320), (3, 288, 216)}
    assert all(c["count"] > 10 and c["unmatched"] == 0 for c in report["checks"])
    # a third size, not checked by the export, and an image the detector resizes down
    image = torch.rand(3, 150, 260, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model([image])[0]
    got = _run(out, image)
    assert list(got) == names and got["labels"].dtype == torch.int64
    agreement = compare_detections(want, got)
    assert agreement.ok(), str(agreement)
    if arch == "centermask":
        assert got["masks"].shape == (len(want["boxes"]), 1, 150, 260)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["retinanet", "faster_rcnn", "mask_rcnn_sag"])
def test_the_other_detectors_export_whole(arch, tmp_path):
    report = export_detector(_detector(arch), tmp_path / "d.onnx")
    assert all(c["count"] > 10 and c["unmatched"] == 0 for c in report["checks"])
    assert ("masks" in report["outputs"]) == (arch == "mask_rcnn_sag")


@pytest.mark.slow  # ONNX exports
def test_an_export_that_disagrees_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    model = _detector("fcos")
    out = tmp_path / "d.onnx"
    out.write_bytes(b"previous file")
    with pytest.raises(ExportError, match=r"differs from PyTorch .* nothing written"):
        export_detector(model, out, tolerance=0.0)  # float rounding alone exceeds 0
    assert out.read_bytes() == b"previous file" and list(tmp_path.iterdir()) == [out]

    checkpoint = tmp_path / "fcos.safetensors"
    save_detector(model, checkpoint)
    monkeypatch.setattr(Agreement, "ok", lambda self, *args: False)
    assert main(["export", str(checkpoint), str(tmp_path / "new.onnx")]) == 1
    assert not (tmp_path / "new.onnx").exists()


@pytest.mark.slow  # an ONNX export
def test_features_keeps_the_backbone_export_and_dense_options_are_refused(tmp_path, capsys):
    model = _detector("fcos")
    checkpoint = tmp_path / "fcos.safetensors"
    save_detector(model, checkpoint)
    assert main(["export", str(checkpoint), str(tmp_path / "fpn.onnx"), "--features", "--exporter", "legacy", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["outputs"]) == list(model.backbone.output_shape())
    assert main(["export", str(checkpoint), str(tmp_path / "d.onnx"), "--dynamic-batch"]) == 2
    assert "dynamic_batch" in capsys.readouterr().err
    assert main(["export", str(checkpoint), str(tmp_path / "d.pt")]) == 2


def test_check_images_have_the_promised_sizes():
    images = check_images()
    assert [tuple(i.shape) for i in images] == [(3, 240, 320), (3, 288, 216)]
    assert all(0 <= i.min() and i.max() <= 1 and np.isfinite(i.numpy()).all() for i in images)


# ---- segmenters ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, refine_radius", [("fpn_semantic", 3), pytest.param("deeplabv3plus", 0, marks=pytest.mark.slow)])
def test_cli_exports_the_whole_segmenter(arch, refine_radius, tmp_path, capsys):
    torch.manual_seed(0)
    model = create_segmenter(arch, "vovnet19_slim_dw", ["background", *CLASSES], input_size=64, refine_radius=refine_radius)
    randomize_norm_stats(model)
    checkpoint = tmp_path / "segmenter.safetensors"
    save_segmenter(model, checkpoint)
    out = tmp_path / "segmenter.onnx"
    assert main(["export", str(checkpoint), str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outputs"] == ["logits"] and all(c["relative_error"] <= 1e-4 for c in report["checks"])
    images = torch.rand(2, 3, 57, 131, generator=torch.Generator().manual_seed(2))  # a batch, another size, enlarged
    with torch.no_grad():
        want = model.eval()(images)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    assert got.shape == want.shape and relative_error(got, want) <= 1e-4


@pytest.mark.parametrize("h, w, short", [(96, 128, 64), (64, 80, 64), (50, 70, 64), (37, 91, 20)])
def test_resize_matrices_are_torchs_resize(h, w, short):
    x = torch.rand(1, 3, h, w)
    scale = short / min(h, w)
    want = x if scale == 1 else torch.nn.functional.interpolate(
        x, scale_factor=scale, mode="bilinear", align_corners=False, antialias=scale < 1)
    got = resize_short_side(x, short)
    assert got.shape == want.shape and (got - want).abs().max() < 1e-5
    sized = resize_matrix(h, h // 3, h / (h // 3)) @ x @ resize_matrix(w, w // 3, w / (w // 3)).T
    want = torch.nn.functional.interpolate(x, size=(h // 3, w // 3), mode="bilinear", antialias=True)
    assert (sized - want).abs().max() < 1e-5

