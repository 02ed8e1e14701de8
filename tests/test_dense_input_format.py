"""Dense models (detectors, semantic segmenters) feed their backbone the pixel format of their weights:
detectron2's BGR 0..255 for the official backbones, ImageNet RGB (torchvision's numbers, bit for bit) by
default; the format is taken from ``pretrained=``, kept by checkpoints, and followed by deploy and export."""

import json

import pytest
import torch
from conftest import randomize_norm_stats, spread_detector_heads
from safetensors.torch import save_file
from torchvision.models.detection.transform import GeneralizedRCNNTransform

import vovnet
from vovnet import create_detector, create_segmenter, load_detector, load_segmenter, save_detector, save_segmenter
from vovnet.deployment import deploy
from vovnet.deployment.detection import compare_detections
from vovnet.deployment.segmentation import segmenter_onnx
from vovnet.engine.task import get_task, task_config
from vovnet.errors import UsageError
from vovnet.factory import build_with_backbone_weights
from vovnet.models.detection.builders import DetectorConfig
from vovnet.models.input_format import INPUT_FORMATS, InputFormat
from vovnet.models.segmentation.model import SegmenterConfig
from vovnet.weights.checkpoint import read_checkpoint, save_checkpoint, write_checkpoint
from vovnet.weights.hub import weights_input_format
from vovnet.weights.pretrained import DETECTRON2_INPUT

ARCHS = ["faster_rcnn", "mask_rcnn_sag", "fcos", "retinanet", "centermask"]
CLASSES = ["circle", "triangle"]
BACKBONE = "vovnet19_slim_dw"
DETECTRON2_MEAN = torch.tensor([103.530, 116.280, 123.675])[:, None, None]
BGR255 = INPUT_FORMATS["bgr255"]


