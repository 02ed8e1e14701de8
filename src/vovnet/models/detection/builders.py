"""Detector builders: torchvision detectors on a VoVNet-FPN backbone, described by one config record.

Every architecture is an entry of ``ARCHS`` (which pyramid it needs, whether it predicts masks, and a
small function putting torchvision's heads on the backbone). ``lite`` detectors use a 128-channel FPN and
the CenterMask-Lite heads (2 x 128 SAG-Mask convs, 2-conv FCOS towers, 2 x 128 MaskIoU convs); lite R-CNNs
also sample 128 RoIs per image (not 512) into a 512-wide box head (not 1024), which is most of their CPU time.
``centermask`` comes in two dialects (:data:`~vovnet.models.detection.centermask.DIALECTS`): ours, on
torchvision's FCOS, and ``centermask2``, the official inference and training that converted models run.
Every detector converts its RGB 0..1 input to the pixel format its backbone weights were trained on
(``DetectorConfig.input_format``, taken from the pretrained weights' record when built on them), with
:class:`~vovnet.models.detection.transform.DetectorTransform`: torchvision's transform and resizing, and its
arithmetic for ImageNet RGB.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import MultiScaleRoIAlign

from ...errors import UsageError
from ..backbone import ArchSpec, DenseModelRecord, FPNBackbone, fpn_backbone
from ..input_format import INPUT_FORMATS, InputFormat
from .centermask import DIALECTS, CenterMask
from .fcos import ScaledFCOSHead
from .maskiou import MaskIoUHead
from .sag_mask import SAGMaskHead
from .stages import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from .transform import DetectorTransform


@dataclass(frozen=True)
class HeadSize:
    """Widths of the FPN and the heads on it."""

    fpn_channels: int
    mask_convs: int
    mask_dims: int
    tower_convs: int  # FCOS classification / regression towers
    box_fc: int  # R-CNN two-layer box head
    box_rois: int  # R-CNN RoIs sampled per training image
    maskiou_convs: int  # CenterMask's MaskIoU head (centermask2 dialect)
    maskiou_dims: int


HEAD_SIZES = {"full": HeadSize(256, 4, 256, 4, 1024, 512, 4, 256), "lite": HeadSize(128, 2, 128, 2, 512, 128, 2, 128)}


def default_lite(model: str) -> bool:
    """V-19 backbones get the lite heads by default, as CenterMask-Lite and the FPNLite detectors do."""
    return "vovnet19" in model


@dataclass(frozen=True)
class DetectorConfig(DenseModelRecord):
    """Everything that decides a detector's layers; checkpoints store it to rebuild the exact network.

    Attributes:
        arch: a key of ``ARCHS``.
        model: backbone name (a registered VoVNet, or ``timm:NAME``).
        class_names: foreground class names; label ``k`` (1-based) is ``class_names[k - 1]``, 0 is background.
        lite: 128-channel FPN and lite heads.
        min_size, max_size: the detector resizes each image so its short side is ``min_size`` and its long
            side at most ``max_size`` (torchvision's GeneralizedRCNNTransform; ``centermask``: None keeps
            every image at its own size).
        freeze_at: backbone parts frozen (see :class:`~vovnet.models.backbone.BackboneConfig`).
        norm: backbone norm layers.
        backbone_config: the VoVNet architecture (set when rebuilding from a checkpoint; None = the registry's).
        score_thresh: detections below this score are dropped (0.05: low enough for AP).
        nms_thresh: the IoU above which NMS drops the lower-scoring box of a class (None: the arch's own, 0.5 for
            the R-CNNs' box head, 0.6 for FCOS and CenterMask, 0.5 for RetinaNet).
        detections_per_img: detections kept per image (None: the arch's own, 100; 50 for centermask2's dialect,
            300 for RetinaNet).
        mask_detections_per_gt: ``centermask`` only: detections per ground-truth box that join the ground
            truths as the mask head's training RoIs (None: every detection overlapping one at IoU >= 0.5).
        drop_path_rate: stochastic depth of the backbone's blocks while training.
        dialect: ``centermask`` only: ``torchvision`` (ours) or ``centermask2`` (the official inference and
            training; see :data:`~vovnet.models.detection.centermask.DIALECTS`).
        train_sizes: ``centermask`` only: short sides drawn from at random per training image (multi-scale
            training; None: ``min_size``).
        input_format: the pixel format the backbone gets (an :class:`~vovnet.models.input_format.InputFormat`; a
            name of ``INPUT_FORMATS`` or a preprocessing record is converted). None: the dialect's
            (:attr:`effective_input_format`), which is what checkpoints written without the field ran.
    """

    arch: str
    model: str
    class_names: tuple[str, ...]
    lite: bool
    min_size: int | None = 800
    max_size: int | None = 1333
    freeze_at: int = 0
    norm: str = "batch"
    backbone_config: dict | None = field(default=None, compare=False)
    score_thresh: float = 0.05
    nms_thresh: float | None = None
    detections_per_img: int | None = None
    mask_detections_per_gt: int | None = None
    drop_path_rate: float = 0.0
    dialect: str = "torchvision"
    train_sizes: tuple[int, ...] | None = None
    input_format: InputFormat | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if self.train_sizes is not None:
            object.__setattr__(self, "train_sizes", tuple(int(s) for s in self.train_sizes))
        if self.input_format is not None:  # a name, or a record read back from a checkpoint's JSON
            object.__setattr__(self, "input_format", InputFormat.from_record(self.input_format))
        if self.arch not in ARCHS:
            raise UsageError(f"unknown detector arch {self.arch!r}; choose from {', '.join(ARCHS)}")
        if not self.class_names:
            raise UsageError("a detector needs at least one class")
        if self.dialect not in DIALECTS:
            raise UsageError(f"unknown centermask dialect {self.dialect!r}; choose from {', '.join(DIALECTS)}")
        centermask_only = [
            name for name, used in (("dialect", self.dialect != "torchvision"), ("train_sizes", self.train_sizes), ("min_size=None", self.min_size is None))
            if used
        ]
        if centermask_only and self.arch != "centermask":
            raise UsageError(f"{', '.join(centermask_only)}: centermask only, not {self.arch}")

    @property
    def num_classes(self) -> int:
        """Classifier outputs, background included."""
        return len(self.class_names) + 1

    @property
    def has_masks(self) -> bool:
        return ARCHS[self.arch].masks

    @property
    def effective_input_format(self) -> InputFormat:
        """``input_format``, else the dialect's: ImageNet RGB, detectron2's BGR 0..255 for ``centermask2``."""
        return self.input_format or INPUT_FORMATS[DIALECTS[self.dialect].input_format]

    RECORD_NAME = "detector"


def _selection_options(cfg: DetectorConfig) -> dict:
    """The NMS threshold and detection count the record sets, under the names the arch's constructor takes."""
    options = {k: v for k, v in (("nms_thresh", cfg.nms_thresh), ("detections_per_img", cfg.detections_per_img)) if v is not None}
    return {f"box_{k}": v for k, v in options.items()} if cfg.arch in ("faster_rcnn", "mask_rcnn_sag") else options


def _rcnn_parts(backbone: FPNBackbone, cfg: DetectorConfig, size: HeadSize) -> dict:
    levels = list(backbone.output_shape().items())
    roi_levels = [name for name, _ in levels[:-1]]  # RoIs pool from p2..p5, the RPN also sees "pool"
    channels = backbone.out_channels
    return dict(
        rpn_anchor_generator=AnchorGenerator(tuple((8 * s.stride,) for _, s in levels), ((0.5, 1.0, 2.0),) * len(levels)),
        box_roi_pool=MultiScaleRoIAlign(roi_levels, 7, 2),
        box_head=TwoMLPHead(channels * 7 * 7, size.box_fc),
        box_predictor=FastRCNNPredictor(size.box_fc, cfg.num_classes),
        box_score_thresh=cfg.score_thresh,
        box_batch_size_per_image=size.box_rois,
    )


def _faster_rcnn(backbone: FPNBackbone, cfg: DetectorConfig, size: HeadSize, common: dict) -> nn.Module:
    return FasterRCNN(backbone, None, **_rcnn_parts(backbone, cfg, size), **common)


def _mask_rcnn_sag(backbone: FPNBackbone, cfg: DetectorConfig, size: HeadSize, common: dict) -> nn.Module:
    parts = _rcnn_parts(backbone, cfg, size)
    return MaskRCNN(
        backbone,
        None,
        mask_roi_pool=MultiScaleRoIAlign(parts["box_roi_pool"].featmap_names, 14, 2),
        mask_head=SAGMaskHead(backbone.out_channels, cfg.num_classes, size.mask_dims, size.mask_convs),
        mask_predictor=nn.Identity(),  # the SAG-Mask head ends in its own predictor
        **parts,
        **common,
    )


def _point_anchors(backbone: FPNBackbone) -> AnchorGenerator:
    """One anchor per location, as large as the stride (FCOS's points)."""
    strides = [s.stride for s in backbone.output_shape().values()]
    return AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))


