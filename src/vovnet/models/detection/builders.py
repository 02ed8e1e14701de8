"""Detector builders: torchvision detectors on a VoVNet-FPN backbone, described by one config record.

Every architecture is an entry of ``ARCHS`` (which pyramid it needs, whether it predicts masks, and a
small function putting torchvision's heads on the backbone). ``lite`` detectors use a 128-channel FPN and
the CenterMask-Lite heads (2 x 128 SAG-Mask convs, 2-conv FCOS towers, 2 x 128 MaskIoU convs); lite R-CNNs
also sample 128 RoIs per image (not 512) into a 512-wide box head (not 1024), which is most of their CPU time.
``centermask`` comes in two dialects (:data:`~vovnet.models.detection.centermask.DIALECTS`): ours, on
torchvision's FCOS, and ``centermask2``, the official inference and training that converted models run.
``faster_rcnn`` and ``mask_rcnn`` come in two too (:data:`~vovnet.models.detection.rcnn_detectron2.DIALECTS`):
torchvision's, and ``detectron2``, detectron2's inference as vovnet-detectron2 configures it, which converted
vovnet-detectron2 models run; ``panoptic_fpn`` (detectron2's Panoptic FPN) in the ``detectron2`` dialect only. A
``lite`` detectron2 R-CNN is vovnet-detectron2's FPNLite: the FPN alone is 128 channels wide.
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
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from ...errors import UsageError
from ..backbone import ArchSpec, DenseModelRecord, FPNBackbone, fpn_backbone
from ..input_format import INPUT_FORMATS, InputFormat
from . import rcnn_detectron2 as d2
from .centermask import DIALECTS, CenterMask
from .fcos import ScaledFCOSHead
from .maskiou import MaskIoUHead
from .panoptic import PanopticFPN, SemSegFPNHead
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
# The dialects each arch comes in, its default first.
ARCH_DIALECTS = {
    "faster_rcnn": ("torchvision", "detectron2"), "mask_rcnn": ("torchvision", "detectron2"), "panoptic_fpn": ("detectron2",),
    "centermask": tuple(DIALECTS),
}


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
        lite: 128-channel FPN and lite heads (a ``detectron2`` R-CNN: the 128-channel FPN alone, FPNLite).
        min_size, max_size: the detector resizes each image so its short side is ``min_size`` and its long
            side at most ``max_size`` (:class:`~vovnet.models.detection.transform.DetectorTransform`; None keeps
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
        dialect: one of the arch's (``ARCH_DIALECTS``): ``torchvision`` (ours); ``centermask2`` for
            ``centermask`` (the official inference and training; see
            :data:`~vovnet.models.detection.centermask.DIALECTS`); ``detectron2`` for ``faster_rcnn``,
            ``mask_rcnn`` and ``panoptic_fpn`` (detectron2's; :mod:`~vovnet.models.detection.rcnn_detectron2`).
        train_sizes: short sides drawn from at random per training image (multi-scale training; None:
            ``min_size``).
        input_format: the pixel format the backbone gets (an :class:`~vovnet.models.input_format.InputFormat`; a
            name of ``INPUT_FORMATS`` or a preprocessing record is converted). None: the dialect's
            (:attr:`effective_input_format`), which is what checkpoints written without the field ran.
        stuff_classes: ``panoptic_fpn`` only: the names of the semantic head's channels, ``"things"`` first
            (detectron2's ``stuff_classes``).
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
    stuff_classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if self.stuff_classes is not None:
            object.__setattr__(self, "stuff_classes", tuple(str(c) for c in self.stuff_classes))
        if self.train_sizes is not None:
            object.__setattr__(self, "train_sizes", tuple(int(s) for s in self.train_sizes))
        if self.input_format is not None:  # a name, or a record read back from a checkpoint's JSON
            object.__setattr__(self, "input_format", InputFormat.from_record(self.input_format))
        if self.arch not in ARCHS:
            raise UsageError(f"unknown detector arch {self.arch!r}; choose from {', '.join(ARCHS)}")
        if not self.class_names:
            raise UsageError("a detector needs at least one class")
        dialects = ARCH_DIALECTS.get(self.arch, ("torchvision",))
        if self.dialect not in dialects:
            raise UsageError(f"{self.arch} has no dialect {self.dialect!r}; choose from {', '.join(dialects)}")
        if (self.stuff_classes is None) != (self.arch != "panoptic_fpn"):
            raise UsageError("stuff_classes: panoptic_fpn needs them, and only panoptic_fpn takes them")

    @property
    def num_classes(self) -> int:
        """Classifier outputs, background included."""
        return len(self.class_names) + 1

    @property
    def has_masks(self) -> bool:
        return ARCHS[self.arch].masks

    @property
    def effective_input_format(self) -> InputFormat:
        """``input_format``, else the dialect's: ImageNet RGB, detectron2's BGR 0..255 for ``centermask2`` and
        ``detectron2``."""
        dialect = DIALECTS[self.dialect] if self.arch == "centermask" else d2.DIALECTS[self.dialect]
        return self.input_format or INPUT_FORMATS[dialect.input_format]

    RECORD_NAME = "detector"


def _selection_options(cfg: DetectorConfig) -> dict:
    """The NMS threshold and detection count the record sets, under the names the arch's constructor takes."""
    options = {k: v for k, v in (("nms_thresh", cfg.nms_thresh), ("detections_per_img", cfg.detections_per_img)) if v is not None}
    return {f"box_{k}": v for k, v in options.items()} if cfg.arch in ("faster_rcnn", "mask_rcnn", "mask_rcnn_sag") else options


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


