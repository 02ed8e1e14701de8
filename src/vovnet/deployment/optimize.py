"""``deploy(model)``: an inference-only copy of a network, folded, laid out and cast for speed.

Every model goes through the same module transformations (:func:`optimised_copy`). A classifier, feature
extractor or segmenter is then wrapped in :class:`DeployedModel` (weights cast to the precision); a detector of
the package in :class:`DeployedDetector`, which runs the model's own inference stages
(:mod:`vovnet.models.detection.stages`) on the copy, with its inference settings set: autocast precision (weights
stay fp32), channels_last input, ``mask_score_thresh``."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..models.detection.sag_mask import SAGMaskHead
from ..models.detection.stages import DetectorStages
from .fuse import fold_batch_norm_, fuse_conv_act_, fuse_ese_, fuse_onednn_, pack_convolutions_
from .precision import DeployWarning, precision_dtype, resolve_precision, unsupported_reason
from .winograd import winograd_convolutions_


def _cast_outputs(out, dtype: torch.dtype):
    if isinstance(out, torch.Tensor):
        return out.to(dtype)
    if isinstance(out, dict):
        return type(out)((k, _cast_outputs(v, dtype)) for k, v in out.items())
    if isinstance(out, (list, tuple)):
        return type(out)(_cast_outputs(v, dtype) for v in out)
    return out


def is_detector(model: nn.Module) -> bool:
    """Whether ``model`` is a detector of the package (its inference stages: :mod:`vovnet.models.detection.stages`),
    which ``deploy`` hands to :mod:`vovnet.deployment.detection`."""
    return isinstance(model, DetectorStages)


class DeployedModel(nn.Module):
    """Wraps the optimised network: moves and casts the input, runs without autograd, returns fp32.

    ``forward`` takes ``[N, C, H, W]`` in any float dtype/layout and returns what the wrapped network
    returns (logits ``[N, num_classes]``, pooled features, or a list of feature maps), in fp32.
    """

    def __init__(self, module: nn.Module, *, precision: str, requested: str, device: torch.device, channels_last: bool, notes: list[str]):
        super().__init__()
        self.module = module
        self.precision = precision
        self.requested_precision = requested
        self.dtype = precision_dtype(precision)
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.notes = notes

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(device=self.device, dtype=self.dtype, memory_format=self.memory_format)

    def forward(self, x: torch.Tensor):
        with torch.inference_mode():
            return _cast_outputs(self.module(self.prepare_input(x)), torch.float32)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _onednn_fusion_applies(device: torch.device, precision: str, channels_last: bool, compile: bool, cast_weights: bool) -> bool:
    """Conv + activation fusion with packed weights: CPU eager channels_last, at a natively supported precision
    (``torch.compile`` makes its own fusions); oneDNN's fused convolutions take weights of the precision they run
    at, so under autocast (weights kept fp32) only in fp32."""
    return (device.type == "cpu" and channels_last and not compile and torch.backends.mkldnn.is_available()
            and unsupported_reason(precision, device) is None and (cast_weights or precision == "fp32"))


def optimised_copy(model: nn.Module, device: torch.device, precision: str, *, channels_last: bool, cast_weights: bool,
                   winograd: bool = False, compile: bool = False) -> nn.Module:
    """The module transformations of ``deploy``, on a deep copy of ``model`` in eval mode without gradients: batch
    norm folded into the convolutions, eSE's 1x1 conv on the pooled vector a matrix multiply -> moved to
    ``device`` (and cast to ``precision`` with ``cast_weights``; else the model runs it under autocast) ->
    channels_last -> on the CPU each convolution and its activation one oneDNN call with weights packed for the
    input shape (:class:`~vovnet.deployment.fuse.OneDNNConvAct`; the SAG-Mask head's deconvolution too) ->
    ``winograd``: the wide 3x3 convolutions as Winograd F(4x4, 3x3) (:mod:`~vovnet.deployment.winograd`) ->
    ``compile``: ``torch.compile`` instead of the oneDNN fusions."""
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    fold_batch_norm_(net)
    fuse_ese_(net)
    net = net.to(device=device, dtype=precision_dtype(precision)) if cast_weights else net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if _onednn_fusion_applies(device, precision, channels_last, compile, cast_weights):
        for head in [m for m in net.modules() if isinstance(m, SAGMaskHead)]:
            fuse_conv_act_(head, "deconv", "deconv_act")
        fuse_onednn_(net)
        pack_convolutions_(net)
    if winograd:
        winograd_convolutions_(net)  # after the oneDNN fusions, whose units it replaces
    if compile:
        net = torch.compile(net, options={"freezing": True} if device.type == "cpu" else None)
    return net


def deploy(
    model: nn.Module,
    precision: str = "fp32",
    *,
    device: torch.device | str | None = None,
    channels_last: bool = True,
    compile: bool = False,
    on_unsupported: str = "fallback",
    mask_score_thresh: float | None = None,
    winograd: bool | None = None,
) -> nn.Module:
    """An optimised inference copy of ``model``; ``model`` itself is left untouched.

    A detector (torchvision's FCOS, RetinaNet, Faster / Mask R-CNN, CenterMask) becomes a
    :class:`~vovnet.deployment.detection.DeployedDetector` (a list of images in, one dict of detections
    per image out, as its eval mode; ``mask_score_thresh`` and ``winograd`` are its options); anything else, a semantic
    segmenter included, a :class:`DeployedModel`, as follows.

    Steps: deep copy in eval mode -> batch norm folded into the convolutions, eSE's 1x1 conv on the
    pooled vector made a matrix multiply -> moved to ``device``
    (default: where ``model`` lives) -> cast to ``precision`` -> channels_last memory layout -> on
    the CPU, each convolution and its activation become one oneDNN call with weights packed for the
    input shape (:class:`~vovnet.deployment.fuse.OneDNNConvAct`; the first call at a new shape packs them)
    -> optionally ``torch.compile`` instead (inductor with weight freezing; the first call compiles,
    which takes minutes on a small CPU and pays only for long-running services).

    ``precision`` is ``fp32``, ``bf16`` or ``fp16``. Where the device has no native support for it,
    ``on_unsupported="fallback"`` (default) deploys fp32 and says so with a :class:`DeployWarning`;
    ``"emulate"`` keeps the slow emulated precision; ``"error"`` raises. The messages are also kept
    in ``.notes``.
    """
    precision_dtype(precision)
    if is_detector(model):
        if compile:
            raise UsageError("compile applies to classifiers, feature extractors and segmenters, not to detectors")
        return deploy_detector(model, precision, device=device, channels_last=channels_last,
                               mask_score_thresh=mask_score_thresh, on_unsupported=on_unsupported, winograd=winograd)
    if mask_score_thresh is not None:
        raise UsageError("mask_score_thresh applies to detectors with masks")
    if winograd:
        raise UsageError("winograd applies to detectors (their wide 3x3 convolutions)")
    device = torch.device(device) if device is not None else _model_device(model)
    effective, message = resolve_precision(precision, device, on_unsupported)
    notes = [message] if message else []
    for note in notes:
        warnings.warn(note, DeployWarning, stacklevel=2)

    net = optimised_copy(model, device, effective, channels_last=channels_last, cast_weights=True, compile=compile)
    return DeployedModel(net, precision=effective, requested=precision, device=device, channels_last=channels_last, notes=notes)


class DeployedDetector(nn.Module):
    """An optimised detector for inference, input and output as the eval model's.

    ``forward(images)``: a list of ``[3, H, W]`` RGB floats in 0..1 -> one dict per image with ``boxes [N, 4]``,
    ``labels [N]``, ``scores [N]`` and, for mask models, ``masks [N, 1, H, W]`` (probabilities), in fp32: the
    model's own stages (``model.infer``) on the transformed copy, on ``device``, without autograd.

    Args:
        model: the optimised copy of the detector (see :func:`deploy_detector`).
        precision: what the network runs at (the copy's ``autocast_dtype``).
        device: where it runs.
        notes: messages about optimisations not applied.
    """

    def __init__(self, model: nn.Module, *, precision: str = "fp32", device: torch.device | str = "cpu", notes: list[str] | None = None):
        super().__init__()
        self.model = model
        self.precision = precision
        self.device = torch.device(device)
        self.notes = list(notes or [])

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        with torch.inference_mode():
            return self.model.infer([img.to(self.device) for img in images])


def deploy_detector(
    model: nn.Module,
    precision: str = "fp32",
    *,
    device: torch.device | str | None = None,
    channels_last: bool = True,
    mask_score_thresh: float | None = None,
    on_unsupported: str = "fallback",
    winograd: bool | None = None,
) -> DeployedDetector:
    """An optimised inference copy of a detector (``model`` itself is left untouched): batch norm folded,
    eSE's 1x1 conv on the pooled vector a matrix multiply, convolution + activation fused (CPU, fp32; the
    SAG-Mask head's deconvolution and its ReLU too), channels_last, ``bf16``/``fp16`` autocast where the device
    runs them natively (otherwise fp32 with a :class:`~vovnet.deployment.precision.DeployWarning`, as
    :func:`~vovnet.deployment.optimize.deploy`). See :class:`DeployedDetector`.

    ``winograd``: on the CPU in fp32 (default None: there, and nowhere else) the wide 3x3 stride-1 convolutions
    (>= 160 channels in and out: VoVNet's OSA layers from stage 3, the FPN outputs, the FCOS / RetinaNet towers,
    the SAG-Mask and MaskIoU heads') are computed as Winograd F(4x4, 3x3)
    (:class:`~vovnet.deployment.winograd.WinogradConv2d`; maps too small to gain take the direct convolution);
    their outputs differ from the direct convolution's by about 1e-5 of the largest output. ``False``: the direct
    convolutions everywhere; ``True`` elsewhere than CPU fp32: ignored, with a :class:`DeployWarning`."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    effective, message = resolve_precision(precision, device, on_unsupported)
    notes = [message] if message else []
    if winograd is True and (device.type != "cpu" or effective != "fp32"):
        notes.append(f"winograd=True computes CPU fp32 only; {device.type} {effective} runs the direct convolutions")
    for note in notes:
        warnings.warn(note, DeployWarning, stacklevel=3)
    if mask_score_thresh is not None and not (0 <= mask_score_thresh <= 1):
        raise ValueError(f"mask_score_thresh must lie in 0..1, got {mask_score_thresh}")
    net = optimised_copy(model, device, effective, channels_last=channels_last, cast_weights=False,
                         winograd=winograd is not False and device.type == "cpu" and effective == "fp32")
    net.autocast_dtype = None if effective == "fp32" else precision_dtype(effective)
    net.channels_last = channels_last
    net.mask_score_thresh = mask_score_thresh
    return DeployedDetector(net, precision=effective, device=device, notes=notes)