def _fcos_parts(backbone: FPNBackbone, cfg: DetectorConfig, size: HeadSize) -> dict:
    return dict(
        anchor_generator=_point_anchors(backbone),
        head=FCOSHead(backbone.out_channels, 1, cfg.num_classes, num_convs=size.tower_convs),
        score_thresh=cfg.score_thresh,
    )


def _fcos(backbone: FPNBackbone, cfg: DetectorConfig, size: HeadSize, common: dict) -> nn.Module:
    return FCOS(backbone, cfg.num_classes, **_fcos_parts(backbone, cfg, size), **common)


def _centermask(backbone: FPNBackbone, cfg: DetectorConfig, size: HeadSize, common: dict) -> nn.Module:
    strides = {name: s.stride for name, s in backbone.output_shape().items() if name in ("p3", "p4", "p5")}
    dialect = DIALECTS[cfg.dialect]
    width = backbone.out_channels
    channels = cfg.num_classes if dialect.background_channel else cfg.num_classes - 1  # class channels of every head
    # The mask head's weights are drawn before the FCOS head's: the initialisation a seed gives, and with which
    # the shapes recipe's recorded figures were measured (a test pins it).
    mask_head = SAGMaskHead(width, channels, size.mask_dims, size.mask_convs)
    if dialect.fcos == "centermask2":
        levels = len(backbone.output_shape())
        fcos = {"head": ScaledFCOSHead(width, channels, size.tower_convs, levels), "score_thresh": cfg.score_thresh}
    else:
        fcos = _fcos_parts(backbone, cfg, size)
    return CenterMask(
        backbone,
        cfg.num_classes,
        mask_head=mask_head,
        mask_levels=strides,
        mask_detections_per_gt=cfg.mask_detections_per_gt,
        dialect=cfg.dialect,
        input_format=cfg.effective_input_format,
        maskiou_head=MaskIoUHead(width, channels, size.maskiou_dims, size.maskiou_convs) if dialect.maskiou else None,
        train_sizes=cfg.train_sizes,
        **fcos,
        **common,
    )


