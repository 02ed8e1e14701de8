"""Semantic segmenters: a VoVNet backbone, a semantic head, bilinear upsampling to the input size.

Every architecture is an entry of ``ARCHS``: a function building its backbone (the VoVNet-FPN for the
Panoptic-FPN head, the bare feature body for DeepLabV3) and its head on that backbone's
``output_shape()``. :class:`SegmenterConfig` records everything that decides the layers and the input, so
a checkpoint rebuilds the exact network; a segmenter built on pretrained backbone weights takes the pixel
format they were trained on (:mod:`vovnet.models.input_format`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.fcn import FCNHead

from ...errors import UsageError
from ..backbone import ArchSpec, DenseModelRecord, FeatureBackbone, ShapeSpec, feature_backbone, fpn_backbone
from ..input_format import INPUT_FORMATS, InputFormat
from ..tracing import exporting
from .heads import DeepLabV3Head, DeepLabV3PlusHead, SemanticFPNHead, level_with_stride
from .refine import check_refine_options, refine_probabilities
from .resize import resize_short_side


@dataclass(frozen=True)
class SegmenterConfig(DenseModelRecord):
    """Everything that decides a segmenter's layers and input; checkpoints store it.

    Attributes:
        arch: a key of ``ARCHS``.
        model: backbone name (a registered VoVNet, or ``timm:NAME``).
        class_names: one name per output channel; pixel value ``k`` of a class map is ``class_names[k]``.
        fpn_channels: FPN width (``fpn_semantic`` only).
        fpn_p2_conv: keep the FPN's 3x3 output conv on its finest level (``fpn_semantic`` only). The semantic
            head's own conv3x3 step follows on that level, so without it p2 is the lateral 1x1 plus the
            upsampled p3, smoothed once instead of twice: the two are the head's costliest convs.
        head_channels: width of the semantic FPN head's conv steps (``fpn_semantic``), or of DeepLabV3+'s
            ASPP and decoder (``deeplabv3plus``).
        deeplab_stride: stride of the backbone map under the DeepLabV3 head, 16 (stage 4) or 32 (stage 5)
            (``deeplabv3`` and ``deeplabv3plus``, which use no FPN).
        input_size: the network sees images resized so that their short side is this (the training
            resolution); logits come back at the caller's size. 0 feeds images as they are.
        freeze_at: backbone parts frozen (see :class:`~vovnet.models.backbone.BackboneConfig`).
        norm: backbone norm layers.
        drop_path_rate: stochastic depth of the backbone's blocks while training.
        refine_radius: in eval mode, pass the class probabilities through the colour guided filter under the
            input image (:mod:`.refine`), fitted on windows of ``2r+1`` cells at stride 4 of the network's input
            (DeepLabV3's stride-16 or -32 logits are upsampled to stride 4 first) and applied at the image's
            size, so that class boundaries follow the image's edges; 0 = off.
        refine_eps: the guided filter's regulariser (larger smooths across weaker edges).
        aux_classifier: also build torchvision's ``FCNHead`` on the backbone's stride-16 map (``p4`` or ``c4``), as
            torchvision's segmentation models do with ``aux_loss=True``; it is trained with an auxiliary loss
            (``-o aux_weight``) and ignored at inference.
        input_format: the pixel format the backbone gets (an :class:`~vovnet.models.input_format.InputFormat`; a
            name of ``INPUT_FORMATS`` or a preprocessing record is converted). None: ImageNet-normalised RGB
            (:attr:`effective_input_format`), what checkpoints written without the field ran.
        backbone_config: the VoVNet architecture (set when rebuilding from a checkpoint; None = the registry's).
    """

    arch: str
    model: str
    class_names: tuple[str, ...]
    fpn_channels: int = 64
    fpn_p2_conv: bool = False
    head_channels: int = 64
    deeplab_stride: int = 16
    input_size: int = 0
    freeze_at: int = 0
    norm: str = "batch"
    drop_path_rate: float = 0.0
    refine_radius: int = 0
    refine_eps: float = 1e-3
    aux_classifier: bool = False
    input_format: InputFormat | None = None
    backbone_config: dict | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if self.input_format is not None:  # a name, or a record read back from a checkpoint's JSON
            object.__setattr__(self, "input_format", InputFormat.from_record(self.input_format))
        if self.arch not in ARCHS:
            raise UsageError(f"unknown segmentation arch {self.arch!r}; choose from {', '.join(ARCHS)}")
        if len(self.class_names) < 2:
            raise UsageError(f"a segmenter needs at least two classes, got {list(self.class_names)}")
        check_refine_options(self.refine_radius, self.refine_eps)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def effective_input_format(self) -> InputFormat:
        """``input_format``, else ImageNet-normalised RGB."""
        return self.input_format or INPUT_FORMATS["rgb"]

    RECORD_NAME = "segmenter"


class Segmenter(nn.Module):
    """Backbone + semantic head (+ an auxiliary classifier for training, when configured).

    ``forward``: images ``[N, 3, H, W]``, floats in 0..1, any H and W -> logits ``[N, num_classes, H, W]``;
    ``forward(images, with_aux=True)`` -> ``(logits, aux logits or None)``, both at the input size;
    ``input_size`` overrides ``config.input_size`` for one call (a training schedule over resolutions).
    In eval mode with ``config.refine_radius`` set, the result is the log of the class probabilities after
    the guided filter (:mod:`.refine`), which scores and argmaxes as logits do.
    Like torchvision's detectors, the model converts to its backbone's pixel format (``input_format``, from
    ``config.effective_input_format``) and resizes (short side to ``config.input_size``) inside, so callers
    feed images as they come and score logits against labels at their own size.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, config: SegmenterConfig, aux_head: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.config = config
        self.input_format = config.effective_input_format

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    @property
    def preprocessing(self) -> dict:
        """The pixel format the backbone gets, as a preprocessing record (every model has ``preprocessing``)."""
        return self.input_format.record()

    def forward(self, images: torch.Tensor, with_aux: bool = False, input_size: int | None = None):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [N, 3, H, W], got {list(images.shape)}")
        x = self.preprocess(images, input_size)
        features = self.backbone(x)
        logits = self.postprocess(self.head(features), images, x)
        if not with_aux:
            return logits
        if self.aux_head is None:
            return logits, None
        aux = self.aux_head(features[self.aux_head.in_feature])
        return logits, F.interpolate(aux, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def preprocess(self, images: torch.Tensor, input_size: int | None = None) -> torch.Tensor:
        """The backbone's input: ``images`` in its pixel format, resized so that the short side is ``input_size``
        (default ``config.input_size``; 0 keeps the size). While exporting, the resize is the traceable matrix form
        of the same kernel (:func:`~vovnet.models.segmentation.resize.resize_short_side`)."""
        x = self.input_format.normalize(images)
        input_size = self.config.input_size if input_size is None else input_size
        if not input_size:
            return x
        if exporting():
            return resize_short_side(x, input_size)
        if min(images.shape[-2:]) != input_size:
            scale = input_size / min(images.shape[-2:])
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False, antialias=scale < 1)
        return x

    def postprocess(self, logits: torch.Tensor, images: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits at the images' size: upsampled, or in eval mode with ``config.refine_radius`` the log of the
        class probabilities after the guided filter under ``images`` (``x``: the network's input)."""
        if not (self.config.refine_radius and not self.training):
            return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        cells = tuple(-(-side // 4) for side in x.shape[-2:])  # the filter works on stride-4 cells of the input
        if logits.shape[-2] < cells[0]:  # DeepLabV3 predicts at stride 16 or 32 (the same branch at every size)
            logits = F.interpolate(logits, size=cells, mode="bilinear", align_corners=False)
        probs = refine_probabilities(images, logits.float().softmax(1), self.config.refine_radius, self.config.refine_eps)
        return probs.clamp_min(1e-12).log()

    def tta_log_probs(self, images: torch.Tensor, flip: bool = False, input_sizes: Sequence[int] = ()) -> torch.Tensor:
        """Test-time augmentation: log of the class probabilities ``[N, K, H, W]`` averaged over the network
        at each of ``input_sizes`` (empty: its own) and, with ``flip``, over the mirrored images too, as
        MMSegmentation's and detectron2's flip and multi-scale tests do. The result serves as logits."""
        total, views = 0.0, 0
        for size in input_sizes or (None,):
            for mirrored in (False, True) if flip else (False,):
                x = images.flip(-1) if mirrored else images
                probs = self(x, input_size=size).float().softmax(1)
                total = total + (probs.flip(-1) if mirrored else probs)
                views += 1
        return (total / views).clamp_min(1e-12).log()


class AuxClassifier(FCNHead):
    """torchvision's ``FCNHead`` (conv3x3 to a quarter of the channels, BN, ReLU, dropout 0.1, 1x1) reading
    the backbone map named ``in_feature``."""

    def __init__(self, in_shapes: Mapping[str, ShapeSpec], num_classes: int, stride: int = 16):
        in_feature = level_with_stride(in_shapes, stride, "the auxiliary classifier")
        super().__init__(in_shapes[in_feature].channels, num_classes)
        self.in_feature = in_feature


def _fpn_semantic(cfg: SegmenterConfig) -> tuple[nn.Module, nn.Module]:
    # The R-CNN pyramid: p2..p5 (+ a max-pooled level the head does not read, which has no weights).
    backbone = fpn_backbone(cfg.backbone(), extra="maxpool", out_channels=cfg.fpn_channels)
    if not cfg.fpn_p2_conv:
        backbone.drop_output_conv("p2")
    return backbone, SemanticFPNHead(backbone.output_shape(), cfg.num_classes, ("p2", "p3", "p4", "p5"), cfg.head_channels)


def _deeplab_backbone(cfg: SegmenterConfig, *stages: int) -> FeatureBackbone:
    """The bare body for a DeepLab head: ``stages`` plus the one under the ASPP (4 at stride 16, 5 at 32;
    no stage past it is built) and stage 4 (stride 16) for the auxiliary classifier."""
    stage = {16: 4, 32: 5}.get(cfg.deeplab_stride)
    if stage is None:
        raise UsageError(f"deeplab_stride takes 16 or 32, got {cfg.deeplab_stride}")
    stages = tuple(sorted({*stages, stage, *((4,) if cfg.aux_classifier else ())}))
    return feature_backbone(cfg.backbone(), stages)


def _deeplabv3(cfg: SegmenterConfig) -> tuple[nn.Module, nn.Module]:
    # ASPP reads the body's last map directly, as in DeepLabV3.
    backbone = _deeplab_backbone(cfg)
    return backbone, DeepLabV3Head(backbone.output_shape(), cfg.num_classes, cfg.deeplab_stride)


def _deeplabv3plus(cfg: SegmenterConfig) -> tuple[nn.Module, nn.Module]:
    # The body's stride-4 map (stage 2) for the decoder and its stride-16/32 map for the ASPP.
    backbone = _deeplab_backbone(cfg, 2)
    return backbone, DeepLabV3PlusHead(backbone.output_shape(), cfg.num_classes, cfg.deeplab_stride, cfg.head_channels)


# arch -> its builder: (backbone with output_shape(), head reading that backbone's maps) from the config.
ARCHS: dict[str, ArchSpec] = {
    "fpn_semantic": ArchSpec("Panoptic FPN's semantic head on p2-p5", _fpn_semantic),
    "deeplabv3": ArchSpec("DeepLabV3 (ASPP) on the body's stride-16 or -32 map", _deeplabv3),
    "deeplabv3plus": ArchSpec("DeepLabV3+ (ASPP and a stride-4 decoder)", _deeplabv3plus),
}


def build_segmenter(cfg: SegmenterConfig) -> Segmenter:
    """The segmenter described by ``cfg``, with freshly initialised weights (``cfg.backbone_config`` filled in from
    the built backbone). Weights are composed on by :func:`vovnet.create_segmenter` and :func:`vovnet.load_segmenter`."""
    backbone, head = ARCHS[cfg.arch].build(cfg)
    aux_head = AuxClassifier(backbone.output_shape(), cfg.num_classes) if cfg.aux_classifier else None
    if cfg.backbone_config is None and hasattr(backbone.body, "config"):
        cfg = dataclasses.replace(cfg, backbone_config=backbone.body.config.to_dict())
    return Segmenter(backbone, head, cfg, aux_head)
