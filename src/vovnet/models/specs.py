"""The published VoVNet / VoVNetV2 variants as data.

Every architectural choice lives in :class:`VoVNetConfig`; a variant is one entry of
``MODEL_SPECS``. The three dialects in use (official VoVNetV2, timm, the seed blog) are
different values of the same fields, never different code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..records import record_from_dict

ESE_PLACEMENTS = ("every", "last", "none")
GATES = ("hard_sigmoid", "relu_sigmoid")
SHORTCUTS = ("identity", "projection", "none")
POOLS = ("ceil", "padded")
NORMS = ("batch", "frozen_batch", "group", "sync_batch")
ACTS = ("relu", "relu6", "silu", "gelu", "hardswish")


@dataclass(frozen=True)
class VoVNetConfig:
    """Architecture of one VoVNet network.

    Attributes:
        stem_chs: output channels of the three stem convolutions.
        stage_conv_chs: channels of the 3x3 layers inside each of the four OSA stages.
        stage_out_chs: output channels of each stage (the 1x1 aggregation).
        layers_per_block: number of chained 3x3 layers in every OSA block.
        blocks_per_stage: OSA blocks in stages 2..5.
        depthwise: depthwise-separable 3x3 layers (and stem convs 2, 3), with a 1x1
            reduction in front of a block whose input width differs from its conv width.
        ese: where the effective squeeze-excitation gate sits: ``every`` block (official
            VoVNetV2), the ``last`` block of each stage (timm), or ``none`` (VoVNet V1).
        gate: the eSE gate: ``hard_sigmoid`` (paper) or ``relu_sigmoid`` (the blog's
            conv -> ReLU -> sigmoid, whose gates lie in [0.5, 1)).
        shortcut: ``identity`` add on blocks 2..n of a stage (VoVNetV2), ``projection``
            (the blog's 1x1 conv-norm-act of the input added on every block) or ``none``.
        stem_strides: strides of the three stem convolutions ((2, 1, 2); the blog uses (2, 1, 1)).
        pool: ``ceil`` = MaxPool2d(3, 2, ceil_mode=True) before stages 3..5; ``padded`` =
            MaxPool2d(3, 2, padding=1) before every stage, stage 2 included (the blog).
        act: activation after every norm layer.
        norm: ``batch``, ``frozen_batch``, ``group`` or ``sync_batch``.
        norm_eval: keep every batch norm in eval mode (running statistics, no updates) while the rest of
            the network trains, as mmdet backbones' ``norm_eval=True`` (the camera-3D detectors' setting).
    """

    stem_chs: tuple[int, int, int] = (64, 64, 128)
    stage_conv_chs: tuple[int, int, int, int] = (128, 160, 192, 224)
    stage_out_chs: tuple[int, int, int, int] = (256, 512, 768, 1024)
    layers_per_block: int = 5
    blocks_per_stage: tuple[int, int, int, int] = (1, 1, 2, 2)
    depthwise: bool = False
    ese: str = "every"
    gate: str = "hard_sigmoid"
    shortcut: str = "identity"
    stem_strides: tuple[int, int, int] = (2, 1, 2)
    pool: str = "ceil"
    act: str = "relu"
    norm: str = "batch"
    norm_eval: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (
            ("ese", ESE_PLACEMENTS),
            ("gate", GATES),
            ("shortcut", SHORTCUTS),
            ("pool", POOLS),
            ("norm", NORMS),
            ("act", ACTS),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        # JSON round trips give lists; keep the dataclass hashable and comparable.
        for name in ("stem_chs", "stage_conv_chs", "stage_out_chs", "blocks_per_stage", "stem_strides"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if len(self.stem_chs) != 3 or len(self.stem_strides) != 3:
            raise ValueError("stem_chs and stem_strides take three values")
        if not (len(self.stage_conv_chs) == len(self.stage_out_chs) == len(self.blocks_per_stage) == 4):
            raise ValueError("stage_conv_chs, stage_out_chs and blocks_per_stage take four values")

    def replace(self, **changes) -> "VoVNetConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "VoVNetConfig":
        return record_from_dict(cls, data, what="architecture")


@dataclass(frozen=True)
class ModelSpec:
    """A registered variant: its architecture plus the facts shown by ``vovnet models``."""

    config: VoVNetConfig
    version: str  # "V2" (eSE + identity mapping), "V1", or "blog"
    official_name: str
    timm_name: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)


_SLIM_CONV = (64, 80, 96, 112)
_WIDE_CONV = (128, 160, 192, 224)
_WIDE_OUT = (256, 512, 768, 1024)

_V19 = VoVNetConfig(layers_per_block=3, blocks_per_stage=(1, 1, 1, 1))
_V19_SLIM = _V19.replace(stage_conv_chs=_SLIM_CONV, stage_out_chs=(112, 256, 384, 512))
_V27_SLIM = VoVNetConfig(stage_conv_chs=_SLIM_CONV, stage_out_chs=(128, 256, 384, 512), blocks_per_stage=(1, 1, 1, 1))
_V1 = dict(ese="none", shortcut="none")

MODEL_SPECS: dict[str, ModelSpec] = {
    "vovnet19_slim_dw": ModelSpec(
        _V19_SLIM.replace(stem_chs=(64, 64, 64), depthwise=True), "V2", "V-19-slim-dw-eSE", "ese_vovnet19b_slim_dw"
    ),
    "vovnet19_dw": ModelSpec(_V19.replace(stem_chs=(64, 64, 64), depthwise=True), "V2", "V-19-dw-eSE", "ese_vovnet19b_dw"),
    "vovnet19_slim": ModelSpec(_V19_SLIM, "V2", "V-19-slim-eSE", "ese_vovnet19b_slim"),
    "vovnet19": ModelSpec(_V19, "V2", "V-19-eSE", "ese_vovnet19b"),
    "vovnet39": ModelSpec(VoVNetConfig(), "V2", "V-39-eSE", "ese_vovnet39b"),
    "vovnet57": ModelSpec(VoVNetConfig(blocks_per_stage=(1, 1, 4, 3)), "V2", "V-57-eSE", "ese_vovnet57b"),
    "vovnet99": ModelSpec(VoVNetConfig(blocks_per_stage=(1, 3, 9, 3)), "V2", "V-99-eSE", "ese_vovnet99b"),
    "vovnet27_slim": ModelSpec(_V27_SLIM, "V2", "VoVNet-27-slim + eSE"),
    "vovnet27_slim_v1": ModelSpec(_V27_SLIM.replace(**_V1), "V1", "VoVNet-27-slim"),
    "vovnet39_v1": ModelSpec(VoVNetConfig(**_V1), "V1", "VoVNet-39", "vovnet39a"),
    "vovnet57_v1": ModelSpec(VoVNetConfig(blocks_per_stage=(1, 1, 4, 3), **_V1), "V1", "VoVNet-57", "vovnet57a"),
}

# The seed blog's block, expressed as options on the same network (REFERENCE.md section 2).
BLOG_DIALECT = dict(
    act="relu6", gate="relu_sigmoid", shortcut="projection", stem_strides=(2, 1, 1), pool="padded", ese="every"
)
