"""vovnet bench: the plan of subjects, the JSON it prints, the steps it times, one-line errors."""

import json
import sys

import pytest

from vovnet.bench.bench import BenchRequest, plan_subjects
from vovnet.bench.worker import Subject, count_step_flops, prepare
from vovnet.cli import main

TINY = dict(model="vovnet19_slim_dw", img_size=32, batch=1)


def labels(req: BenchRequest) -> list[str]:
    return [s.label for s in plan_subjects(req)]


def test_plan_adds_the_timm_subjects_that_match_what_ours_does():
    assert labels(BenchRequest(model="vovnet39")) == ["ours vovnet39 fp32 eager", "matmul 4096 fp32"]
    assert labels(BenchRequest(model="vovnet39", vs_timm=True)) == [
        "ours vovnet39 fp32 eager", "timm ese_vovnet39b fp32 eager", "matmul 4096 fp32"]
    assert labels(BenchRequest(model="vovnet39", vs_timm=True, deploy=True, precision="bf16")) == [
        "ours vovnet39 bf16 deploy", "timm ese_vovnet39b fp32 eager", "timm ese_vovnet39b bf16 channels_last", "matmul 4096 bf16"]
    subjects = plan_subjects(BenchRequest(model="vovnet39", vs_timm=True, mode="train", grad_checkpointing=True))
    assert [s.label for s in subjects][-2] == "timm ese_vovnet39b fp32 grad-ckpt"
    assert subjects[0].grad_checkpointing and subjects[-2].grad_checkpointing and not subjects[1].grad_checkpointing


@pytest.mark.slow  # bench worker processes
def test_json_has_the_promised_keys(capsys):
    argv = ["bench", "--model", TINY["model"], "--img-size", "32", "--batch", "1", "--warmup", "0", "--iters", "1",
            "--matmul-size", "64", "--vs", "timm", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("img_s", "gflop_s", "peak_fraction", "peak_rss_mb", "memory_mb", "timm_img_s", "ratio", "matmul_peak_gflop_s"):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["ratio"] == pytest.approx(result["img_s"] / result["timm_img_s"])
    assert [r["label"] for r in result["rows"]] == ["ours vovnet19_slim_dw fp32 eager", "timm ese_vovnet19b_slim_dw fp32 eager",
                                                    "matmul 64 fp32"]
    assert any("eSE only on the last block" in n for n in result["notes"])
    assert result["machine"]["torch"] and result["threads"] >= 1


@pytest.mark.slow  # bench worker processes
def test_memory_efficient_bench_runs_every_subject_with_big_blocks_unmapped(capsys, monkeypatch):
    from vovnet.bench import bench

    envs = []
    popen = bench.subprocess.Popen

    def recording_popen(*args, **kwargs):
        if "vovnet.bench.worker" in args[0]:  # the workers (platform may run `uname -p` through Popen too)
            envs.append(kwargs.get("env") or {})
        return popen(*args, **kwargs)

    monkeypatch.setattr(bench.subprocess, "Popen", recording_popen)
    argv = ["bench", "--model", TINY["model"], "--img-size", "32", "--batch", "2", "--mode", "train", "--grad-checkpointing",
            "--warmup", "0", "--iters", "1", "--matmul-size", "64", "--vs", "timm", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(envs) == len(result["rows"]) == 4  # ours, timm plain, timm with its checkpointing, matmul
    assert all(env.get("MALLOC_MMAP_THRESHOLD_") == "131072" for env in envs)
    assert any("MALLOC_MMAP_THRESHOLD_=131072" in n for n in result["notes"])


def test_training_step_with_memory_efficient_blocks_runs_and_counts_backward():
    tiny = dict(TINY, batch=2)  # training batch norm needs more than one value per channel at 1 x 1
    prepared = prepare(Subject(label="t", mode="train", deploy=True, grad_checkpointing=True, **tiny))
    prepared.step()
    forward = count_step_flops(Subject(label="f", **tiny))
    assert prepared.items == 2 and prepared.flops == 3 * forward  # backward counted as 2x forward


def test_timm_subject_with_its_own_checkpointing_runs():
    prepared = prepare(Subject(label="t", source="timm", model="ese_vovnet19b_slim_dw", mode="train", grad_checkpointing=True,
                               img_size=32, batch=2))
    prepared.step()
    assert prepared.precision == "fp32"


@pytest.mark.slow  # an ONNX export
def test_onnxruntime_runtime_runs_the_exported_model():
    prepared = prepare(Subject(label="o", runtime="onnxruntime", **TINY))
    prepared.step()
    assert prepared.flops == count_step_flops(Subject(label="f", **TINY))


@pytest.mark.parametrize("args, code, message", [
    (["--precision", "fp8"], 2, "unknown precision 'fp8'"),
    (["--model", "vovnet40"], 2, "unknown model 'vovnet40'"),
    (["--runtime", "onnxruntime", "--mode", "train"], 2, "measures fp32 inference"),
    (["--model", "vovnet27_slim", "--vs", "timm"], 2, "no timm equivalent"),
    (["--grad-checkpointing"], 2, "applies to --mode train"),
    (["--batch", "0"], 2, "--batch must be at least 1"),
])
def test_errors_are_one_line(capsys, args, code, message):
    assert main(["bench", *args]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("vovnet bench: error:") and message in err and len(err.splitlines()) == 1


def test_missing_timm_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm.models.vovnet", None)  # import fails as if timm were not installed
    assert main(["bench", "--vs", "timm"]) == 1
    err = capsys.readouterr().err.strip()
    assert "needs timm" in err and len(err.splitlines()) == 1
