"""Atomic writes and the modes of written files: 0666 masked by the umask, as any other tool writes them
(folders 0777 masked), for every kind of file the package writes."""

from __future__ import annotations

import dataclasses
import io
import os
import stat
from pathlib import Path

import pytest
import torch
from timm.models.vovnet import VovNet, model_cfgs

import vovnet
from vovnet.cli import main
from vovnet.data.coco import png_bytes
from vovnet.data.shapes import ShapesConfig, render_scene
from vovnet.io import atomic_open, atomic_write_bytes, current_umask
from vovnet.weights.convert import convert_state_dict
from vovnet.weights.pretrained import PRETRAINED, WeightFile


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_take_the_umask(tmp_path, umask):
    assert current_umask() == umask
    path = atomic_write_bytes(tmp_path / "new" / "deeper" / "a.bin", b"one")
    assert _mode(path) == 0o666 & ~umask
    assert _mode(tmp_path / "new") == _mode(tmp_path / "new" / "deeper") == 0o777 & ~umask
    path.chmod(0o600)
    atomic_write_bytes(path, b"two")  # a new file replaces the old one, with the mode a new file gets
    assert path.read_bytes() == b"two" and _mode(path) == 0o666 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write_bytes(tmp_path / "a.bin", b"old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write(b"half")
        raise RuntimeError("killed")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def _official_bytes() -> bytes:
    model = vovnet.create_model("vovnet19_slim_dw", num_classes=0)
    buffer = io.BytesIO()
    torch.save(convert_state_dict(model.state_dict(), "vovnet", "official"), buffer)
    return buffer.getvalue()


@pytest.mark.slow  # a training run, exports and a pull, under each umask
def test_every_kind_of_written_file(tmp_path, umask, monkeypatch, capsys):
    """Shapes data, a run's outputs, a converted checkpoint, a pulled tag, ONNX and TorchScript exports and the
    per-image outputs of predict all get 0666 masked by the umask; every folder made for them 0777 masked."""
    out = tmp_path / "out"
    assert main(["make-shapes", str(out / "shapes"), "--n", "2", "--val-n", "1", "--image-size", "32"]) == 0
    run = out / "run"
    assert main(["train", "--model", "vovnet19_slim_dw", "--epochs", "1", "--limit-train", "16", "--limit-val", "8",
                 "--batch-size", "8", "--img-size", "32", "--quiet", "--out", str(run)]) == 0
    checkpoint = str(run / "last.safetensors")
    assert main(["export", checkpoint, str(out / "model.onnx"), "--exporter", "legacy"]) == 0
    assert main(["export", checkpoint, str(out / "model.pt")]) == 0

    timm_file = tmp_path / "timm.pth"
    torch.save(VovNet(model_cfgs["ese_vovnet19b_slim_dw"], num_classes=4).state_dict(), timm_file)
    assert main(["convert", "--from", "timm", str(timm_file), str(out / "converted.safetensors")]) == 0

    tag, name = "vovnet19_slim_dw.official_in1k", "vovnet19_ese_slim_dw_detectron2.pth"
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / name).write_bytes(_official_bytes())
    monkeypatch.setitem(PRETRAINED, tag, dataclasses.replace(PRETRAINED[tag], files=(WeightFile(name, ("http://unused/" + name,)),)))
    monkeypatch.setenv("VOVNET_HOME", str(out / "cache"))
    monkeypatch.setenv("VOVNET_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setenv("VOVNET_OFFLINE", "1")
    assert main(["pull", "--quiet", tag]) == 0

    image = tmp_path / "scene.png"
    image.write_bytes(png_bytes(render_scene(0, config=ShapesConfig(image_size=32)).image))
    names = ["background", "circle", "triangle", "rectangle", "ellipse"]
    detector = vovnet.create_detector("centermask", "vovnet19_slim_dw", names[1:], image_size=32, max_size=32)
    vovnet.save_detector(detector, tmp_path / "detector.safetensors")
    segmenter = vovnet.create_segmenter("fpn_semantic", "vovnet19_slim_dw", names, fpn_channels=16, head_channels=16)
    vovnet.save_segmenter(segmenter, tmp_path / "segmenter.safetensors")
    for kind in ("detector", "segmenter"):
        assert main(["predict", "--checkpoint", str(tmp_path / f"{kind}.safetensors"), str(image), "--out", str(out / kind)]) == 0
    capsys.readouterr()

    written = {p.relative_to(out).as_posix(): p for p in out.rglob("*") if p.parent.name != ".locks"}
    for kind in ("shapes/annotations/train.json", "shapes/val", "run/best.safetensors", "run/last.safetensors", "run/resume.pt",
                 "run/metrics.csv", "run/config.yaml", "run/summary.json", "run/curves.png", "model.onnx", "model.pt",
                 "converted.safetensors", f"cache/{name}", f"cache/{tag}.safetensors", "detector/predictions.json",
                 "segmenter/predictions.json"):
        assert kind in written, sorted(written)
    assert sum(n.endswith(".png") for n in written) >= 3 + 2  # shapes images and predict's drawings
    modes = {n: oct(_mode(p)) for n, p in written.items()}
    assert modes == {n: oct((0o777 if p.is_dir() else 0o666) & ~umask) for n, p in written.items()}
