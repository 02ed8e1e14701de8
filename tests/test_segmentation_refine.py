"""The guided-filter refinement of segmenters' class probabilities: the box filter and the colour guided
filter against direct implementations, what the filter does at an edge, and the segmenter, checkpoint and
CLI options that carry it."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vovnet import create_segmenter, load_segmenter, save_segmenter
from vovnet.cli import main
from vovnet.data.shapes import ShapesConfig, render_scene
from vovnet.engine.task import task_config
from vovnet.errors import UsageError
from vovnet.models.segmentation.model import SegmenterConfig
from vovnet.models.segmentation.refine import box_mean, guided_filter, refine_probabilities
from vovnet.tasks.segmentation import SegmentationMetrics, SegmentationTask


def _reference_guided_filter(guide, src, radius, eps):
    """He et al.'s colour guided filter (TPAMI 2013, eq. 19-21) as written: means by average pooling over the
    window clipped at the borders, each pixel's covariance inverted by torch.linalg.inv, in float64."""
    guide, src = guide.double(), src.double()

    def mean(x):
        return F.avg_pool2d(x, 2 * radius + 1, 1, radius, count_include_pad=False)

    n, _, h, w = guide.shape
    mean_i = mean(guide)
    sigma = torch.stack([torch.stack([mean(guide[:, j : j + 1] * guide[:, k : k + 1])[:, 0] for k in range(3)], -1)
                         for j in range(3)], -2) - mean_i.permute(0, 2, 3, 1)[..., :, None] * mean_i.permute(0, 2, 3, 1)[..., None, :]
    inverse = torch.linalg.inv(sigma + eps * torch.eye(3, dtype=torch.float64))  # [N, H, W, 3, 3]
    out = []
    for c in range(src.shape[1]):
        p = src[:, c : c + 1]
        cov = (torch.cat([mean(guide[:, k : k + 1] * p) for k in range(3)], 1) - mean_i * mean(p)).permute(0, 2, 3, 1)
        a = (cov[..., None, :] @ inverse)[..., 0, :]  # [N, H, W, 3]
        b = mean(p)[:, 0] - (a * mean_i.permute(0, 2, 3, 1)).sum(-1)
        q = (mean(a.permute(0, 3, 1, 2)) * guide).sum(1) + mean(b[:, None])[:, 0]
        out.append(q)
    return torch.stack(out, 1)


@pytest.mark.parametrize("radius", [0, 1, 3, 20])
def test_box_mean_is_average_pooling_clipped_at_the_borders(radius):
    x = torch.rand(2, 3, 7, 9, dtype=torch.float64)
    if radius < 4:  # average pooling takes padding up to half its window only
        expected = F.avg_pool2d(x, 2 * radius + 1, 1, radius, count_include_pad=False)
    else:  # a window wider than the image covers all of it
        expected = x.mean((-2, -1), keepdim=True).expand_as(x)
    assert torch.allclose(box_mean(x, radius), expected, atol=1e-12)


@pytest.mark.parametrize("radius, eps", [(1, 1e-2), (3, 1e-3)])
def test_guided_filter_matches_the_papers_algorithm(radius, eps):
    torch.manual_seed(0)
    guide = torch.rand(2, 3, 12, 15)
    src = torch.rand(2, 4, 12, 15).softmax(1)
    ours = guided_filter(guide, src, radius, eps)
    assert ours.dtype == torch.float32 and ours.shape == src.shape
    assert torch.allclose(ours.double(), _reference_guided_filter(guide, src, radius, eps), atol=2e-4)


def test_under_a_flat_guide_the_filter_is_a_double_box_mean():
    src = torch.rand(1, 2, 10, 10)
    flat = torch.full((1, 3, 10, 10), 0.4)
    assert torch.allclose(guided_filter(flat, src, 2, 1e-3), box_mean(box_mean(src, 2), 2), atol=1e-5)


def _disc_scene(size=64, stride=4):
    """A disc of one colour on another, with grain; its true mask; and class probabilities from the mask
    at ``stride``, area-averaged and blurred over 3x3 cells, as a stride-4 head would give them."""
    torch.manual_seed(1)
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    mask = ((yy - 30.3) ** 2 + (xx - 35.1) ** 2 <= 17.2**2).long()
    colours = torch.tensor([[0.2, 0.5, 0.7], [0.9, 0.3, 0.2]])
    image = (colours[mask].permute(2, 0, 1) + 0.02 * torch.randn(3, size, size)).clamp(0, 1)[None]
    onehot = F.one_hot(mask, 2).permute(2, 0, 1).float()[None]
    return image, mask, F.avg_pool2d(F.avg_pool2d(onehot, stride), 3, 1, 1, count_include_pad=False)


def test_refined_boundaries_follow_the_image_edges():
    image, mask, low = _disc_scene()
    upsampled = F.interpolate(low, size=mask.shape, mode="bilinear", align_corners=False)
    errors_before = (upsampled.argmax(1)[0] != mask).sum().item()
    refined = refine_probabilities(image, low, radius=2, eps=1e-3)  # fitted at stride 4, applied at full size
    assert refined.shape == (1, 2, 64, 64)
    assert torch.allclose(refined.sum(1), torch.ones(1, 64, 64), atol=1e-5) and refined.min() >= 0
    errors_after = (refined.argmax(1)[0] != mask).sum().item()
    assert errors_before >= 40 and errors_after == 0