def _retinanet(backbone: FPNBackbone, cfg: DetectorConfig, size: HeadSize, common: dict) -> nn.Module:
    # torchvision's RetinaNet anchors: 4 x stride, three scales and three aspect ratios per location.
    strides = [s.stride for s in backbone.output_shape().values()]
    sizes = tuple(tuple(4 * s * 2 ** (k / 3) for k in range(3)) for s in strides)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    head = RetinaNetHead(backbone.out_channels, anchors.num_anchors_per_location()[0], cfg.num_classes)
    return RetinaNet(backbone, cfg.num_classes, anchor_generator=anchors, head=head, score_thresh=cfg.score_thresh, **common)


ARCHS: dict[str, ArchSpec] = {
    "faster_rcnn": ArchSpec("Faster R-CNN (torchvision's) on p2-p5 + max-pooled p6", _faster_rcnn, False, "maxpool"),
    "mask_rcnn_sag": ArchSpec("Mask R-CNN (torchvision's) with CenterMask's SAG-Mask head", _mask_rcnn_sag, True, "maxpool"),
    "fcos": ArchSpec("FCOS (torchvision's) on p3-p7", _fcos, False, "p6p7"),
    "retinanet": ArchSpec("RetinaNet (torchvision's) on p3-p7", _retinanet, False, "p6p7"),
    "centermask": ArchSpec("CenterMask: FCOS + SAG-Mask (+ MaskIoU in the centermask2 dialect)", _centermask, True, "p6p7"),
}


def build_detector(cfg: DetectorConfig) -> nn.Module:
    """The detector described by ``cfg``, with freshly initialised weights, ``cfg`` as ``model.config``
    (``backbone_config`` filled in from the built backbone), ``model.class_names`` and the input format as
    ``model.preprocessing``, as every model of the package has them. Weights are composed on by
    :func:`vovnet.create_detector` and :func:`vovnet.load_detector`.

    Returns:
        a torchvision-style detector: ``model(images)`` with images a list of ``[3, H, W]`` floats in 0..1.
    """
    spec = ARCHS[cfg.arch]
    size = HEAD_SIZES["lite" if cfg.lite else "full"]
    backbone = fpn_backbone(cfg.backbone(), extra=spec.pyramid, out_channels=size.fpn_channels)
    if cfg.backbone_config is None and hasattr(backbone.body, "config"):
        cfg = dataclasses.replace(cfg, backbone_config=backbone.body.config.to_dict())
    model = spec.build(backbone, cfg, size, dict(min_size=cfg.min_size, max_size=cfg.max_size, **_selection_options(cfg)))
    if not isinstance(model.transform, DetectorTransform):  # torchvision's archs: its sizes and resizing, our input format
        model.transform = DetectorTransform(cfg.min_size, cfg.max_size, input_format=cfg.effective_input_format)
    model.config = cfg
    model.class_names = cfg.class_names
    model.preprocessing = cfg.effective_input_format.record()
    return model
