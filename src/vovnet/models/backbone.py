"""The dense-head contract: backbones that detection and segmentation heads are built on.

A backbone is a feature extractor (the "body": a VoVNet in ``features_only`` mode, or a timm
``features_only`` model for comparison runs), either alone (:class:`FeatureBackbone`, for DeepLab heads)
or followed by ``torchvision.ops.FeaturePyramidNetwork`` (:class:`FPNBackbone`). ``forward`` returns an
``OrderedDict`` of maps; ``output_shape()`` gives each map's channels and stride, the one thing a dense
head may rely on (detectron2's ``Backbone.output_shape``). :class:`BackboneConfig` is the one record of
the body's options that every dense task stores. Pretrained weights are loaded by the caller
(:func:`vovnet.weights.checkpoint.load_pretrained` on ``backbone.body``): this module builds networks only.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from ..errors import CheckpointError, UsageError
from ..records import record_from_dict
from .registry import build_model, build_registered
from .specs import VoVNetConfig

TIMM_PREFIX = "timm:"

# Which stages feed the pyramid and what is added above them. R-CNNs take C2..C5 and a max-pooled
# level for the RPN (torchvision and detectron2); one-stage heads take C3..C5 plus P6/P7 made from P5
# (FCOS, RetinaNet, CenterMask).
PYRAMIDS = {
    "maxpool": dict(stages=(2, 3, 4, 5), extra_names=("pool",)),
    "p6p7": dict(stages=(3, 4, 5), extra_names=("p6", "p7")),
}


class ShapeSpec(NamedTuple):
    """Channels and stride (input pixels per feature pixel) of one feature map."""

    channels: int
    stride: int


@dataclass(frozen=True)
class BackboneConfig:
    """The feature body's options, as every dense task records them.

    Attributes:
        model: registered name, e.g. ``vovnet19_slim_dw``; ``timm:ese_vovnet19b_dw`` uses timm's network.
        config: an explicit architecture (when rebuilding from a checkpoint), instead of the registry's.
        freeze_at: 0 trains everything; 1 freezes the stem; k freezes the stem and stages 2..k (their
            batch norms become FrozenBatchNorm2d), as detectron2's ``FREEZE_AT``.
        norm: norm layers of the whole body: ``batch``, ``frozen_batch``, ``group`` or ``sync_batch``.
        drop_path_rate: stochastic depth of the body's blocks while training (0 = none).
    """

    model: str
    config: VoVNetConfig | None = None
    freeze_at: int = 0
    norm: str = "batch"
    drop_path_rate: float = 0.0



@dataclass(frozen=True)
class ArchSpec:
    """One architecture of a dense task, as the tasks' ``ARCHS`` tables (detection's, segmentation's) list it.

    Attributes:
        summary: what it is, in a line (``vovnet models --task``).
        build: the task's builder of its parts from the config record.
        masks: whether it predicts instance masks.
        pyramid: the FPN's levels above the body (a key of ``PYRAMIDS``), where the task builds the FPN; None where
            ``build`` makes its own backbone.
    """

    summary: str
    build: Callable
    masks: bool = False
    pyramid: str | None = None


class DenseModelRecord:
    """What the dense models' config records (:class:`~vovnet.models.detection.DetectorConfig`,
    :class:`~vovnet.models.segmentation.SegmenterConfig`) share: the backbone fields (``model``,
    ``backbone_config``, ``freeze_at``, ``norm``, ``drop_path_rate``) and their JSON form in a checkpoint."""

    RECORD_NAME = "dense model"  # how an error names the record

    def backbone(self) -> BackboneConfig:
        config = VoVNetConfig.from_dict(self.backbone_config) if self.backbone_config else None
        return BackboneConfig(self.model, config, self.freeze_at, self.norm, self.drop_path_rate)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, data: Mapping):
        return record_from_dict(cls, data, what=cls.RECORD_NAME, error=CheckpointError)

def _pyramid(extra: str) -> dict:
    try:
        return PYRAMIDS[extra]
    except KeyError:
        raise UsageError(f"extra={extra!r} is not one of {', '.join(PYRAMIDS)}") from None


def _extra_block(kind: str, channels: int) -> ExtraFPNBlock:
    if kind == "maxpool":
        return LastLevelMaxPool()
    return LastLevelP6P7(channels, channels)  # equal widths: P6 is computed from P5, as in FCOS


class FPNBackbone(nn.Module):
    """Feature body + FPN.

    Args:
        body: module mapping ``[N, 3, H, W]`` to a list of maps, one per entry of ``stages``.
        in_channels: channels of the body's maps.
        stages: the stage number of each map (2..5, i.e. strides 4..32); map ``i`` becomes level ``p{stage}``.
        out_channels: FPN width (256; 128 for the lite detectors).
        extra: ``"maxpool"`` (adds ``pool``, stride 2x the last) or ``"p6p7"`` (adds ``p6``, ``p7``).
        fpn_norm: optional norm layer class for the FPN convs (None = plain convs with bias, as detectron2).

    ``forward``: ``[N, 3, H, W]`` -> ``OrderedDict(p{s}: [N, out_channels, H/2^s, W/2^s], ..., extra levels)``;
    a multi-camera ``[B, cameras, 3, H, W]`` -> the same levels as ``[B, cameras, out_channels, h, w]``.
    """

    def __init__(
        self,
        body: nn.Module,
        in_channels: Sequence[int],
        stages: Sequence[int],
        out_channels: int = 256,
        extra: str = "p6p7",
        fpn_norm: type[nn.Module] | None = None,
    ):
        super().__init__()
        extra_names = _pyramid(extra)["extra_names"]
        if len(in_channels) != len(stages):
            raise ValueError("in_channels and stages must have the same length")
        self.body = body
        self.level_names = [f"p{s}" for s in stages]
        self.fpn = FeaturePyramidNetwork(
            list(in_channels), out_channels, extra_blocks=_extra_block(extra, out_channels), norm_layer=fpn_norm
        )
        self.out_channels = out_channels
        last = 2 ** max(stages)
        extra_strides = [last * 2 ** (i + 1) for i in range(len(extra_names))]
        names = self.level_names + list(extra_names)
        strides = [2**s for s in stages] + extra_strides
        self._shapes = OrderedDict((n, ShapeSpec(out_channels, s)) for n, s in zip(names, strides))

    def output_shape(self) -> OrderedDict[str, ShapeSpec]:
        """``{level name: ShapeSpec(channels, stride)}`` in the order ``forward`` returns the maps."""
        return OrderedDict(self._shapes)

    def drop_output_conv(self, level: str) -> None:
        """Return ``level`` straight from the top-down sum (lateral 1x1 + upsampled coarser level), without
        the FPN's 3x3 output conv: for a head that convolves that level itself."""
        if level not in self.level_names:
            raise ValueError(f"no FPN level {level!r}; levels: {', '.join(self.level_names)}")
        self.fpn.layer_blocks[self.level_names.index(level)] = nn.Identity()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the body's activations in the backward pass (VoVNet and timm bodies alike)."""
        self.body.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        if x.dim() == 5:
            return _per_camera(self, x)
        feats = self.body(x)
        return self.fpn(OrderedDict(zip(self.level_names, feats)))


