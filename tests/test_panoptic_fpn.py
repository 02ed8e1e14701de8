"""Panoptic FPN on COCO panoptic data: its semantic loss (against an independent computation), a training step that
reaches the semantic head, fine-tuning onto another stuff set, and ``vovnet eval`` reporting PQ / SQ / RQ. Tiny
V-19-slim-DW models on the generated set of test_panoptic_data.py (48 x 64 px)."""

import json

import pytest
import torch
import torch.nn.functional as F
from test_panoptic_data import STUFF, THINGS, spec, write_panoptic_set

import vovnet
from vovnet.cli import main
from vovnet.data.detection import collate, open_dataset, without_crowd
from vovnet.data.panoptic import PanopticClasses
from vovnet.engine.task import task_config
from vovnet.tasks.detection.task import DetectionTask
from vovnet.weights.detector_checkpoint import save_detector


def tiny_panoptic_fpn(stuff=STUFF, seed=0):
    torch.manual_seed(seed)
    return vovnet.create_detector("panoptic_fpn", "vovnet19_slim_dw", THINGS, stuff_classes=("things", *stuff),
                                  dialect="detectron2", image_size=48, lite=True)


@pytest.fixture(scope="module")
def panoptic_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("panoptic")
    write_panoptic_set(root)
    return root


@pytest.fixture(scope="module")
def batch(panoptic_set):
    data = open_dataset(spec(panoptic_set), "val", image_size=48, seed=0, strict=True, train=False)
    images, targets = collate([data[0], data[1]])
    return images, [without_crowd(t) for t in targets]


def test_a_training_step_trains_the_semantic_head_with_detectron2s_loss(batch):
    images, targets = batch
    model = tiny_panoptic_fpn().train()
    losses = model(images, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask", "loss_sem_seg"}
    sum(losses.values()).backward()
    assert model.sem_seg_head.predictor.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.sem_seg_head.parameters())
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0

    # The semantic loss, computed here on its own: the images are 48 x 64 at a 48 px short side, so the network sees
    # them unresized, padded to 64 x 64; the targets padded with 255 alike; logits x4 bilinear; mean over labelled pixels.
    with torch.no_grad():
        batch_images, _ = model.transform(images)
        assert batch_images.tensors.shape[-2:] == (64, 64) and batch_images.image_sizes == [(48, 64), (48, 64)]
        logits = model.sem_seg_head(model.backbone(batch_images.tensors))
        logits = F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)
        target = torch.full((2, 64, 64), 255, dtype=torch.int64)
        target[:, :48, :64] = torch.stack([t["sem_seg"] for t in targets]).long()
        labelled = target != 255
        log_p = logits.log_softmax(dim=1).permute(0, 2, 3, 1)[labelled]  # [pixels, classes]
        want = -log_p.gather(1, target[labelled][:, None]).mean() * 0.5
        assert labelled.sum() == 2 * (48 * 64 - 2 * 64)  # the void band is left out
        assert losses["loss_sem_seg"].item() == pytest.approx(want.item(), rel=1e-5)


def test_instance_targets_keep_the_mask_rcnn_losses(batch):
    images, targets = batch
    model = tiny_panoptic_fpn().train()
    losses = model(images, [{k: t[k] for k in ("boxes", "labels", "masks")} for t in targets])
    assert "loss_sem_seg" not in losses
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.sem_seg_head.parameters())


def test_an_image_without_labelled_pixels_gives_a_zero_semantic_loss(batch):
    images, targets = batch
    model = tiny_panoptic_fpn().train()
    void = [{**t, "sem_seg": torch.full_like(t["sem_seg"], 255)} for t in targets]
    assert model(images, void)["loss_sem_seg"].item() == 0.0


