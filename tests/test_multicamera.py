"""Six cameras through one backbone: [B, cameras, 3, H, W] in, [B, cameras, C, h, w] out; norm_eval; memory-efficient
training with frozen stages under DistributedDataParallel (two processes, the gradients of one)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import rel_err
from reference.ddp_multicamera import BATCH, TINY, batch, multicamera_body, train

import vovnet
from vovnet.models.backbone import BackboneConfig, fpn_backbone
from vovnet.models.registry import build_model
from vovnet.weights.checkpoint import load_checkpoint

CAMERAS = 6


def test_features_only_takes_cameras_as_a_dimension():
    body = vovnet.create_model("vovnet19_slim_dw", features_only=True, out_indices=(2, 3, 4)).eval()
    x = torch.randn(2, CAMERAS, 3, 64, 96)
    with torch.no_grad():
        maps, flat = body(x), body(x.flatten(0, 1))
    assert [tuple(m.shape) for m in maps] == [(2, CAMERAS, 256, 8, 12), (2, CAMERAS, 384, 4, 6), (2, CAMERAS, 512, 2, 3)]
    assert all(torch.equal(m.flatten(0, 1), f) for m, f in zip(maps, flat))
    with pytest.raises(ValueError, match=r"\[B, cameras, 3, H, W\] for features_only"):
        body(torch.randn(2, CAMERAS, 4, 64, 96))


def test_fpn_backbone_takes_cameras_as_a_dimension():
    fpn = fpn_backbone(BackboneConfig("vovnet19_slim_dw"), extra="maxpool", out_channels=32).eval()
    x = torch.randn(1, CAMERAS, 3, 64, 96)
    with torch.no_grad():
        levels, flat = fpn(x), fpn(x.flatten(0, 1))
    assert list(levels) == ["p2", "p3", "p4", "p5", "pool"]
    assert tuple(levels["p2"].shape) == (1, CAMERAS, 32, 16, 24) and tuple(levels["pool"].shape) == (1, CAMERAS, 32, 1, 2)
    assert all(torch.equal(levels[k].flatten(0, 1), flat[k]) for k in flat)


def test_norm_eval_keeps_running_statistics_while_training(tmp_path):
    model = vovnet.create_model("vovnet19_slim_dw", num_classes=4, norm_eval=True)
    assert model.config.norm_eval and model.training
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert model.stem[0].conv.weight.grad is not None  # the weights still train
    vovnet.save_checkpoint(model, tmp_path / "m.safetensors")
    assert load_checkpoint(tmp_path / "m.safetensors").config.norm_eval  # the checkpoint records it


def test_memory_efficient_training_with_frozen_stages_and_norm_eval_on_six_cameras():
    """Single process: the same gradients as plain training (float64), the frozen part taking none."""
    model = multicamera_body().double()
    plain = copy.deepcopy(model)
    plain.set_grad_checkpointing(False)
    x = batch().double()
    got, want = train(model, x, steps=1), train(plain, x, steps=1)
    assert got.keys() == want.keys() and not any(k.startswith(("grad.stem.", "grad.stages.0.")) for k in got)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.slow  # torchrun: two processes
def test_two_processes_train_like_one_under_ddp(tmp_path):
    out = tmp_path / "rank0.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(Path(__file__).parent / "reference" / "ddp_multicamera.py"), str(out)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "marked ready twice" not in done.stderr
    ddp = torch.load(out, weights_only=True)
    assert BATCH == 2
    one = train(multicamera_body(), batch())  # one process, the whole batch
    assert ddp.keys() == one.keys() and any(k.startswith("grad.") for k in one)
    for k, v in one.items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert TINY.norm_eval


def test_frozen_stem_and_norm_eval_build_from_the_registry():
    body = build_model("tiny", TINY, features_only=True)
    body.freeze_at(2)
    assert not any(p.requires_grad for p in body.stem.parameters())
    assert any(p.requires_grad for p in body.stages[1].parameters())


@pytest.mark.slow  # an ONNX export and onnxruntime
def test_six_camera_fpn_extractor_exports_to_onnx_with_a_dynamic_batch(tmp_path):
    import onnxruntime as ort

    from vovnet.deployment.export import export_onnx, multicamera_target

    fpn = fpn_backbone(BackboneConfig("vovnet19_slim_dw"), extra="maxpool", out_channels=32).eval()
    target = multicamera_target(fpn, CAMERAS, (3, 64, 96), dict(model="vovnet19_slim_dw"))
    report = export_onnx(target, tmp_path / "six.onnx", dynamic_batch=True)  # checked at batch 1 and 2 before writing
    assert report["input"] == ["batch", CAMERAS, 3, 64, 96]
    assert report["outputs"]["p2"] == [1, CAMERAS, 32, 16, 24] and report["max_relative_error"] <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "six.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, CAMERAS, 3, 64, 96)
    got = dict(zip(report["outputs"], session.run(None, {"input": x.numpy()})))
    with torch.no_grad():
        want = fpn(x)
    assert all(rel_err(torch.from_numpy(got[k]), want[k]) <= 1e-5 for k in want)


def test_bench_features_options_are_checked(capsys):
    from vovnet.cli import main

    assert main(["bench", "--features", "--task", "detect", "--arch", "fcos"]) == 2
    assert "--features measures the classification backbone" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--features", "--img-size", "1600xwide"])
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


@pytest.mark.slow  # worker processes and an ONNX export
def test_bench_times_the_six_camera_extractor_in_onnxruntime(capsys):
    import json

    from vovnet.cli import main

    assert main(["bench", "--features", "--batch-size", "6", "--img-size", "96x64", "--model", "vovnet19_slim_dw",
                 "--runtime", "onnxruntime", "--iters", "1", "--warmup", "0", "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["features"] and (result["img_size"], result["img_height"], result["batch"]) == (96, 64, 6)
    assert result["img_s"] > 0 and "+FPN" in result["rows"][0]["label"]
