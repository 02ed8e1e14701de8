"""vovnet bench --task detect|segment: the plan of subjects, the JSON it prints, the stage clock, one-line errors.
Tiny settings (128 px, few detections, one iteration); the figures themselves are in benchmarks/RESULTS.md."""

import json

import pytest
import torch

from vovnet.cli import main
from vovnet.deployment.dense_bench import DenseBenchRequest, plan_dense_subjects
from vovnet.deployment.dense_steps import StageClock, bench_image, prepare_detector, prepare_segmenter

TINY = ["--model", "vovnet19_slim_dw", "--img-size", "128", "--warmup", "0", "--iters", "1", "--threads", "1"]


def test_plan_adds_our_eager_model_when_deployed_and_torchvision_when_asked():
    labels = lambda **kw: [s.label for s in plan_dense_subjects(DenseBenchRequest(**kw))]  # noqa: E731
    assert labels(task="detect", arch="centermask", model="vovnet39") == ["ours centermask vovnet39 fp32 eager"]
    assert labels(task="detect", arch="centermask", model="vovnet39", deploy=True, vs_torchvision=True) == [
        "ours centermask vovnet39 fp32 deploy", "ours centermask vovnet39 fp32 eager", "torchvision maskrcnn_resnet50_fpn fp32 eager"]
    assert labels(task="segment", arch="fpn_semantic", model="vovnet39", runtime="onnxruntime", vs_torchvision=True) == [
        "ours fpn_semantic vovnet39 fp32 onnxruntime", "ours fpn_semantic vovnet39 fp32 eager",
        "torchvision deeplabv3_resnet50 fp32 eager"]


@pytest.mark.slow
def test_detect_json_has_the_promised_keys_and_the_same_detection_count(capsys):
    argv = ["bench", "--task", "detect", "--arch", "centermask", *TINY, "--detections", "7", "--deploy", "--vs", "torchvision", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("img_s", "peak_rss_mb", "torchvision_img_s", "ratio", "eager_img_s", "vs_eager"):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["ratio"] == pytest.approx(result["img_s"] / result["torchvision_img_s"])
    assert list(result["stages"]) == ["backbone", "heads", "masks", "post-processing"]
    assert all(v >= 0 for v in result["stages"].values())
    assert result["detections"] == result["torchvision_detections"] == 7
    assert [r["detections"] for r in result["rows"]] == [7, 7, 7]


@pytest.mark.slow
def test_segment_runs_ours_and_torchvision(capsys):
    argv = ["bench", "--task", "segment", "--arch", "fpn_semantic", *TINY, "--vs", "torchvision", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["img_s"] > 0 and result["torchvision_img_s"] > 0
    assert list(result["stages"]) == ["backbone", "heads", "post-processing"]
    assert result["torchvision_model"] == "deeplabv3_resnet50"


def test_stage_clock_splits_one_call():
    torch.set_num_threads(1)
    step = prepare_detector("vovnet", "mask_rcnn_sag", "vovnet19_slim_dw", img_size=96, detections=5, deploy=True,
                            runtime="torch", precision="fp32", device="cpu")
    assert step.detections == 5
    step.step()
    seconds = step.clock.seconds
    assert set(seconds) == {"backbone", "heads", "masks", "post-processing"} and all(v >= 0 for v in seconds.values())
    seg = prepare_segmenter("torchvision", "deeplabv3_resnet50", "deeplabv3_resnet50", img_size=64, deploy=False,
                            runtime="torch", precision="fp32", device="cpu")
    seg.step()
    assert seg.clock.seconds["backbone"] > 0


def test_stage_clock_times_methods_and_the_remainder():
    class Thing:
        def work(self):
            return 1

    thing, layer = Thing(), torch.nn.Linear(2, 2)
    clock = StageClock({"layer": [layer], "work": [(thing, "work")]}, "rest")
    with clock.measure():
        layer(torch.zeros(1, 2))
        assert thing.work() == 1
    assert set(clock.seconds) == {"layer", "work", "rest"} and min(clock.seconds.values()) >= 0


def test_bench_image_is_the_promised_size():
    image = bench_image()
    assert image.shape == (3, 480, 640) and 0 <= image.min() and image.max() <= 1


@pytest.mark.parametrize("args, message", [
    (["--task", "detect"], "needs --arch"),
    (["--task", "detect", "--arch", "yolo"], "--arch for --task detect"),
    (["--task", "detect", "--arch", "fcos", "--vs", "timm"], "--vs takes torchvision"),
    (["--task", "segment", "--arch", "fpn_semantic", "--mode", "train"], "measures inference"),
    (["--task", "detect", "--arch", "fcos", "--precision", "bf16"], "--precision applies with --deploy"),
    (["--task", "detect", "--arch", "fcos", "--runtime", "onnxruntime", "--deploy"], "onnxruntime"),
    (["--arch", "fcos"], "--arch applies to --task detect"),
])
def test_errors_are_one_line(capsys, args, message):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