class FeatureBackbone(nn.Module):
    """A feature body without an FPN, under the same contract as :class:`FPNBackbone`.

    ``forward``: ``[N, 3, H, W]`` -> ``OrderedDict(c{s}: [N, C_s, H/2^s, W/2^s])`` for each stage ``s`` (``[B,
    cameras, C_s, h, w]`` for a multi-camera ``[B, cameras, 3, H, W]``); :meth:`output_shape` gives each map's
    channels and stride.
    """

    def __init__(self, body: nn.Module, channels: Sequence[int], stages: Sequence[int]):
        super().__init__()
        self.body = body
        self._shapes = OrderedDict((f"c{s}", ShapeSpec(c, 2**s)) for s, c in zip(stages, channels))

    def output_shape(self) -> OrderedDict[str, ShapeSpec]:
        return OrderedDict(self._shapes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the body's activations in the backward pass (VoVNet and timm bodies alike)."""
        self.body.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        if x.dim() == 5:
            return _per_camera(self, x)
        return OrderedDict(zip(self._shapes, self.body(x)))


def _per_camera(backbone: nn.Module, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
    """``backbone`` over a multi-camera batch ``[B, cameras, 3, H, W]``: one batch of ``B * cameras`` images, each
    map returned as ``[B, cameras, C, h, w]``."""
    maps = backbone(x.flatten(0, 1))
    return OrderedDict((name, m.unflatten(0, x.shape[:2])) for name, m in maps.items())


def _vovnet_body(cfg: BackboneConfig, out_indices: tuple[int, ...]) -> tuple[nn.Module, list[int]]:
    options = dict(features_only=True, out_indices=out_indices, drop_path_rate=cfg.drop_path_rate)
    if cfg.config is not None:
        body = build_model(cfg.model, cfg.config, **options)
    else:
        body = build_registered(cfg.model, norm=cfg.norm, **options)
    if cfg.freeze_at:
        try:
            body.freeze_at(cfg.freeze_at)
        except ValueError as e:
            raise UsageError(str(e)) from None
    return body, [body.feature_info[i]["num_chs"] for i in out_indices]


def _timm_body(cfg: BackboneConfig, out_indices: tuple[int, ...]) -> tuple[nn.Module, list[int]]:
    model = cfg.model[len(TIMM_PREFIX) :]
    try:
        import timm  # optional: only comparison runs use timm's networks
    except ImportError:
        raise UsageError(f"model {cfg.model} needs timm (pip install timm)") from None
    if cfg.freeze_at:
        raise UsageError("freeze_at is only supported for vovnet models, not timm ones")
    if model not in timm.list_models():
        raise UsageError(f"unknown timm model {model!r}")
    body = timm.create_model(model, pretrained=False, features_only=True, out_indices=out_indices, drop_path_rate=cfg.drop_path_rate)
    strides = body.feature_info.reduction()
    if strides != [2 ** (i + 1) for i in out_indices]:
        raise UsageError(f"timm model {model} has strides {strides}; an FPN here needs 4, 8, 16, 32 at stages 2..5")
    return body, body.feature_info.channels()


def feature_body(cfg: BackboneConfig, stages: Sequence[int]) -> tuple[nn.Module, list[int]]:
    """The feature extractor under a dense head, alone: ``(body, channels)``.

    ``body`` maps ``[N, 3, H, W]`` to a list with one map per entry of ``stages`` (2..5 = strides 4..32;
    no stage past the last is built); ``channels`` are their widths.
    """
    out_indices = tuple(s - 1 for s in stages)
    if cfg.model.startswith(TIMM_PREFIX):
        return _timm_body(cfg, out_indices)
    return _vovnet_body(cfg, out_indices)


def feature_backbone(cfg: BackboneConfig, stages: Sequence[int]) -> FeatureBackbone:
    """A :class:`FeatureBackbone` giving the maps of ``stages`` (2..5)."""
    body, channels = feature_body(cfg, stages)
    return FeatureBackbone(body, channels, stages)


def fpn_backbone(
    cfg: BackboneConfig, *, extra: str = "p6p7", out_channels: int = 256, fpn_norm: type[nn.Module] | None = None
) -> FPNBackbone:
    """An FPN backbone on ``cfg``'s body (a registered VoVNet, or ``timm:NAME`` with the same strides).

    Args:
        cfg: the body's options.
        extra: ``"maxpool"`` for R-CNNs (levels p2..p5 + pool) or ``"p6p7"`` for one-stage heads (p3..p7).
        out_channels: FPN width.
        fpn_norm: norm layer class inside the FPN (None = none).
    """
    stages = _pyramid(extra)["stages"]
    body, channels = feature_body(cfg, stages)
    return FPNBackbone(body, channels, stages, out_channels, extra, fpn_norm)
