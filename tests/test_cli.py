import json
import subprocess
import sys

import pytest
import torch
from test_models import PARAMS
from timm.models.vovnet import VovNet, model_cfgs

import vovnet
from vovnet.cli import main


@pytest.mark.slow
def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["params"] for r in rows} == PARAMS
    assert rows[0]["feature_channels"] == [64, 112, 256, 384, 512]


@pytest.mark.slow
def test_models_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "vovnet39" in out and "26,209,128" in out and "7.08" in out


def test_convert_cli_round_trip(tmp_path, capsys):
    torch.save(VovNet(model_cfgs["ese_vovnet19b_slim_dw"], num_classes=4).state_dict(), tmp_path / "t.pth")
    assert main(["convert", "--from", "timm", str(tmp_path / "t.pth"), str(tmp_path / "o.safetensors"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "vovnet19_slim_dw" and info["num_classes"] == 4
    assert vovnet.load_checkpoint(tmp_path / "o.safetensors").num_classes == 4


def _run(*args):
    return subprocess.run([sys.executable, "-m", "vovnet", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # a fresh interpreter
def test_cli_errors_are_one_line_with_exit_codes(tmp_path, capsys):
    """``python -m vovnet`` exits with the error's code and prints nothing but the one line, from the first
    import on; the second error goes through the same ``main`` in this process (an interpreter costs ~10 s)."""
    unknown = _run("convert", "--from", "timm", "--model", "vovnet40", "a.pth", "b.safetensors")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == ["vovnet convert: error: unknown model 'vovnet40'; did you mean vovnet99, vovnet57, vovnet39?"]
    (tmp_path / "junk.pth").write_bytes(b"junk")
    code = main(["convert", "--from", "official", str(tmp_path / "junk.pth"), str(tmp_path / "o.safetensors")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "junk.pth: a text file, not a checkpoint" in err
    assert not (tmp_path / "o.safetensors").exists()


def test_usage_error_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["convert", "--from", "caffe", "a", "b"])
    assert e.value.code == 2


def test_version_and_env(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"vovnet {vovnet.__version__}\n"
    assert main(["env", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env["packages"]["vovnet"] == vovnet.__version__
    assert env["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert {"torchvision", "onnxruntime"} <= set(env["packages"]) and env["cpu"]["cores"] >= 1
    assert len(env["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert main(["env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"vovnet: {vovnet.__version__}" and any(line.startswith("CPU: ") for line in lines)


@pytest.mark.parametrize("kind", ["a JPEG image", "a text file", "an empty file"])
def test_a_file_that_is_not_a_checkpoint_is_named_in_one_line_by_every_reader(tmp_path, capsys, kind):
    from PIL import Image

    path = tmp_path / {"a JPEG image": "photo.jpg", "a text file": "notes.txt", "an empty file": "empty.pth"}[kind]
    if kind == "a JPEG image":
        Image.new("RGB", (8, 8)).save(path)
    else:
        path.write_text("a line of text\n" if kind == "a text file" else "")
    image = tmp_path / "image.png"
    Image.new("RGB", (8, 8)).save(image)
    readers = [
        ["convert", "--from", "official", path, tmp_path / "o.safetensors"], ["convert", "--from", "timm", path, tmp_path / "o.safetensors"],
        ["eval", "--checkpoint", path], ["predict", "--checkpoint", path, image], ["export", path, tmp_path / "o.onnx"],
        ["train", "--pretrained", path, "--epochs", "1", "--out", tmp_path / "run"], ["bench", "--checkpoint", path, "--task", "detect"],
    ]
    for argv in readers:
        assert main([str(a) for a in argv]) == 1, argv
        assert capsys.readouterr().err.splitlines() == [f"vovnet {argv[0]}: error: {path}: {kind}, not a checkpoint"], argv
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "o.onnx").exists()
