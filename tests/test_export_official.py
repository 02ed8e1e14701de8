"""vovnet export of converted official CenterMask2 models (the ``centermask2`` dialect): detectron2's resize, the
candidate selection, the top-50 cut and the RoI level assignment are sized from the traced image shape, so one
ONNX file detects in images of any size as the eval model does; refused (exit 1, nothing written) otherwise."""

import io
import json

import onnxruntime as ort
import pytest
import torch
from reference.centermask2 import HEAD
from test_centermask_official import official_checkpoint
from torch import nn

import vovnet
from vovnet import load_detector, save_detector
from vovnet.cli import export_cmd, main
from vovnet.deployment.detection import Agreement, compare_detections, export_detector
from vovnet.deployment.export import antialiased_resize_exportable, quiet_export
from vovnet.models.detection import poolers
from vovnet.models.detection.poolers import assign_levels_by_area
from vovnet.models.detection.transform import DetectorTransform, detectron2_size, detectron2_size_tensor
from vovnet.weights.detector_checkpoint import detector_metadata
from vovnet.weights.official_detectors import convert_centermask2

OUTPUTS = ["boxes", "labels", "scores", "masks", "mask_scores"]
FULL_SIZE = (400, 667)  # the full-heads model's test size in these tests (short, long)

# (h, w) whose detectron2 size ends in .5 before rounding (16 x 17 -> 637.5), or lands at .5 only in float32
# arithmetic so that float64 is needed to round as Python does (18 x 32 -> 562.4999..., float32 563), for
# each (short, long) of the official configs.
AWKWARD = {
    (600, 1000): [(16, 17), (16, 19), (18, 32), (32, 18), (11, 80), (17, 80), (21, 240), (36, 64), (240, 320), (288, 216)],
    (800, 1333): [(11, 22), (11, 62), (15, 86), (18, 124), (124, 18), (60, 80), (81, 80)],
}


class _Resize(nn.Module):
    def __init__(self, short: int, long: int):
        super().__init__()
        self.transform = DetectorTransform(short, long, input_format="bgr255", resize_rule="detectron2").eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.transform.resize(image)[0]


@pytest.mark.parametrize("short, long", list(AWKWARD))
def test_the_exported_resize_has_detectron2s_size_for_any_image(short, long):
    for h, w in AWKWARD[(short, long)]:
        assert tuple(int(s) for s in detectron2_size_tensor(h, w, short, long)) == detectron2_size(h, w, short, long)
    assert detectron2_size(18, 32, 600, 1000) == (562, 1000) and detectron2_size(16, 17, 600, 1000) == (600, 638)
    resize = _Resize(short, long)
    buffer = io.BytesIO()
    with quiet_export(), torch.no_grad(), antialiased_resize_exportable(17):
        torch.onnx.export(resize, (torch.rand(3, 40, 50),), buffer, dynamo=False, input_names=["image"], output_names=["resized"],
                          dynamic_axes={"image": {1: "h", 2: "w"}, "resized": {1: "H", 2: "W"}}, opset_version=17)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    for h, w in AWKWARD[(short, long)]:
        image = torch.rand(3, h, w, generator=g)
        got = torch.from_numpy(session.run(None, {"image": image.numpy()})[0])
        want = resize(image)
        assert tuple(got.shape[-2:]) == tuple(want.shape[-2:]) == detectron2_size(h, w, short, long), (h, w)
        assert (got - want).abs().max() <= 1e-5


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Converted generated official checkpoints: Lite V-19-slim-dw (600/1000) and the full heads on the same
    backbone, their box distances scaled up so that the detections' RoIs are pooled from every level (with
    the generated scales all of them go to P3, and a frozen image area would go unnoticed). The full model
    is saved again at a test size of 400/667 (the converter's 800/1333 halved; as long a long side relative
    to the short one, so the same images have their long side capped): what the export sizes from the
    traced image does not depend on the scale, and at 800 px the test takes four times as long."""
    tmp = tmp_path_factory.mktemp("official")
    paths = {}
    for lite in (True, False):
        sd = official_checkpoint("vovnet19_slim_dw", lite)
        for key in [k for k in sd if k.startswith(HEAD + "scales.")]:
            sd[key] = sd[key] * 16
        torch.save({"model": sd}, tmp / f"{lite}.pth")
        convert_centermask2(tmp / f"{lite}.pth", tmp / f"{lite}.safetensors")
        paths[lite] = tmp / f"{lite}.safetensors"
    model, meta = load_detector(paths[False], image_size=FULL_SIZE), vovnet.read_checkpoint(paths[False])[1]
    save_detector(model, paths[False], **{k: v for k, v in meta.items() if k not in detector_metadata(model)})
    return paths


@pytest.mark.slow  # an ONNX export of a whole detector (~20 s)
@pytest.mark.parametrize("lite", [True, pytest.param(False, id="full")])
def test_a_converted_official_model_exports_whole(lite, converted, tmp_path, capsys):
    model = vovnet.load_detector(converted[lite])
    assert model.dialect.fcos == "centermask2" and model.transform.test_size == (600 if lite else FULL_SIZE[0])
    out = tmp_path / "cm2.onnx"
    assert main(["export", str(converted[lite]), str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outputs"] == OUTPUTS
    # the check sizes resize to 600 x 800 and 800 x 600 (Lite; 400 x 533, 533 x 400 full): each a dynamic size in one graph
    assert [tuple(c["image"]) for c in report["checks"]] == [(3, 240, 320), (3, 288, 216)]
    for check in report["checks"]:
        assert check["count"] > 10 and check["unmatched"] == 0 and check["mask_iou"] >= 0.99
        assert check["box_error"] <= 1e-4 and check["score_error"] <= 1e-4 and check["mask_score_error"] <= 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    # sizes the export did not see: the long side capped (a smaller scale and image area for the RoI levels), tiny
    for h, w in [(150, 260), (30, 41)]:
        image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.no_grad():
            want = model([image])[0]
        got = dict(zip(OUTPUTS, (torch.from_numpy(o) for o in session.run(None, {"image": image.numpy()}))))
        agreement = compare_detections(want, got)
        assert agreement.ok() and agreement.mask_score_error is not None, str(agreement)
        assert 0 < len(got["scores"]) <= 50 and got["masks"].shape[-2:] == (h, w)
        assert len(_roi_levels(model, image)) > 1  # the image area decides between levels


def _roi_levels(model, image: torch.Tensor) -> set[int]:
    """The pyramid levels the model pools its detections' masks from, for one image."""
    with torch.no_grad():
        batch, _ = model.transform([image])
        boxes = model.detect(batch, model.features(batch.tensors))[0]["boxes"]
    h, w = batch.image_sizes[0]
    return set(assign_levels_by_area(boxes, torch.tensor(float(h * w))).tolist())


