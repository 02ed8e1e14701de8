"""``deploy(model)``: an inference-only copy of a network, folded, laid out and cast for speed."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

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
        # The detector module imports the task modules, which `import vovnet` must not load (a classifier
        # never needs them): it is loaded here, on the first detector.
        from .detection import deploy_detector

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
