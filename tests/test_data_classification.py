"""Classification data: digits split, image folders, torchvision layouts built locally, image modes, bad files."""

from __future__ import annotations

import io
import json
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from vovnet.cli import main
from vovnet.data.classification import (
    BatchRandomAffine,
    Preprocessing,
    build_classification_data,
    digits_arrays,
    load_image,
    to_rgb,
)
from vovnet.errors import DataError

PREP = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 32)


def make_folder(root, counts: dict[str, int], size=(40, 36)):
    """``root/<class>/<i>.png`` with ``counts[class]`` small images (an empty folder for 0)."""
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = np.full((*size[::-1], 3), (40 * c + 5 * i) % 255, np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


def jpeg_bytes(size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


# ---- digits -------------------------------------------------------------------------------------
def test_digits_split_is_fixed_and_stratified():
    train_x, train_y, test_x, test_y = digits_arrays()
    assert train_x.shape == (1437, 1, 8, 8) and test_x.shape == (360, 1, 8, 8)
    assert 0.0 <= float(train_x.min()) and float(train_x.max()) == 1.0
    per_class = torch.bincount(test_y, minlength=10)
    assert per_class.min() >= 35 and per_class.max() <= 37  # about 20 % of each class's ~180 images
    again = digits_arrays()
    assert torch.equal(again[3], test_y) and torch.equal(again[2], test_x)


def test_digits_batches_are_normalised_rgb():
    data = build_classification_data("digits", PREP, limit_train=100)
    assert data.in_memory and len(data.train) == 100 and len(data.val) == 360 and data.class_names[3] == "3"
    image, label = data.val[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and isinstance(label, int)
    pixels = image * torch.tensor(PREP.std)[:, None, None] + torch.tensor(PREP.mean)[:, None, None]
    assert torch.allclose(pixels[0], pixels[1], atol=1e-5) and torch.allclose(pixels[0], pixels[2], atol=1e-5)
    assert torch.allclose(pixels[:, 0, 0], torch.zeros(3), atol=1e-5) and pixels.max() > 0.9  # black background
    batch = data.train.__getitems__(list(range(8)))
    assert len(batch) == 8 and batch[0][0].shape == (3, 32, 32)


def test_batch_random_affine_draws_per_image():
    x = torch.rand(1, 1, 32, 32).expand(6, 1, 32, 32).contiguous()
    identity = BatchRandomAffine(degrees=0, translate=0, scale=(1, 1))
    assert torch.allclose(identity(x), x, atol=1e-5)
    torch.manual_seed(0)
    warped = BatchRandomAffine()(x)
    assert warped.shape == x.shape
    assert all(not torch.allclose(warped[0], warped[i]) for i in range(1, 6))


# ---- image modes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "1", "CMYK", "I;16", "I", "F"])
def test_every_image_mode_becomes_8bit_rgb(mode):
    img = Image.new(mode, (5, 4))
    if mode == "P":
        img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        img.info["transparency"] = 0
    rgb = to_rgb(img)
    assert rgb.mode == "RGB" and rgb.size == (5, 4)


def test_sixteen_bit_png_keeps_its_range(tmp_path):
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_image(path))
    assert out.dtype == np.uint8 and out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert len(np.unique(out[..., 0])) > 32  # scaled, not clipped at 255


def test_mixed_modes_in_one_folder(tmp_path):
    root = make_folder(tmp_path / "mixed", {"a": 2, "b": 2})
    Image.new("L", (30, 30), 128).save(root / "a" / "gray.png")
    Image.new("RGBA", (30, 30), (1, 2, 3, 4)).save(root / "a" / "alpha.png")
    Image.new("P", (30, 30)).save(root / "b" / "palette.gif")
    Image.fromarray(np.full((30, 30), 40000, np.uint16)).save(root / "b" / "deep.png")
    data = build_classification_data(str(root), PREP, val_fraction=0.5)
    items = [data.train[i][0] for i in range(len(data.train))] + [data.val[i][0] for i in range(len(data.val))]
    assert len(items) == 8 and all(x.shape == (3, 32, 32) for x in items)


# ---- folders --------------------------------------------------------------------------------------
def test_train_and_val_folders(tmp_path):
    make_folder(tmp_path / "train", {"cat": 3, "dog": 4})
    make_folder(tmp_path / "val", {"cat": 1, "dog": 2})
    data = build_classification_data(str(tmp_path), PREP)
    assert data.class_names == ["cat", "dog"] and len(data.train) == 7 and len(data.val) == 3
    assert data.info["layout"] == "train/ + val/" and not data.in_memory
    x, y = data.train[5]
    assert x.shape == (3, 32, 32) and y == 1


def test_one_folder_is_split_stratified_with_a_seed(tmp_path):
    root = make_folder(tmp_path, {"a": 10, "b": 10, "c": 5})
    first = build_classification_data(str(root), PREP, val_fraction=0.2, seed=3)
    second = build_classification_data(str(root), PREP, val_fraction=0.2, seed=3)
    assert len(first.train) == 20 and len(first.val) == 5
    assert first.val.items == second.val.items
    assert sorted(label for _, label in first.val.items) == [0, 0, 1, 1, 2]


def test_unreadable_files_are_skipped_or_fail_with_strict(tmp_path):
    root = make_folder(tmp_path, {"a": 4, "b": 4})
    (root / "a" / "garbage.jpg").write_bytes(b"this is not an image")
    png = (root / "b" / "0.png").read_bytes()
    (root / "b" / "cut.png").write_bytes(png[: len(png) // 2])
    (root / "b" / "cut.jpg").write_bytes(jpeg_bytes()[:600])
    (root / "a" / "empty.png").write_bytes(b"")
    data = build_classification_data(str(root), PREP, val_fraction=0.25)
    assert sorted(p.rsplit("/", 1)[-1] for p in data.skipped) == ["cut.jpg", "cut.png", "empty.png", "garbage.jpg"]
    assert len(data.train) + len(data.val) == 8 and data.info["skipped"] == 4
    with pytest.raises(DataError, match=r"unreadable image .*4 such file\(s\)"):
        build_classification_data(str(root), PREP, strict=True)


@pytest.mark.parametrize("train, val, message", [
    ({"cat": 3, "dog": 0}, {"cat": 1, "dog": 1}, "class folder.* without readable images: dog"),
    ({"cat": 2, "dog": 2}, {"cat": 1, "cow": 1}, "different classes.*cow, dog"),
])
def test_bad_train_val_trees_are_refused(tmp_path, train, val, message):
    make_folder(tmp_path / "train", train)
    make_folder(tmp_path / "val", val)
    with pytest.raises(DataError, match=message):
        build_classification_data(str(tmp_path), PREP)


def test_a_class_of_only_broken_files_counts_as_empty(tmp_path):
    root = make_folder(tmp_path, {"a": 3, "b": 0})
    (root / "b" / "x.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="without readable images: b"):
        build_classification_data(str(root), PREP)


def test_single_class_and_no_class_are_refused(tmp_path):
    make_folder(tmp_path / "one", {"only": 4})
    with pytest.raises(DataError, match="only class 'only'.*at least two classes"):
        build_classification_data(str(tmp_path / "one"), PREP)
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        build_classification_data(str(tmp_path / "none"), PREP)


def test_unknown_data_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="neither a folder nor one of digits, cifar10"):
        build_classification_data(str(tmp_path / "missing"), PREP)


def test_training_on_a_folder_logs_and_counts_skipped_files(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs", {"a": 6, "b": 6})
    (root / "a" / "bad.png").write_bytes(b"\x89PNG broken")
    (root / "b" / "bad.jpg").write_bytes(b"")
    out = tmp_path / "run"
    argv = ["train", "--data", str(root), "--epochs", "1", "--batch-size", "4", "--quiet", "--workers", "0"]
    assert main(argv + ["--out", str(out)]) == 0
    assert "skipped 2 unreadable image(s)" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_files"] == 2 and len(summary["skipped_examples"]) == 2
    assert main(argv + ["--out", str(tmp_path / "strict"), "--strict"]) == 1
    err = capsys.readouterr().err
    assert "unreadable image" in err and "--strict" in err and "bad." in err
    assert not (tmp_path / "strict" / "resume.pt").exists()


def test_single_class_fails_before_training(tmp_path, capsys):
    make_folder(tmp_path / "one", {"only": 4})
    assert main(["train", "--data", str(tmp_path / "one"), "--out", str(tmp_path / "run"), "--quiet"]) == 1
    assert "at least two classes" in capsys.readouterr().err
    assert not (tmp_path / "run" / "resume.pt").exists()


# ---- torchvision datasets, laid out locally -----------------------------------------------------------
def write_idx(path, array: np.ndarray) -> None:
    magic = 0x0803 if array.ndim == 3 else 0x0801
    path.write_bytes(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes())


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_layouts(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    data = build_classification_data(name, PREP, data_root=str(tmp_path))
    assert len(data.train) == 12 and len(data.val) == 5 and len(data.class_names) == 10
    image, label = data.train[3]
    assert image.shape == (3, 32, 32) and label == 3


def test_cifar10_layout(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)  # our fake files have other md5s
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 9]}
        (base / name).write_bytes(pickle.dumps(batch))
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": classes}))
    data = build_classification_data("cifar10", PREP, data_root=str(tmp_path), limit_train=7)
    assert data.class_names == classes and len(data.train) == 7 and len(data.val) == 4
    image, label = data.val[3]
    assert image.shape == (3, 32, 32) and label == 9


def test_missing_torchvision_data_asks_for_download(tmp_path):
    with pytest.raises(DataError, match=r"cifar10 not found under .*pass --download"):
        build_classification_data("cifar10", PREP, data_root=str(tmp_path))
