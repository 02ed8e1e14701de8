"""vovnet bench --task detect|segment: the plan of subjects, the JSON it prints, the stage clock, one-line errors;
ours by name or from a checkpoint (trained-shape, or converted from centermask2).
Tiny settings (96-128 px, few detections, one iteration); the figures themselves are in benchmarks/RESULTS.md."""

import dataclasses
import json

import pytest
import torch
from test_centermask_official import official_checkpoint

import vovnet
from vovnet import create_detector, create_segmenter, load_detector, read_checkpoint, save_detector, save_segmenter
from vovnet.bench.dense_bench import DenseBenchRequest, plan_dense_subjects, ran_winograd
from vovnet.bench.dense_steps import StageClock, bench_image, build_detector, prepare_detector, prepare_segmenter
from vovnet.cli import main
from vovnet.weights.official_detectors import convert_centermask2

TINY = ["--model", "vovnet19_slim_dw", "--img-size", "128", "--warmup", "0", "--iters", "1", "--threads", "1"]


def test_plan_adds_our_eager_model_when_deployed_and_torchvision_when_asked():
    labels = lambda **kw: [s.label for s in plan_dense_subjects(DenseBenchRequest(**kw))]  # noqa: E731
    assert labels(task="detect", arch="centermask", model="vovnet39") == ["ours centermask vovnet39 fp32 eager"]
    assert labels(task="detect", arch="centermask", model="vovnet39", deploy=True, vs_torchvision=True) == [
        "ours centermask vovnet39 fp32 deploy", "ours centermask vovnet39 fp32 eager", "torchvision maskrcnn_resnet50_fpn fp32 eager"]
    assert labels(task="segment", arch="fpn_semantic", model="vovnet39", runtime="onnxruntime", vs_torchvision=True) == [
        "ours fpn_semantic vovnet39 fp32 onnxruntime", "ours fpn_semantic vovnet39 fp32 eager",
        "torchvision deeplabv3_resnet50 fp32 eager"]


def test_the_json_says_whether_winograd_ran():
    det = DenseBenchRequest(task="detect", arch="centermask", deploy=True)
    assert ran_winograd(det, "fp32") and ran_winograd(dataclasses.replace(det, winograd=True), "fp32")
    assert not ran_winograd(det, "bf16")  # deployed under autocast: the direct convolutions
    assert not ran_winograd(dataclasses.replace(det, winograd=False), "fp32")
    assert not ran_winograd(dataclasses.replace(det, deploy=False), "fp32")
    assert not ran_winograd(dataclasses.replace(det, device="cuda"), "fp32")
    assert not ran_winograd(dataclasses.replace(det, task="segment", arch="fpn_semantic"), "fp32")


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
    (["--task", "detect", "--arch", "fcos", "--winograd"], "--winograd applies to a deployed detector"),
    (["--task", "segment", "--arch", "fpn_semantic", "--deploy", "--winograd"], "--winograd applies to a deployed detector"),
    (["--winograd"], "--winograd applies to a deployed detector"),
    (["--no-winograd"], "--no-winograd applies to a deployed detector"),
    (["--task", "segment", "--arch", "fpn_semantic", "--deploy", "--no-winograd"], "--no-winograd applies to a deployed detector"),
])
def test_errors_are_one_line(capsys, args, message):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