def _detector(arch: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_detector(arch, BACKBONE, CLASSES, image_size=64, **options).eval()


def _backbone_input(model: torch.nn.Module, run) -> torch.Tensor:
    """The tensor ``model.backbone`` receives while ``run()`` runs."""
    seen = []
    handle = model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen[0]


# ---- the record ------------------------------------------------------------------------------------


def test_a_preprocessing_record_gives_its_pixel_format():
    assert InputFormat.from_record(DETECTRON2_INPUT.to_dict()) == BGR255
    assert InputFormat.from_record("rgb") == InputFormat("RGB", 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    # detectron2-style metadata without a scale: means on 0..255 say it
    assert InputFormat.from_record({"channel_order": "BGR", "mean": [103.530, 116.280, 123.675], "std": [1, 1, 1]}) == BGR255
    assert weights_input_format("vovnet39.official_in1k") == BGR255  # a tag's record, no download
    assert weights_input_format("vovnet57.timm_ra4_e3600_r256_in1k") == InputFormat("RGB", 1.0, (0.5,) * 3, (0.5,) * 3)
    assert weights_input_format("vovnet39.timm_ra_in1k") == INPUT_FORMATS["rgb"]
    assert weights_input_format(None) is None


@pytest.mark.parametrize(
    "bad, message",
    [
        ("bgr", "unknown input_format 'bgr'"),
        ({"channel_order": "BRG"}, "channel_order 'BRG'"),
        ({"means": [0, 0, 0]}, "unknown input_format field(s): means"),
        ({"mean": [0, 0]}, "3 values each"),
        ({"std": [1, 0, 1]}, "must be positive"),
        (3, "takes a name or a mapping"),
    ],
)
def test_a_bad_input_format_is_one_usage_error(bad, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DetectorConfig("fcos", BACKBONE, CLASSES, True, input_format=bad)
    with pytest.raises(UsageError):
        SegmenterConfig("fpn_semantic", BACKBONE, ("bg", "fg"), input_format=bad)


def test_configs_take_a_name_and_round_trip_through_json():
    cfg = DetectorConfig("fcos", BACKBONE, CLASSES, True, input_format="bgr255")
    assert cfg.input_format == BGR255 and cfg.effective_input_format == BGR255
    assert DetectorConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    seg = SegmenterConfig("deeplabv3", BACKBONE, ("bg", "fg"), input_format={"mean": [0.5] * 3, "std": [0.5] * 3})
    assert SegmenterConfig.from_dict(json.loads(json.dumps(seg.to_dict()))) == seg
    assert seg.effective_input_format == InputFormat("RGB", 1.0, (0.5,) * 3, (0.5,) * 3)


def test_without_a_format_the_dialect_decides():
    assert DetectorConfig("fcos", BACKBONE, CLASSES, True).effective_input_format == INPUT_FORMATS["rgb"]
    assert DetectorConfig("centermask", BACKBONE, CLASSES, True).effective_input_format == INPUT_FORMATS["rgb"]
    official = DetectorConfig("centermask", BACKBONE, CLASSES, True, dialect="centermask2")
    assert official.effective_input_format == BGR255
    assert SegmenterConfig("fpn_semantic", BACKBONE, ("bg", "fg")).effective_input_format == INPUT_FORMATS["rgb"]


# ---- detectors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_every_detector_feeds_its_backbone_bgr_0_255_minus_detectron2_means(arch):
    model = _detector(arch, input_format="bgr255")
    image = torch.rand(3, 64, 96)  # short side at min_size, both sides multiples of 32: no resize, no padding
    got = _backbone_input(model, lambda: model([image]))
    want = (image.flip(0) * 255 - DETECTRON2_MEAN) / 1
    assert got.shape == (1, 3, 64, 96)
    assert torch.equal(got[0], want)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_default_detector_input_is_torchvisions_bit_for_bit(arch):
    model = _detector(arch)
    reference = GeneralizedRCNNTransform(64, round(64 * 1333 / 800), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 50, 77, generator=g), torch.rand(3, 130, 61, generator=g)]  # resized up and down, padded
    targets = [{"boxes": torch.tensor([[2.0, 3.0, 40.0, 30.0]]), "labels": torch.tensor([1])} for _ in images]
    for training in (False, True):
        model.transform.train(training)
        reference.train(training)
        torch.manual_seed(5)  # training draws its size at random, from the same stream
        got, got_targets = model.transform([i.clone() for i in images], [dict(t) for t in targets])
        torch.manual_seed(5)
        want, want_targets = reference([i.clone() for i in images], [dict(t) for t in targets])
        assert torch.equal(got.tensors, want.tensors) and got.image_sizes == want.image_sizes
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(got_targets, want_targets))


@pytest.mark.parametrize("arch", ["faster_rcnn", "centermask"])
def test_the_format_survives_the_detector_checkpoint(arch, tmp_path):
    model = _detector(arch, input_format="bgr255")
    save_detector(model, tmp_path / "d.safetensors")
    loaded = load_detector(tmp_path / "d.safetensors")
    assert loaded.config.input_format == BGR255 and loaded.transform.input_format == BGR255
    image = torch.rand(3, 64, 96)
    assert torch.equal(_backbone_input(loaded, lambda: loaded([image])), _backbone_input(model, lambda: model([image])))


@pytest.mark.parametrize("dialect, want", [("torchvision", "rgb"), ("centermask2", "bgr255")])
def test_a_detector_checkpoint_without_the_field_loads_as_before(dialect, want, tmp_path):
    model = _detector("centermask", dialect=dialect)
    save_detector(model, tmp_path / "new.safetensors")
    _, meta = read_checkpoint(tmp_path / "new.safetensors")
    del meta["detector"]["input_format"]  # as written before the field existed
    write_checkpoint(tmp_path / "old.safetensors", model, meta)
    loaded = load_detector(tmp_path / "old.safetensors")
    assert loaded.config.input_format is None
    assert loaded.transform.input_format == INPUT_FORMATS[want]


def _backbone_file(path, preprocessing: dict | None) -> str:
    """A random-weight classification checkpoint of ``BACKBONE`` (ours with ``preprocessing``, else a foreign
    state dict that says nothing about its input)."""
    torch.manual_seed(0)
    model = vovnet.create_model(BACKBONE)
    if preprocessing is None:
        save_file(model.state_dict(), str(path))
    else:
        model.preprocessing = preprocessing
        save_checkpoint(model, path)
    return str(path)


def test_build_detector_takes_the_format_of_its_pretrained_weights(tmp_path, monkeypatch):
    official = _backbone_file(tmp_path / "official.safetensors", DETECTRON2_INPUT.to_dict())
    foreign = _backbone_file(tmp_path / "foreign.safetensors", None)
    cfg = DetectorConfig("fcos", BACKBONE, CLASSES, True, min_size=64, max_size=107)
    assert build_with_backbone_weights(cfg, official).transform.input_format == BGR255
    assert build_with_backbone_weights(cfg, official).config.input_format == BGR255
    model = build_with_backbone_weights(cfg, foreign)  # says nothing: ImageNet RGB, as before
    assert model.config.input_format is None and model.transform.input_format == INPUT_FORMATS["rgb"]
    official_cm = DetectorConfig("centermask", BACKBONE, CLASSES, True, dialect="centermask2")
    assert build_with_backbone_weights(official_cm, foreign).transform.input_format == BGR255  # the dialect's
    explicit = DetectorConfig("fcos", BACKBONE, CLASSES, True, input_format="rgb")
    assert build_with_backbone_weights(explicit, official).transform.input_format == INPUT_FORMATS["rgb"]  # the user wins
    # a tag: its registry record decides (the file it stands for here says ImageNet RGB)
    imagenet = _backbone_file(tmp_path / "imagenet.safetensors", {"channel_order": "RGB", "mean": [0.485, 0.456, 0.406],
                                                                   "std": [0.229, 0.224, 0.225]})
    monkeypatch.setattr("vovnet.factory.pretrained_file", lambda tag: imagenet)
    model = build_with_backbone_weights(cfg, f"{BACKBONE}.official_in1k")
    assert model.config.input_format == BGR255 and model.transform.input_format == BGR255


def test_a_deployed_bgr_detector_equals_the_eval_model():
    model = spread_detector_heads(randomize_norm_stats(_detector("centermask", input_format="bgr255", score_thresh=0.0)))
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 80, 112, generator=g), torch.rand(3, 96, 72, generator=g)]
    with torch.no_grad():
        want = model(images)
    deployed = deploy(model)
    assert deployed.model.transform.input_format == BGR255
    got = deployed(images)
    assert all(len(w["boxes"]) > 10 for w in want)
    for w, o in zip(want, got):
        agreement = compare_detections(w, o)
        assert agreement.ok(), str(agreement)
    with torch.no_grad():  # and the RGB model differs: the format is what the deployed copy followed
        rgb = _detector("centermask", score_thresh=0.0)
        rgb.load_state_dict(model.state_dict())
        assert not torch.allclose(rgb(images)[0]["scores"][:10], want[0]["scores"][:10])


