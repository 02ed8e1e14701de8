"""One inference path per model: eager, deployed and exported detectors run the model's own public stages, so a
post-processing setting given through the model's config reaches all three."""

import pytest
import torch
from conftest import randomize_norm_stats, spread_detector_heads
from torchvision.ops import box_iou

import vovnet
from vovnet import create_detector, load_detector, save_detector
from vovnet.deployment.detection import check_images, compare_detections, detector_onnx
from vovnet.models.detection.stages import DetectorStages


def _checkpoint(arch: str, tmp_path, **options):
    torch.manual_seed(0)
    model = create_detector(arch, "vovnet19_slim_dw", ["a", "b"], image_size=96, score_thresh=0.0, **options)
    randomize_norm_stats(spread_detector_heads(model))
    return save_detector(model.eval(), tmp_path / f"{arch}.safetensors")


def _onnx_detections(model, image):
    import onnxruntime as ort

    data, names = detector_onnx(model, image)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return dict(zip(names, (torch.from_numpy(o) for o in session.run(None, {"image": image.numpy()}))))


@pytest.mark.slow  # an ONNX export per arch
@pytest.mark.parametrize("arch", ["centermask", "mask_rcnn_sag", "retinanet"])
def test_a_postprocessing_setting_in_the_config_reaches_eager_deployed_and_exported_outputs(arch, tmp_path):
    path = _checkpoint(arch, tmp_path)
    image = check_images()[0]
    full, few = load_detector(path), load_detector(path, detections_per_img=3, nms_thresh=0.3)
    assert few.config.detections_per_img == 3 and few.config.nms_thresh == 0.3
    with torch.no_grad():
        want_all, eager = full([image])[0], few([image])[0]
    deployed = vovnet.deploy(few)([image])[0]
    exported = _onnx_detections(few, image)
    assert len(want_all["scores"]) > 3  # without the setting there are more
    for got in (eager, deployed, exported):
        assert len(got["scores"]) == 3
    assert compare_detections(eager, deployed).ok() and compare_detections(eager, exported).ok()
    # the stricter NMS: no two kept boxes of a class overlap by more than 0.3 (random weights give empty boxes: IoU 0)
    iou = torch.triu(box_iou(eager["boxes"], eager["boxes"]), diagonal=1).nan_to_num(0.0)
    same_class = eager["labels"][:, None] == eager["labels"][None, :]
    assert (iou[same_class] <= 0.3 + 1e-6).all()


def test_the_eval_forward_is_the_stages_in_order(tmp_path):
    """``model(images)`` in eval mode is ``transform -> features -> detect -> predict_masks -> postprocess``, each a
    public method: replacing one (here ``postprocess``) changes what the model returns."""
    model = load_detector(_checkpoint("centermask", tmp_path))
    assert isinstance(model, DetectorStages)
    calls = []
    for name in ("features", "detect", "predict_masks", "postprocess"):
        original = getattr(model, name)
        setattr(model, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    with torch.no_grad():
        model([check_images()[0]])
    assert calls == ["features", "detect", "predict_masks", "postprocess"]


def test_a_loaded_detector_refuses_settings_that_change_its_layers(tmp_path):
    path = _checkpoint("fcos", tmp_path)
    with pytest.raises(vovnet.UsageError, match="lite: a loaded detector takes score_thresh, nms_thresh, detections_per_img"):
        load_detector(path, lite=True)