def _detectron2_rcnn_parts(backbone: FPNBackbone, cfg: DetectorConfig, size: HeadSize, masks: bool) -> dict:
    """The RPN, RoI heads and transform of detectron2's GeneralizedRCNN (:mod:`.rcnn_detectron2`)."""
    levels = backbone.output_shape()
    strides = [s.stride for s in levels.values()]
    roi_levels, roi_strides = list(levels)[:-1], strides[:-1]  # RoIs pool from p2..p5, the RPN also sees p6 ("pool")
    channels, foreground = backbone.out_channels, cfg.num_classes - 1
    anchors = d2.AnchorGenerator(tuple((8 * s,) for s in strides), (d2.ANCHOR_RATIOS,) * len(strides), strides)
    rpn = d2.ProposalNetwork(anchors, RPNHead(channels, len(d2.ANCHOR_RATIOS)), 0.7, 0.3, 256, 0.5, d2.RPN_PRE_NMS_TOPK,
                             d2.RPN_POST_NMS_TOPK, d2.RPN_NMS_THRESH)
    mask_parts = dict(
        mask_roi_pool=d2.LevelRoIAlign(roi_levels, roi_strides, 14),
        mask_head=MaskRCNNHeads(channels, [size.mask_dims] * size.mask_convs, 1),
        mask_predictor=MaskRCNNPredictor(size.mask_dims, size.mask_dims, foreground),
    ) if masks else {}
    roi_heads = d2.RoIHeads(
        d2.LevelRoIAlign(roi_levels, roi_strides, 7), TwoMLPHead(channels * 7 * 7, size.box_fc),
        d2.BoxPredictor(size.box_fc, cfg.num_classes), 0.5, 0.5, size.box_rois, 0.25, d2.BOX_REG_WEIGHTS,
        cfg.score_thresh, cfg.nms_thresh or 0.5, cfg.detections_per_img or 100, **mask_parts,
    )
    transform = DetectorTransform(cfg.min_size, cfg.max_size, input_format=cfg.effective_input_format,
                                  resize_rule="detectron2", train_sizes=cfg.train_sizes)
    return dict(rpn=rpn, roi_heads=roi_heads, transform=transform, dialect=cfg.dialect)


def _faster_rcnn(backbone: FPNBackbone, cfg: DetectorConfig, size: HeadSize, common: dict) -> nn.Module:
    if cfg.dialect == "detectron2":
        return FasterRCNN(backbone, **_detectron2_rcnn_parts(backbone, cfg, size, masks=False))
    return FasterRCNN(backbone, None, **_rcnn_parts(backbone, cfg, size), **common)


def _mask_rcnn(backbone: FPNBackbone, cfg: DetectorConfig, size: HeadSize, common: dict) -> nn.Module:
    if cfg.dialect == "detectron2":
        return MaskRCNN(backbone, **_detectron2_rcnn_parts(backbone, cfg, size, masks=True))
    parts = _rcnn_parts(backbone, cfg, size)
    return MaskRCNN(
        backbone,
        None,
        mask_roi_pool=MultiScaleRoIAlign(parts["box_roi_pool"].featmap_names, 14, 2),
        mask_head=MaskRCNNHeads(backbone.out_channels, [size.mask_dims] * size.mask_convs, 1),
        mask_predictor=MaskRCNNPredictor(size.mask_dims, size.mask_dims, cfg.num_classes),
        **parts,
        **common,
    )


def _panoptic_fpn(backbone: FPNBackbone, cfg: DetectorConfig, size: HeadSize, common: dict) -> nn.Module:
    strides = {name: s.stride for name, s in backbone.output_shape().items() if name != "pool"}
    sem_seg_head = SemSegFPNHead(backbone.out_channels, strides, len(cfg.stuff_classes))
    parts = _detectron2_rcnn_parts(backbone, cfg, size, masks=True)
    return PanopticFPN(backbone, sem_seg_head=sem_seg_head, stuff_classes=cfg.stuff_classes, **parts)


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
    "faster_rcnn": ArchSpec("Faster R-CNN on p2-p5 + max-pooled p6 (torchvision's; detectron2's in its dialect)", _faster_rcnn, False, "maxpool"),
    "mask_rcnn": ArchSpec("Mask R-CNN on p2-p5 + max-pooled p6 (torchvision's; detectron2's in its dialect)", _mask_rcnn, True, "maxpool"),
    "mask_rcnn_sag": ArchSpec("Mask R-CNN (torchvision's) with CenterMask's SAG-Mask head", _mask_rcnn_sag, True, "maxpool"),
    "panoptic_fpn": ArchSpec("Panoptic FPN (detectron2's): Mask R-CNN + a semantic FPN head, combined", _panoptic_fpn, True, "maxpool"),
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
    if cfg.dialect == "detectron2":  # FPNLite narrows the FPN alone (vovnet-detectron2's FPN.OUT_CHANNELS: 128)
        size = dataclasses.replace(HEAD_SIZES["full"], fpn_channels=size.fpn_channels)
    backbone = fpn_backbone(cfg.backbone(), extra=spec.pyramid, out_channels=size.fpn_channels)
    if cfg.backbone_config is None and hasattr(backbone.body, "config"):
        cfg = dataclasses.replace(cfg, backbone_config=backbone.body.config.to_dict())
    model = spec.build(backbone, cfg, size, dict(min_size=cfg.min_size, max_size=cfg.max_size, **_selection_options(cfg)))
    if not isinstance(model.transform, DetectorTransform):  # torchvision's archs: its sizes and resizing, our input format
        model.transform = DetectorTransform(cfg.min_size, cfg.max_size, input_format=cfg.effective_input_format, train_sizes=cfg.train_sizes)
    model.config = cfg
    model.class_names = cfg.class_names
    model.preprocessing = cfg.effective_input_format.record()
    return model