# ---- ours from a checkpoint -------------------------------------------------------------------------------------
CKPT_RUN = ["--warmup", "0", "--iters", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A trained-shape CenterMask and semantic FPN (96 px, random weights), a centermask2 model converted by
    ``vovnet convert``'s converter (800 px), and a classifier, saved as their tasks save them."""
    tmp = tmp_path_factory.mktemp("bench-ckpt")
    torch.manual_seed(0)
    save_detector(create_detector("centermask", "vovnet19_slim_dw", ["a", "b"], image_size=96), tmp / "det.safetensors")
    save_segmenter(create_segmenter("fpn_semantic", "vovnet19_slim_dw", ["bg", "a"], input_size=96), tmp / "seg.safetensors")
    torch.save({"model": official_checkpoint("vovnet19_slim_dw", True)}, tmp / "cm2.pth")
    convert_centermask2(tmp / "cm2.pth", tmp / "cm2.safetensors")
    vovnet.save_checkpoint(vovnet.create_model("vovnet19_slim_dw", num_classes=2), tmp / "cls.safetensors")
    return {name: str(tmp / f"{name}.safetensors") for name in ("det", "seg", "cm2", "cls")}


def test_a_checkpoint_decides_task_arch_model_and_input_size(checkpoints):
    det = DenseBenchRequest(checkpoint=checkpoints["det"]).resolved()
    assert (det.task, det.arch, det.model, det.img_size) == ("detect", "centermask", "vovnet19_slim_dw", 96)
    assert DenseBenchRequest(checkpoint=checkpoints["det"], img_size=128, task="detect", arch="centermask").resolved().img_size == 128
    seg = DenseBenchRequest(checkpoint=checkpoints["seg"]).resolved()
    assert (seg.task, seg.arch, seg.model, seg.img_size) == ("segment", "fpn_semantic", "vovnet19_slim_dw", 96)
    assert DenseBenchRequest(checkpoint=checkpoints["cm2"]).resolved().img_size == 600  # the converted Lite config's test size
    subjects = plan_dense_subjects(dataclasses.replace(det, deploy=True, vs_torchvision=True))
    assert [s.checkpoint for s in subjects] == [checkpoints["det"], checkpoints["det"], ""]
    assert [s.img_size for s in subjects] == [96, 96, 96]
    assert subjects[1].label == "ours centermask vovnet19_slim_dw fp32 eager"
    winograd = plan_dense_subjects(dataclasses.replace(det, deploy=True, winograd=True))
    assert [(s.label.split()[-1], s.winograd) for s in winograd] == [("deploy+winograd", True), ("eager", None)]
    direct = plan_dense_subjects(dataclasses.replace(det, deploy=True, winograd=False))
    assert [(s.label.split()[-1], s.winograd) for s in direct] == [("deploy-direct", False), ("eager", None)]
    default = plan_dense_subjects(dataclasses.replace(det, deploy=True))
    assert [(s.label.split()[-1], s.winograd) for s in default] == [("deploy", None), ("eager", None)]


def test_the_checkpoint_detector_is_the_saved_one_keeping_every_candidate(checkpoints):
    net = build_detector("vovnet", "", "", 128, 9, checkpoints["det"])
    saved, meta = load_detector(checkpoints["det"]), read_checkpoint(checkpoints["det"])[1]
    assert not net.training and net.score_thresh == 0.0 and net.detections_per_img == 9
    assert net.transform.min_size == (128,) and meta["image_size"] == 96
    ours, theirs = net.state_dict(), saved.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("name, deploy, winograd", [("det", False, False), ("cm2", False, False), ("cm2", True, False),
                                                    ("det", True, True)])
def test_checkpoint_detectors_keep_the_requested_count_and_their_stages(checkpoints, name, deploy, winograd):
    torch.set_num_threads(1)
    step = prepare_detector("vovnet", "", "", img_size=96, detections=6, deploy=deploy, runtime="torch", precision="fp32",
                            device="cpu", checkpoint=checkpoints[name], winograd=winograd)
    assert step.detections == 6
    step.step()
    seconds = step.clock.seconds
    assert set(seconds) == {"backbone", "heads", "masks", "post-processing"}
    assert seconds["backbone"] > 0 and seconds["heads"] > 0 and seconds["masks"] > 0 and seconds["post-processing"] >= 0


def test_a_converted_centermask2_checkpoint_runs_in_onnxruntime(checkpoints):
    torch.set_num_threads(1)
    step = prepare_detector("vovnet", "", "", img_size=96, detections=6, deploy=False, runtime="onnxruntime", precision="fp32",
                            device="cpu", checkpoint=checkpoints["cm2"])
    assert step.detections == 6 and step.clock is None
    boxes, labels, scores, masks, mask_scores = step.step()
    assert len(boxes) == len(mask_scores) == 6 and masks.shape[-2:] == (480, 640)


def test_the_converted_centermask2_model_keeps_its_dialect(checkpoints):
    net = build_detector("vovnet", "", "", 96, 5, checkpoints["cm2"])
    assert net.dialect.postprocess == "detectron2" and net.maskiou_head is not None
    assert net.transform.input_format.bgr and net.transform.input_format.scale == 255
    out = net([bench_image()])[0]
    assert len(out["boxes"]) == 5 and "mask_scores" in out


@pytest.mark.slow
def test_bench_a_detector_checkpoint_deployed_against_torchvision(checkpoints, capsys):
    argv = ["bench", "--checkpoint", checkpoints["det"], *CKPT_RUN, "--detections", "7", "--deploy", "--vs", "torchvision", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["checkpoint"], result["task"], result["arch"], result["model"]) == (
        checkpoints["det"], "detect", "centermask", "vovnet19_slim_dw")
    assert result["img_size"] == 96 and result["deploy"] is True
    for key in ("img_s", "peak_rss_mb", "torchvision_img_s", "ratio", "eager_img_s", "vs_eager"):  # the promised keys
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["ratio"] == pytest.approx(result["img_s"] / result["torchvision_img_s"])
    assert result["vs_eager"] == pytest.approx(result["img_s"] / result["eager_img_s"])
    assert result["detections"] == result["torchvision_detections"] == 7
    assert [r["detections"] for r in result["rows"]] == [7, 7, 7]
    assert result["winograd"] is True  # deploy's default on the CPU in fp32
    assert list(result["stages"]) == ["backbone", "heads", "masks", "post-processing"]
    assert all(v >= 0 for v in result["stages"].values())


@pytest.mark.slow
def test_bench_a_segmenter_checkpoint_in_onnxruntime(checkpoints, capsys):
    argv = ["bench", "--task", "segment", "--checkpoint", checkpoints["seg"], *CKPT_RUN, "--img-size", "64",
            "--runtime", "onnxruntime", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["checkpoint"], result["task"], result["arch"], result["model"]) == (
        checkpoints["seg"], "segment", "fpn_semantic", "vovnet19_slim_dw")
    assert result["img_size"] == 64 and result["runtime"] == "onnxruntime"
    assert result["vs_eager"] == pytest.approx(result["img_s"] / result["eager_img_s"])
    assert result["eager_stages"] is not None and result["stages"] is None


@pytest.mark.slow
def test_bench_a_converted_centermask2_checkpoint_deployed(checkpoints, capsys):
    argv = ["bench", "--checkpoint", checkpoints["cm2"], *CKPT_RUN, "--img-size", "96", "--detections", "5", "--deploy", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["checkpoint"] == checkpoints["cm2"] and result["arch"] == "centermask"
    assert [r["detections"] for r in result["rows"]] == [5, 5]
    assert result["stages"]["masks"] > 0 and result["eager_stages"]["masks"] > 0 and result["vs_eager"] > 0


@pytest.mark.parametrize("args, code, message", [
    (["--checkpoint", "{tmp}/missing.safetensors"], 1, "cannot read"),
    (["--checkpoint", "{garbage}"], 1, "{garbage}: a text file, not a checkpoint"),
    (["--checkpoint", "{cls}"], 1, "not a detector or segmenter checkpoint (a classification checkpoint)"),
    (["--checkpoint", "{det}", "--arch", "fcos"], 2, "--arch fcos: {det} is a detect checkpoint of centermask vovnet19_slim_dw"),
    (["--checkpoint", "{det}", "--model", "vovnet39"], 2, "--model vovnet39: {det} is a detect checkpoint"),
    (["--checkpoint", "{det}", "--task", "segment"], 2, "--task segment: {det} is a detect checkpoint"),
    (["--checkpoint", "{seg}", "--task", "classify"], 2, "--task classify: {seg} is a segment checkpoint"),
    (["--checkpoint", "{det}", "--vs", "timm"], 2, "--vs takes torchvision"),
])
def test_checkpoint_errors_are_one_line(checkpoints, tmp_path, capsys, args, code, message):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    paths = dict(checkpoints, tmp=tmp_path, garbage=garbage)
    assert main(["bench", *[a.format(**paths) for a in args]]) == code
    err = capsys.readouterr().err
    assert message.format(**paths) in err and len(err.strip().splitlines()) == 1