def test_fine_tuning_onto_other_stuff_starts_the_semantic_predictor_afresh(tmp_path, capsys):
    source = tiny_panoptic_fpn(stuff=("sky", "grass", "road"), seed=1)
    path = save_detector(source, tmp_path / "pan.safetensors")
    config = task_config(task="detect", arch="panoptic_fpn", model="vovnet19_slim_dw", img_size=48, pretrained=str(path),
                         data="coco-panoptic:x.json:y")
    model = DetectionTask(config).build_model(PanopticClasses(THINGS, STUFF))
    assert "re-initialised for 2 classes: sem_seg_head.predictor" in capsys.readouterr().out
    assert model.config.stuff_classes == ("things", *STUFF) and model.sem_seg_head.predictor.weight.shape[0] == 3
    own, theirs = model.state_dict(), source.state_dict()
    assert torch.equal(own["sem_seg_head.scale_heads.p5.0.weight"], theirs["sem_seg_head.scale_heads.p5.0.weight"])
    assert torch.equal(own["roi_heads.box_predictor.cls_score.weight"], theirs["roi_heads.box_predictor.cls_score.weight"])


def test_training_from_a_backbone_needs_panoptic_data():
    config = task_config(task="detect", arch="panoptic_fpn", model="vovnet19_slim_dw", img_size=48, data="shapes")
    with pytest.raises(vovnet.errors.UsageError, match="coco-panoptic"):
        DetectionTask(config).build_model(["a", "b"])


@pytest.mark.slow  # two evaluations, 12 s
def test_eval_reports_panoptic_quality(panoptic_set, tmp_path, capsys):
    path = save_detector(tiny_panoptic_fpn().eval(), tmp_path / "pan.safetensors")
    args = ["eval", "--checkpoint", str(path), "--data", spec(panoptic_set), "--workers", "0", "--batch-size", "2"]
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "bbox: AP" in said and "segm: AP" in said and "panoptic quality: not computed" not in said
    assert "panoptic: PQ " in said and "  things: PQ " in said and "  stuff: PQ " in said and "  sky " in said
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("pq", "sq", "rq", "pq_things", "sq_things", "rq_things", "pq_stuff", "sq_stuff", "rq_stuff", "bbox_map", "segm_map"):
        assert 0 <= result["metrics"][key] <= 1, key
    # every ground truth is counted: 3 images with two circles, a square (the crowd region aside), sky and grass
    assert result["panoptic_categories"]["all"] == 4 and set(result["panoptic_per_class"]) == {*THINGS, *STUFF}


def test_eval_errors_are_one_line(panoptic_set, tmp_path, capsys):
    other = save_detector(tiny_panoptic_fpn(stuff=("sky", "road")).eval(), tmp_path / "other.safetensors")
    assert main(["eval", "--checkpoint", str(other), "--data", spec(panoptic_set)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "other stuff classes than the checkpoint's semantic head (only in one of them: grass, road)" in err
    assert main(["eval", "--checkpoint", str(other), "--data", spec(panoptic_set) + ":nowhere"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "PNG folder nowhere does not exist" in err
    assert main(["eval", "--checkpoint", str(other), "--data", "coco-panoptic:only.json"]) == 2
    assert "coco-panoptic:PANOPTIC.json:IMAGE_DIR[:PNG_DIR]" in capsys.readouterr().err


@pytest.mark.slow  # a training run and its evaluation
def test_train_a_panoptic_fpn_on_panoptic_data(panoptic_set, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--task", "detect", "--arch", "panoptic_fpn", "--data", spec(panoptic_set), "--model", "vovnet19_slim_dw",
            "-o", "dialect=detectron2", "-o", f"val_data={spec(panoptic_set)}", "--img-size", "48", "--epochs", "1",
            "--batch-size", "2", "--quiet", "--workers", "0", "--out", str(run)]
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["final_metrics"]["pq"] <= 1 and summary["data"]["stuff_classes"] == STUFF
    assert vovnet.load_detector(run / "last.safetensors").config.stuff_classes == ("things", *STUFF)
