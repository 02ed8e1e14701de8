"""Whole detectors and semantic segmenters as benchmark subjects: the networks, the input, the timed step
and its stages. Used by the worker processes of :mod:`vovnet.bench.dense_bench`.

Every subject sees the same 640x480 image, which the network resizes to its input size itself (short side
``img_size``, as the detectors' and segmenters' own transforms do; torchvision's DeepLabV3 has none, so it
is handed the image already resized). Detectors keep every candidate (score threshold 0) and the best
``detections`` of them, so ours and torchvision's do the same work in their mask heads and pasting.
Weights are random (torchvision's with ``weights=None, weights_backbone=None``): nothing is downloaded. Ours
may instead be a checkpoint (a trained or converted detector or segmenter, as :func:`vovnet.load_detector`
and :func:`load_segmenter` read it), rebuilt at the benchmark's short side with the same score threshold
and detection count.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import detection as tv_detection
from torchvision.models import segmentation as tv_segmentation

from ..deployment.detection import detector_onnx
from ..deployment.optimize import deploy as deploy_model
from ..deployment.segmentation import segmenter_onnx
from ..errors import CheckpointError
from ..factory import create_detector, create_segmenter, load_detector, load_segmenter
from ..models.detection.stages import DetectorStages
from ..weights.checkpoint import read_checkpoint

IMAGE_HW = (480, 640)
DETECT_CLASSES = 80  # COCO's
SEGMENT_CLASSES = 21  # Pascal VOC's, torchvision's segmentation default
BASELINES = {"detect": "maskrcnn_resnet50_fpn", "segment": "deeplabv3_resnet50"}
STAGES = {"detect": ("backbone", "heads", "masks", "post-processing"), "segment": ("backbone", "heads", "post-processing")}


def bench_image(seed: int = 0) -> torch.Tensor:
    """The benchmark's input: a ``[3, 480, 640]`` image of smooth random colours in 0..1."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, IMAGE_HW[0] // 16, IMAGE_HW[1] // 16, generator=g)
    return F.interpolate(coarse, size=IMAGE_HW, mode="bilinear", align_corners=False)[0]


@dataclass(frozen=True)
class CheckpointFacts:
    """What a detector or segmenter checkpoint decides of its benchmark: the task, the arch, the backbone and
    the short side it resizes images to (None: it takes them at their own size)."""

    task: str
    arch: str
    model: str
    img_size: int | None


def checkpoint_facts(path: str) -> CheckpointFacts:
    """The :class:`CheckpointFacts` of the checkpoint at ``path``; CheckpointError (one line) for a missing or
    unreadable file, or one that is not a detector or segmenter checkpoint."""
    _, meta = read_checkpoint(path)
    task = (meta or {}).get("task")
    if task == "detect":
        return CheckpointFacts(task, meta["arch"], meta["model"], meta["detector"].get("min_size"))
    if task == "segment":
        cfg = meta["segmenter"]
        return CheckpointFacts(task, cfg["arch"], cfg["model"], cfg.get("input_size") or None)
    found = "no vovnet metadata" if meta is None else f"a {task or 'classification'} checkpoint"
    raise CheckpointError(f"{path}: not a detector or segmenter checkpoint ({found})")


def _keep_detections(net: nn.Module, detections: int) -> nn.Module:
    """``net`` in eval mode, keeping its best ``detections`` per image."""
    if hasattr(net, "roi_heads"):
        net.roi_heads.detections_per_img = detections
    else:
        net.detections_per_img = detections
    return net.eval()


def build_detector(source: str, arch: str, model: str, img_size: int, detections: int, checkpoint: str = "") -> nn.Module:
    """Ours (``create_detector(arch, model)``, 80 classes, or the detector saved at ``checkpoint``) or torchvision's
    Mask R-CNN R50-FPN, in eval mode, resizing to ``img_size`` and keeping the best ``detections`` of all candidates."""
    max_size = round(img_size * 1333 / 800)
    if source == "torchvision":
        return tv_detection.maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, min_size=img_size, max_size=max_size,
            box_score_thresh=0.0, box_detections_per_img=detections,
        ).eval()
    if checkpoint:  # its own long-side limit, scaled with the short side
        return _keep_detections(load_detector(checkpoint, image_size=img_size, score_thresh=0.0), detections)
    net = create_detector(arch, model, [f"class{k}" for k in range(1, DETECT_CLASSES + 1)], image_size=img_size,
                          max_size=max_size, score_thresh=0.0)
    return _keep_detections(net, detections)


