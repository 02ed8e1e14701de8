"""Each task's predictions on decoded frames, as the stream pipeline (:mod:`vovnet.tasks.stream`) runs them: one
:class:`FramePredictor` per model, built from the task's own prediction, record and drawing functions, so a
frame's record and drawing are an image file's (``vovnet predict IMAGE``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.classification import eval_transform
from ..errors import UsageError
from ..models.detection.stages import DetectorStages
from ..models.segmentation.model import Segmenter
from ..models.vovnet import VoVNet
from .classification import checkpoint_preprocessing, draw_top_classes, top_classes
from .detection.draw import draw_detections
from .detection.predict import DISPLAY_THRESH, detect_batch, prediction_record
from .segmentation.predict import class_map_record, overlay, predict_class_maps

Autocast = Callable[[], contextlib.AbstractContextManager]


@dataclass(frozen=True)
class FramePredictor:
    """What the pipeline needs of a model.

    Attributes:
        task: ``classify``, ``detect`` or ``segment``.
        prepare: a frame ``[H, W, 3]`` uint8 RGB -> the model's input for it (run on the decoding thread).
        predict: the prepared inputs of a batch of frames -> one prediction per frame, on the CPU (a
            classifier's probabilities ``[num_classes]``, a detector's dict, a segmenter's class map ``[H, W]``).
        record: a prediction -> the JSON-ready fields of its record (as an image file's, without ``image``).
        draw: a frame ``[3, H, W]`` uint8 and its prediction -> the frame drawn ``[3, H, W]`` uint8.
    """

    task: str
    prepare: Callable[[np.ndarray], Any]
    predict: Callable[[list], list]
    record: Callable[[Any], dict]
    draw: Callable[[torch.Tensor, Any], torch.Tensor]


def network(model: nn.Module) -> nn.Module:
    """The network of ``model``: itself, or the one a deployed copy (:func:`vovnet.deploy`) wraps."""
    if isinstance(model, (VoVNet, DetectorStages, Segmenter)):
        return model
    for attr in ("module", "model", "_orig_mod"):  # DeployedModel, DeployedDetector, torch.compile
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            return network(inner)
    return model


def model_task(model: nn.Module) -> str:
    """``classify``, ``detect`` or ``segment`` for a classifier, detector or segmenter of the package (eager or
    deployed); UsageError for anything else."""
    net = network(model)
    if isinstance(net, DetectorStages):
        return "detect"
    if isinstance(net, Segmenter):
        return "segment"
    if isinstance(net, VoVNet) and net.num_classes > 0:
        return "classify"
    raise UsageError(f"predicts with a classifier, detector or segmenter of vovnet, not a {type(net).__name__}")


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def frame_predictor(model: nn.Module, *, class_names: Sequence[str] | None = None, preprocessing: Any = None, topk: int = 5,
                    score_thresh: float = DISPLAY_THRESH, autocast: Autocast = contextlib.nullcontext,
                    infer: Callable[[torch.Tensor], torch.Tensor] | None = None) -> FramePredictor:
    """The :class:`FramePredictor` of ``model`` (a classifier, detector or segmenter, eager or deployed, on its
    device).

    ``class_names``: the model's (default: ``model.class_names`` of its network; a classifier without names
    numbers its classes); ``preprocessing``: a classifier's :class:`~vovnet.data.classification.Preprocessing`
    (default: the network's ``preprocessing`` record at its input size); ``topk``: classes per frame
    (classifiers); ``score_thresh``: the least score of the detections listed and drawn (detectors);
    ``autocast``: a mixed-precision context for the forward; ``infer``: a segmenter's images -> logits in place
    of ``model`` (test-time augmentation).
    """
    task, net, device = model_task(model), network(model), _device(model)
    names = list(class_names if class_names is not None else (net.class_names or []))
    if task == "classify":
        names = names or [str(i) for i in range(net.num_classes)]
        transform = eval_transform(preprocessing or checkpoint_preprocessing({"preprocessing": net.preprocessing}))
        k = min(topk, len(names))

        @torch.no_grad()
        def classify(inputs: list) -> list:
            with autocast():
                return list(model(torch.stack(inputs).to(device)).float().softmax(1).cpu())

        return FramePredictor(task, lambda pixels: transform(Image.fromarray(pixels)), classify,
                              lambda probs: {"top": top_classes(probs, names, k)},
                              lambda image, probs: draw_top_classes(image, top_classes(probs, names, k)))
    if task == "detect":
        if not 0 <= score_thresh <= 1:
            raise UsageError(f"score_thresh takes a score from 0 to 1, got {score_thresh}")
        return FramePredictor(task, _pixels_tensor, lambda images: detect_batch(model, images, device, autocast),
                              lambda pred: {"detections": prediction_record(pred, names, score_thresh)},
                              lambda image, pred: draw_detections(image, pred, names, score_thresh))
    return FramePredictor(task, _pixels_tensor, lambda images: predict_class_maps(model, images, device, infer),
                          lambda class_map: class_map_record(class_map, names),
                          lambda image, class_map: overlay(image, class_map, names))


def _pixels_tensor(pixels: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 -> ``[3, H, W]`` uint8, as :func:`vovnet.data.coco.image_tensor` gives an image file."""
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