def _segmenter(**options):
    torch.manual_seed(0)
    return create_segmenter("fpn_semantic", "vovnet19_slim_dw", ["background", "disc"], fpn_channels=32, head_channels=32,
                            input_size=64, **options)


def test_segmenter_refines_in_eval_mode_only():
    model = _segmenter(refine_radius=2, refine_eps=1e-2)
    images = torch.rand(2, 3, 80, 96)

    def head_logits():  # the head's stride-4 logits, as the model computes them inside
        x = F.interpolate(model.input_format.normalize(images), scale_factor=64 / 80, mode="bilinear", antialias=True)
        return model.head(model.backbone(x))

    with torch.no_grad():
        trained = model.train()(images)  # training scores the plain upsampled logits
        assert torch.allclose(trained, F.interpolate(head_logits(), size=(80, 96), mode="bilinear"), atol=1e-5)
        out = model.eval()(images)
        assert out.shape == (2, 2, 80, 96)
        assert torch.allclose(out.exp(), refine_probabilities(images, head_logits().softmax(1), 2, 1e-2), atol=1e-5)
        model.config = dataclasses.replace(model.config, refine_radius=0)
        assert torch.allclose(model(images), F.interpolate(head_logits(), size=(80, 96), mode="bilinear"), atol=1e-5)


def test_deeplab_logits_are_refined_at_stride_4():
    model = create_segmenter("deeplabv3", "vovnet19_slim_dw", ["background", "disc"], input_size=64, refine_radius=2).eval()
    images = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        low = model.head(model.backbone(model.input_format.normalize(images)))  # stride 16: [1, 2, 4, 5]
        stride_4 = F.interpolate(low, size=(16, 20), mode="bilinear").softmax(1)
        assert low.shape[-2:] == (4, 5)
        assert torch.allclose(model(images).exp(), refine_probabilities(images, stride_4, 2, 1e-3), atol=1e-5)


def test_refine_settings_travel_in_checkpoints_and_default_to_off(tmp_path):
    model = _segmenter(refine_radius=3, refine_eps=0.01).eval()
    loaded = load_segmenter(save_segmenter(model, tmp_path / "seg.safetensors"))
    assert (loaded.config.refine_radius, loaded.config.refine_eps) == (3, 0.01)
    older = {k: v for k, v in model.config.to_dict().items() if not k.startswith("refine")}  # a checkpoint from before
    assert SegmenterConfig.from_dict(older).refine_radius == 0
    for radius, eps in ((-1, 1e-3), (1.5, 1e-3), (2, 0.0)):
        with pytest.raises(UsageError, match="refine_radius takes a whole number"):
            _segmenter(refine_radius=radius, refine_eps=eps)


def test_the_filter_is_on_for_the_shapes_scenes_and_asked_for_elsewhere():
    assert SegmentationTask(task_config(task="segment")).options["refine_radius"] == 5
    assert SegmentationTask(task_config(task="segment", data="masks:a:b")).options["refine_radius"] == 0
    given = SegmentationTask(task_config(task="segment", data="masks:a:b", task_options={"refine_radius": 2}))
    assert given.options["refine_radius"] == 2
    with pytest.raises(UsageError, match="refine_radius takes a whole number"):
        SegmentationTask(task_config(task="segment", task_options={"refine_eps": -1}))


def test_eval_options_override_the_checkpoints_filter(tmp_path, capsys):
    classes = ["background", "circle", "triangle", "rectangle", "ellipse"]
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for i in range(4):
        scene = render_scene(i, config=ShapesConfig(image_size=48))
        Image.fromarray(scene.image.permute(1, 2, 0).numpy()).save(tmp_path / "images" / f"s{i}.png")
        Image.fromarray(scene.class_map.numpy().astype(np.uint8)).save(tmp_path / "masks" / f"s{i}.png")
    (tmp_path / "masks" / "classes.txt").write_text("\n".join(classes))
    data = f"masks:{tmp_path / 'images'}:{tmp_path / 'masks'}"
    model = create_segmenter("fpn_semantic", "vovnet19_slim_dw", classes, fpn_channels=32, head_channels=32, input_size=48)
    checkpoint = save_segmenter(model.eval(), tmp_path / "seg.safetensors")  # saved without the filter
    args = ["eval", "--checkpoint", str(checkpoint), "--data", data, "--val-fraction", "0.5", "--json"]
    capsys.readouterr()
    assert main([*args, "-o", "refine_radius=2"]) == 0
    refined = json.loads(capsys.readouterr().out)["metrics"]
    # The same numbers by hand: the checkpoint's network with the filter switched on.
    task = SegmentationTask(task_config(task="segment", data=data, val_fraction=0.5, img_size=48))
    model = load_segmenter(checkpoint, refine_radius=2)
    metrics = SegmentationMetrics(classes)
    with torch.no_grad():
        for images, masks in task.build_data(train=False, checkpoint={"class_names": classes}).val:
            metrics.update(model(images[None]), masks[None])
    assert refined["miou"] == pytest.approx(metrics.compute()["miou"], rel=1e-6)
    assert main([*args]) == 0  # without the option: the checkpoint's own (no filter), another answer
    assert json.loads(capsys.readouterr().out)["metrics"]["pixel_acc"] != refined["pixel_acc"]
    assert main([*args, "-o", "refine_radius=-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refine_radius takes a whole number of 0 or more" in err