@pytest.mark.slow  # an ONNX export of a whole detector
def test_an_official_export_that_disagrees_is_refused(converted, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Agreement, "ok", lambda self, *args: False)
    out = tmp_path / "cm2.onnx"
    assert main(["export", str(converted[True]), str(out)]) == 1
    assert "differs from PyTorch" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_mask_scores_count_in_the_agreement():
    want = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.9]),
            "mask_scores": torch.tensor([0.5])}
    assert compare_detections(want, dict(want)).ok()
    off = compare_detections(want, dict(want, mask_scores=torch.tensor([0.5001])))
    assert off.mask_score_error == pytest.approx(2e-4, rel=1e-3) and not off.ok()
    assert "mask score error 2.0e-04" in str(off)
    assert compare_detections({k: v for k, v in want.items() if k != "mask_scores"}, want).mask_score_error is None


def test_the_roi_pooler_pools_branch_free_while_exporting_with_the_same_result(monkeypatch):
    g = torch.Generator().manual_seed(0)
    features = {name: torch.randn(2, 4, 128 // s, 160 // s, generator=g) for name, s in (("p3", 8), ("p4", 16), ("p5", 32))}
    pool = poolers.AreaRuleRoIAlign(list(features), [8, 16, 32], output_size=5, sampling_ratio=0, aligned=True)
    boxes = [torch.tensor([[0.0, 0, 150, 120], [10, 10, 40, 30], [5, 7, 90, 60]]), torch.tensor([[3.0, 4, 70, 90]])]
    sizes = [(120, 150), (100, 160)]
    want = pool(features, boxes, sizes)
    levels = poolers.assign_levels_by_area(torch.cat(boxes), torch.tensor([18000.0] * 3 + [16000.0]))
    assert set(levels.tolist()) == {3, 4, 5}  # every level is used
    monkeypatch.setattr(poolers, "exporting", lambda: True)
    assert torch.equal(pool(features, boxes, sizes), want)


@pytest.mark.slow  # an ONNX export (small images)
def test_an_official_export_with_no_detections(converted, tmp_path):
    """Nothing passes the score threshold: no candidates, no boxes for NMS, a top-50 cut of k = 0."""
    model = vovnet.load_detector(converted[True], image_size=64)
    model.score_thresh = 0.9999
    report = export_detector(model, tmp_path / "none.onnx")
    assert [c["count"] for c in report["checks"]] == [0, 0] and report["outputs"] == OUTPUTS
    got = ort.InferenceSession(str(tmp_path / "none.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": torch.rand(3, 50, 70).numpy()})
    assert [o.shape for o in got] == [(0, 4), (0,), (0,), (0, 1, 50, 70), (0,)]


def test_the_export_line_names_the_mask_score_error_where_there_is_one():
    check = {"image": [3, 240, 320], "count": 12, "box_error": 1e-6, "score_error": 2e-6, "mask_iou": 0.9995}
    assert export_cmd._check_line(check) == "240x320: 12 detections, box error 1.0e-06, score error 2.0e-06, mask IoU 0.9995"
    assert export_cmd._check_line({**check, "mask_score_error": 3e-5}).endswith("mask IoU 0.9995, mask score error 3.0e-05")