def build_segmenter(source: str, arch: str, model: str, img_size: int, checkpoint: str = "") -> nn.Module:
    """Ours (``create_segmenter(arch, model)``, 21 classes, or the segmenter saved at ``checkpoint``), input size
    ``img_size``, or torchvision's DeepLabV3-R50."""
    if source == "torchvision":
        return tv_segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=SEGMENT_CLASSES).eval()
    if checkpoint:
        return load_segmenter(checkpoint, input_size=img_size)
    return create_segmenter(arch, model, [f"class{k}" for k in range(SEGMENT_CLASSES)], input_size=img_size).eval()


def resized(image: torch.Tensor, short_side: int) -> torch.Tensor:
    """``image [3, H, W]`` with its short side ``short_side`` (bilinear), batched: ``[1, 3, h, w]``."""
    scale = short_side / min(image.shape[-2:])
    return F.interpolate(image[None], scale_factor=scale, mode="bilinear", align_corners=False, antialias=scale < 1)


class StageClock:
    """Seconds spent in named stages of one call: each stage is a set of submodules (timed around their
    ``forward``) and bound methods (replaced on their instance by a timed wrapper). Whatever the call
    spends outside them is the last stage, the remainder."""

    def __init__(self, stages: dict[str, list], remainder: str):
        self.seconds: dict[str, float] = {name: 0.0 for name in (*stages, remainder)}
        self.remainder = remainder
        for name, parts in stages.items():
            for part in parts:
                if isinstance(part, nn.Module):
                    self._time_module(part, name)
                else:
                    owner, attribute = part
                    setattr(owner, attribute, self._timed(getattr(owner, attribute), name))

    def _timed(self, fn: Callable, name: str) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
        return timed

    def _time_module(self, module: nn.Module, name: str) -> None:
        starts: list[float] = []
        module.register_forward_pre_hook(lambda m, args: starts.append(time.perf_counter()))

        def done(m, args, out):
            self.seconds[name] += time.perf_counter() - starts.pop()

        module.register_forward_hook(done)

    @contextmanager
    def measure(self):
        """Time one call: the stages' seconds are reset, the remainder is what the named stages leave."""
        for name in self.seconds:
            self.seconds[name] = 0.0
        start = time.perf_counter()
        yield
        total = time.perf_counter() - start
        self.seconds[self.remainder] = total - sum(v for k, v in self.seconds.items() if k != self.remainder)


def _present(*modules) -> list[nn.Module]:
    return [m for m in modules if isinstance(m, nn.Module)]


def detector_clock(model: nn.Module, postprocess: tuple[object, str]) -> StageClock:
    """Stages of a detector (ours or torchvision's, eager or deployed: the same module names): the backbone
    with its FPN; the heads (dense head, or RPN and box head); the masks (RoI pooling, mask and MaskIoU heads,
    and ``postprocess``, the method that pastes them); post-processing (the rest: resizing the input,
    decoding boxes, NMS)."""
    heads = getattr(model, "roi_heads", None)
    if heads is not None:
        head_parts = _present(model.rpn, heads.box_roi_pool, heads.box_head, heads.box_predictor)
        mask_parts = _present(heads.mask_roi_pool, heads.mask_head, heads.mask_predictor)
    else:
        head_parts = _present(model.head)
        mask_parts = _present(getattr(model, "mask_roi_pool", None), getattr(model, "mask_head", None),
                              getattr(model, "maskiou_head", None))
    stages = {"backbone": [model.backbone], "heads": head_parts}
    if mask_parts:
        stages["masks"] = [*mask_parts, postprocess]
    return StageClock(stages, "post-processing")