# ---- segmenters ------------------------------------------------------------------------------------


def _segmenter(arch: str = "fpn_semantic", **options):
    torch.manual_seed(0)
    return randomize_norm_stats(create_segmenter(arch, BACKBONE, ["background", *CLASSES], **options))


def test_the_segmenter_feeds_its_backbone_the_format():
    images = torch.rand(2, 3, 64, 96)
    model = _segmenter(input_format="bgr255")
    got = _backbone_input(model, lambda: model(images))
    assert torch.equal(got, (images.flip(1) * 255 - DETECTRON2_MEAN) / 1)
    default = _segmenter()
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert torch.equal(_backbone_input(default, lambda: default(images)), (images - mean) / std)


def test_build_segmenter_takes_the_format_of_its_pretrained_weights(tmp_path, monkeypatch):
    official = _backbone_file(tmp_path / "official.safetensors", DETECTRON2_INPUT.to_dict())
    foreign = _backbone_file(tmp_path / "foreign.safetensors", None)
    cfg = SegmenterConfig("deeplabv3", BACKBONE, ("bg", "fg"))
    assert build_with_backbone_weights(cfg, official).input_format == BGR255
    assert build_with_backbone_weights(cfg, foreign).config.input_format is None
    assert build_with_backbone_weights(cfg, foreign).input_format == INPUT_FORMATS["rgb"]
    monkeypatch.setattr("vovnet.factory.pretrained_file", lambda tag: foreign)
    model = build_with_backbone_weights(cfg, f"{BACKBONE}.official_in1k")
    assert model.config.input_format == BGR255 and model.input_format == BGR255


def test_the_format_survives_the_segmenter_checkpoint(tmp_path):
    model = _segmenter("deeplabv3", input_format="bgr255")
    save_segmenter(model, tmp_path / "s.safetensors")
    loaded, meta = load_segmenter(tmp_path / "s.safetensors"), read_checkpoint(tmp_path / "s.safetensors")[1]
    assert loaded.config.input_format == BGR255
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    del meta["segmenter"]["input_format"]  # as written before the field existed
    write_checkpoint(tmp_path / "old.safetensors", model, meta)
    old = load_segmenter(tmp_path / "old.safetensors")
    assert old.config.input_format is None and old.input_format == INPUT_FORMATS["rgb"]


@pytest.mark.parametrize("refine_radius", [0, 3])
def test_the_deployed_and_exported_segmenter_follow_a_bgr_format(refine_radius):
    ort = pytest.importorskip("onnxruntime")
    model = _segmenter(input_format="bgr255", input_size=64, refine_radius=refine_radius).eval()
    x = torch.rand(1, 3, 72, 96)
    with torch.no_grad():
        want = model(x)
        rgb = _segmenter(input_size=64, refine_radius=refine_radius).eval()
        assert (rgb(x) - want).abs().max() > 1e-2  # the format changes the logits
    got = deploy(model)(x)
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-4
    session = ort.InferenceSession(segmenter_onnx(model, x), providers=["CPUExecutionProvider"])
    exported = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    assert ((exported - want).abs().max() / want.abs().max()).item() <= 1e-4


# ---- tasks -----------------------------------------------------------------------------------------


def test_train_options_set_the_format_and_a_detector_checkpoint_keeps_its_own(tmp_path):
    def task(kind: str, **options):
        return get_task(kind)(task_config(task=kind, model=BACKBONE, img_size=64, task_options=options, quiet=True))

    assert task("detect", input_format="bgr255").build_model(CLASSES).transform.input_format == BGR255
    assert task("segment", input_format="bgr255").build_model(["bg", *CLASSES]).input_format == BGR255
    with pytest.raises(UsageError, match="unknown input_format 'brg'"):
        task("detect", input_format="brg").build_model(CLASSES)
    save_detector(_detector("fcos", input_format="bgr255"), tmp_path / "d.safetensors")
    finetune = get_task("detect")(task_config(task="detect", arch="fcos", model=BACKBONE, img_size=64, quiet=True,
                                              pretrained=str(tmp_path / "d.safetensors")))
    assert finetune.build_model(["square"]).transform.input_format == BGR255  # what its weights expect
    finetune = get_task("detect")(task_config(task="detect", arch="fcos", model=BACKBONE, img_size=64, quiet=True,
                                              pretrained=str(tmp_path / "d.safetensors"), task_options={"input_format": "rgb"}))
    assert finetune.build_model(["square"]).transform.input_format == INPUT_FORMATS["rgb"]  # told otherwise
