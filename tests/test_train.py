"""`vovnet train` / `eval` / `predict` on tiny settings: outputs, checkpoints, resume rules, bad input."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from vovnet import create_model, load_checkpoint
from vovnet.cli import main
from vovnet.data.classification import digits_arrays
from vovnet.deployment.precision import unsupported_reason
from vovnet.engine import TrainConfig, loop
from vovnet.errors import TrainingError
from vovnet.tasks.classification import ClassificationTask
from vovnet.weights.checkpoint import read_checkpoint

TINY = ["--limit-train", "64", "--limit-val", "40", "--batch-size", "16", "--quiet"]


def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One tiny digits run shared by the output, eval and predict tests."""
    out = tmp_path_factory.mktemp("run") / "digits"
    assert run_cli("train", "--epochs", 2, "--out", out, "--ema-decay", 0.9, *TINY) == 0
    return out


def test_outputs_of_a_run(digits_run):
    out = digits_run
    for name in ("last.safetensors", "best.safetensors", "resume.pt", "metrics.csv", "curves.png", "confusion.png",
                 "config.yaml", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert set(rows[0]) == {"epoch", "train_loss", "val_loss", "top1", "top5", "lr", "seconds", "images_per_s"}
    assert all(math.isfinite(float(r["train_loss"])) and float(r["images_per_s"]) > 0 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["epochs"] == 2 and summary["model"] == "vovnet19_slim_dw"
    assert 0.0 <= summary["test_acc"] <= 1.0 and summary["best_acc"] >= summary["test_acc"]
    assert summary["train_seconds"] > 0 and summary["details"]["samples"] == 40
    assert abs(summary["test_acc"] - float(rows[-1]["top1"])) < 1e-6
    # The primary metric under its own name; test_acc/best_acc stay for older readers.
    assert summary["primary_metric"] == "top1" and summary["top1"] == summary["test_acc"] == summary["final_metrics"]["top1"]
    assert summary["best_top1"] == summary["best_acc"] == max(float(r["top1"]) for r in rows)
    assert summary["val_loss"] == summary["final_metrics"]["loss"] and abs(summary["val_loss"] - float(rows[-1]["val_loss"])) < 1e-6
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["ema_decay"] == 0.9 and config["limit_train"] == 64
    # Resume state is readable without unpickling anything of ours.
    state = torch.load(out / "resume.pt", weights_only=True)
    assert state["epoch"] == 2 and "optimizer" in state and "rng" in state


def test_checkpoint_loads_with_class_names(digits_run):
    model = load_checkpoint(digits_run / "best.safetensors")
    assert model.class_names == [str(d) for d in range(10)]
    _, meta = read_checkpoint(digits_run / "last.safetensors")
    assert meta["task"] == "classify" and meta["epoch"] == 2 and meta["eval_input"]["img_size"] == 32
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_eval_reproduces_the_training_metrics(digits_run, capsys):
    assert run_cli("eval", "--checkpoint", digits_run / "last.safetensors", "--data", "digits", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    # eval sees all 360 test digits, training only evaluated a subset of 40; check the full pass.
    assert report["samples"] == 360 and set(report["per_class_accuracy"]) == {str(d) for d in range(10)}
    total = np.array(report["confusion"])
    assert total.sum() == 360 and abs(np.trace(total) / 360 - report["metrics"]["top1"]) < 1e-6
    assert run_cli("eval", "--checkpoint", digits_run / "last.safetensors") == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "per-class accuracy" in text
    # The deployed model scores the same: the same confusion matrix, the loss within float rounding.
    assert run_cli("eval", "--checkpoint", digits_run / "last.safetensors", "--data", "digits", "--json", "--deploy") == 0
    fast = json.loads(capsys.readouterr().out)
    assert fast["confusion"] == report["confusion"] and fast["metrics"]["top1"] == report["metrics"]["top1"]
    assert fast["metrics"]["loss"] == pytest.approx(report["metrics"]["loss"], rel=1e-4)
    assert run_cli("eval", "--checkpoint", digits_run / "last.safetensors", "--deploy", "--amp", "bf16") == 2
    assert "with --deploy give --precision" in capsys.readouterr().err


def test_eval_on_data_with_other_classes_is_refused(digits_run, tmp_path, capsys):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", (40, 40), (60 * i, 90, 30)).save(tmp_path / name / f"{i}.png")
    assert run_cli("eval", "--checkpoint", digits_run / "last.safetensors", "--data", tmp_path, "--val-fraction", 0.5) == 1
    assert "other classes than" in capsys.readouterr().err


def test_predict_prints_top_k(digits_run, tmp_path, capsys):
    _, _, test_x, test_y = digits_arrays()
    paths = []
    for i in range(3):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray((test_x[i, 0].numpy() * 255).astype(np.uint8), "L").save(path)
        paths.append(path)
    assert run_cli("predict", "--checkpoint", digits_run / "best.safetensors", "--topk", 3, "--json", *paths) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in rows] == [str(p) for p in paths]
    for r in rows:
        probs = [t["prob"] for t in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(t["class"] in {str(d) for d in range(10)} for t in r["top"])
    assert run_cli("predict", "--checkpoint", digits_run / "best.safetensors", paths[0]) == 0
    assert capsys.readouterr().out.startswith(f"{paths[0]}: ")
    # Deployed: the same classes in the same order, probabilities within float rounding.
    assert run_cli("predict", "--checkpoint", digits_run / "best.safetensors", "--topk", 3, "--json", "--deploy", *paths) == 0
    fast = json.loads(capsys.readouterr().out)
    for want, got in zip(rows, fast, strict=True):
        assert [t["class"] for t in got["top"]] == [t["class"] for t in want["top"]]
        assert [t["prob"] for t in got["top"]] == pytest.approx([t["prob"] for t in want["top"]], abs=1e-5)
    assert run_cli("predict", "--checkpoint", digits_run / "best.safetensors", "--precision", "bf16", paths[0]) == 2
    assert "--precision applies with --deploy" in capsys.readouterr().err
    assert run_cli("predict", "--checkpoint", digits_run / "best.safetensors", "--deploy", "--precision", "bf16", paths[0]) == 0
    reason = unsupported_reason("bf16", "cpu")
    err = capsys.readouterr().err
    if reason is None:  # a CPU with native bf16 runs it and says nothing
        assert err == ""
    else:  # elsewhere fp32, in one line that says so
        assert err.startswith("vovnet predict: ") and "fp32" in err and err.count("\n") == 1


def test_resume_with_other_settings_is_refused(digits_run, capsys):
    assert run_cli("train", "--resume", digits_run, "--model", "vovnet19_dw") == 1
    err = capsys.readouterr().err
    assert "different configuration" in err and "model: 'vovnet19_slim_dw' -> 'vovnet19_dw'" in err
    assert run_cli("train", "--resume", digits_run, "--lr", 0.5, "--epochs", 3) == 1
    err = capsys.readouterr().err
    assert "lr: 0.004 -> 0.5" in err and "epochs: 2 -> 3" in err


def test_resume_of_a_finished_run_changes_nothing(digits_run, capsys):
    before = (digits_run / "last.safetensors").read_bytes()
    assert run_cli("train", "--resume", digits_run, "--quiet", "--workers", 0) == 0
    assert "after epoch 2/2" in capsys.readouterr().out
    assert (digits_run / "last.safetensors").read_bytes() == before


def test_a_new_run_does_not_overwrite_an_old_one(digits_run, capsys):
    assert run_cli("train", "--out", digits_run, *TINY) == 1
    assert "already holds a run" in capsys.readouterr().err


def test_corrupt_files_are_named(digits_run, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    data = (digits_run / "resume.pt").read_bytes()
    (broken / "resume.pt").write_bytes(data[: len(data) // 2])
    assert run_cli("train", "--resume", broken) == 1
    assert f"{broken / 'resume.pt'}: corrupt or partial resume state" in capsys.readouterr().err
    ckpt = tmp_path / "half.safetensors"
    data = (digits_run / "last.safetensors").read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    assert run_cli("eval", "--checkpoint", ckpt) == 1
    err = capsys.readouterr().err
    assert str(ckpt) in err and "truncated or corrupt" in err and "Traceback" not in err


def test_unwritable_output_folder_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert run_cli("train", "--out", blocker / "run", *TINY) == 1
    err = capsys.readouterr().err
    assert "cannot write to output folder" in err and str(blocker / "run") in err


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = ClassificationTask.training_losses
    calls = {"n": 0}

    def poisoned(self, model, batch, epoch):
        step = real(self, model, batch, epoch)
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 2, step 2 with 4 steps per epoch
            step = step._replace(losses={"loss": step.losses["loss"] * float("nan")})
        return step

    monkeypatch.setattr(ClassificationTask, "training_losses", poisoned)
    out = tmp_path / "nan"
    config = TrainConfig(epochs=3, limit_train=64, limit_val=20, batch_size=16, quiet=True, out=str(out))
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at epoch 2, step 2"):
        loop.train(config)
    _, meta = read_checkpoint(out / "last.safetensors")
    assert meta["epoch"] == 1
    assert torch.load(out / "resume.pt", weights_only=True)["epoch"] == 1


def test_options_of_the_loop_train(tmp_path):
    """SGD, clipping, bf16 autocast, channels-last, checkpointing and freezing run through the one loop."""
    config = TrainConfig(epochs=1, limit_train=32, limit_val=16, batch_size=16, quiet=True, out=str(tmp_path / "o"),
                         opt="sgd", lr=0.05, clip_grad=1.0, amp="bf16", channels_last=True, grad_checkpointing=True,
                         freeze_at=2, label_smoothing=0.0, warmup_epochs=0)
    summary = loop.train(config)
    assert summary["finished"] and math.isfinite(summary["final_metrics"]["loss"])
    trained = load_checkpoint(tmp_path / "o" / "last.safetensors").state_dict()
    torch.manual_seed(config.seed)  # the loop builds its model right after this seed
    initial = create_model(config.model, num_classes=10).state_dict()
    frozen = [k for k in initial if k.startswith(("stem.", "stages.0.")) and "num_batches" not in k]
    trainable = [k for k in initial if k.startswith("stages.1.") and k.endswith("conv.weight")]
    assert frozen and all(torch.equal(trained[k], initial[k]) for k in frozen)
    assert trainable and not any(torch.equal(trained[k], initial[k]) for k in trainable)


def test_fine_tuning_from_a_checkpoint_with_a_new_head(digits_run, tmp_path):
    root = tmp_path / "imgs"
    for name, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (40, 40), tuple(max(0, c - 10 * i) for c in colour)).save(root / name / f"{i}.png")
    out = tmp_path / "ft"
    assert run_cli("train", "--data", root, "--pretrained", digits_run / "best.safetensors", "--epochs", 1,
                   "--batch-size", 4, "--quiet", "--out", out, "--workers", 0) == 0
    model = load_checkpoint(out / "last.safetensors")
    assert model.class_names == ["blue", "red"] and model.num_classes == 2
    source = load_checkpoint(digits_run / "best.safetensors").state_dict()
    # Backbone started from the digits weights: the stem's first conv moved only a little.
    w0, w1 = source["stem.0.conv.weight"], model.state_dict()["stem.0.conv.weight"]
    assert (w1 - w0).norm() < 0.5 * w0.norm()


def test_usage_errors_are_one_line(tmp_path, capsys):
    assert run_cli("train", "--model", "vovnet_nope", "--epochs", 1, "--out", tmp_path / "nope", *TINY) == 2
    assert "unknown model 'vovnet_nope'" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()
    assert run_cli("train", "--img-size", 16) == 2
    assert "--img-size must be at least 32" in capsys.readouterr().err
    assert run_cli("train", "--task", "nope") == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert run_cli("train", "-o", "x=1", *TINY) == 2
    assert "unknown option(s) for --task classify: x" in capsys.readouterr().err
    assert run_cli("train", "--amp", "fp16", "--device", "cpu", *TINY) == 2
    assert "--amp fp16 needs CUDA" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert run_cli("train", "--device", "cuda", *TINY) == 2
        assert "torch sees no CUDA device" in capsys.readouterr().err