def segmenter_clock(model: nn.Module) -> StageClock:
    """Stages of a segmenter: backbone (FPN included), head, post-processing (resizing, upsampling, refinement)."""
    head = model.head if hasattr(model, "head") else model.classifier  # ours, torchvision's
    return StageClock({"backbone": [model.backbone], "heads": [head]}, "post-processing")


@dataclass
class DenseStep:
    """A ready-to-time step of a dense subject."""

    step: Callable[[], object]
    precision: str
    notes: list[str]
    clock: StageClock | None  # None: no stage breakdown (onnxruntime)
    detections: int | None  # detections per image, for detectors


def _paste_method(net: nn.Module) -> tuple[object, str]:
    """Where a detector pastes its masks: our detectors' ``postprocess`` stage (eager or deployed), torchvision's
    transform's ``postprocess``."""
    return (net, "postprocess") if isinstance(net, DetectorStages) else (net.transform, "postprocess")


def _session(data: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _timed_step(run: Callable[[], object], clock: StageClock | None, device: torch.device) -> Callable[[], object]:
    sync = _sync(device)

    def step():
        with torch.inference_mode(), clock.measure() if clock is not None else nullcontext():
            out = run()
            sync()
        return out

    return step


def prepare_detector(source: str, arch: str, model: str, *, img_size: int, detections: int, deploy: bool, runtime: str,
                     precision: str, device: str, checkpoint: str = "", winograd: bool | None = None) -> DenseStep:
    """One detector subject: ours (by name or from ``checkpoint``) eager, deployed (``winograd``: its wide
    3x3 convolutions as Winograd F(4x4, 3x3); None: deploy's default) or in onnxruntime, or torchvision's Mask R-CNN."""
    device = torch.device(device)
    image = bench_image().to(device)
    net = build_detector(source, arch, model, img_size, detections, checkpoint).to(device)
    if runtime == "onnxruntime":
        data, _ = detector_onnx(net, image.cpu())
        session = _session(data)
        feed = {"image": image.cpu().numpy()}
        count = session.run(None, feed)[0].shape[0]
        return DenseStep(lambda: session.run(None, feed), "fp32", [], None, count)
    notes: list[str] = []
    if deploy:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runner = deploy_model(net, precision, device=device, winograd=winograd)
        notes = [str(w.message) for w in caught]
        clock = detector_clock(runner.model, _paste_method(runner.model))
        effective = runner.precision
    else:
        runner, effective = net, "fp32"
        clock = detector_clock(net, _paste_method(net))
    step = _timed_step(lambda: runner([image]), clock, device)
    count = len(step()[0]["boxes"])
    return DenseStep(step, effective, notes, clock, count)


def prepare_segmenter(source: str, arch: str, model: str, *, img_size: int, deploy: bool, runtime: str, precision: str,
                      device: str, checkpoint: str = "") -> DenseStep:
    """One segmenter subject: ours (by name or from ``checkpoint``) eager, deployed or in onnxruntime, or
    torchvision's DeepLabV3-R50 (handed the image resized to ``img_size``: it does not resize by itself)."""
    device = torch.device(device)
    net = build_segmenter(source, arch, model, img_size, checkpoint).to(device)
    image = bench_image().to(device)
    if source == "torchvision":
        x = resized(image, img_size)
        clock = segmenter_clock(net)
        return DenseStep(_timed_step(lambda: net(x)["out"], clock, device), "fp32", [], clock, None)
    x = image[None]
    if runtime == "onnxruntime":
        session = _session(segmenter_onnx(net, x))
        feed = {session.get_inputs()[0].name: x.cpu().numpy()}
        return DenseStep(lambda: session.run(None, feed), "fp32", [], None, None)
    notes: list[str] = []
    runner, effective = net, "fp32"
    if deploy:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runner = deploy_model(net, precision, device=device)
        notes, effective = [str(w.message) for w in caught], runner.precision
    clock = segmenter_clock(runner.module if deploy else net)
    return DenseStep(_timed_step(lambda: runner(x), clock, device), effective, notes, clock, None)
