"""The one VoVNet class: stem, four OSA stages, optional classifier head."""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
from torch import nn

from .layers import ConvNormAct, DropPath, EffectiveSE, SeparableConvNormAct, freeze_norm_layers
from .memory_efficient import PointwiseAggregation, active_recompute, max_pool, recompute_cheap_activations
from .specs import VoVNetConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def per_camera(fn: Callable[[torch.Tensor], Sequence[torch.Tensor]], x: torch.Tensor) -> list[torch.Tensor]:
    """``fn`` (images ``[N, C, H, W]`` -> maps ``[N, c, h, w]``) over ``x``; a multi-camera batch
    ``[B, cameras, C, H, W]`` goes through as ``B * cameras`` images and its maps come back as
    ``[B, cameras, c, h, w]``."""
    if x.dim() != 5:
        return list(fn(x))
    return [m.unflatten(0, x.shape[:2]) for m in fn(x.flatten(0, 1))]


class OSABlock(nn.Module):
    """One-Shot Aggregation block.

    ``x -> [reduction] -> L chained 3x3 layers``; the block input and all L outputs are
    concatenated once, aggregated by a 1x1 conv to ``out_chs``, optionally gated by eSE and
    added to a shortcut. Input ``[N, in_chs, H, W]`` -> output ``[N, out_chs, H, W]``.
    """

    def __init__(
        self,
        in_chs: int,
        conv_chs: int,
        out_chs: int,
        num_layers: int,
        *,
        depthwise: bool = False,
        ese: bool = True,
        gate: str = "hard_sigmoid",
        shortcut: str = "none",
        drop_path: float = 0.0,
        norm: str = "batch",
        act: str = "relu",
    ):
        super().__init__()
        unit = dict(norm=norm, act=act)
        self.reduction = ConvNormAct(in_chs, conv_chs, 1, **unit) if depthwise and in_chs != conv_chs else None
        layers = []
        width = conv_chs if self.reduction is not None else in_chs
        for _ in range(num_layers):
            layers.append(SeparableConvNormAct(width, conv_chs, **unit) if depthwise else ConvNormAct(width, conv_chs, 3, **unit))
            width = conv_chs
        self.layers = nn.ModuleList(layers)
        self.concat = ConvNormAct(in_chs + num_layers * conv_chs, out_chs, 1, **unit)
        self.ese = EffectiveSE(out_chs, gate) if ese else None
        if shortcut == "identity" and in_chs != out_chs:
            raise ValueError(f"identity shortcut needs in_chs == out_chs, got {in_chs} and {out_chs}")
        self.shortcut = {"identity": nn.Identity(), "projection": ConvNormAct(in_chs, out_chs, 1, **unit)}.get(shortcut)
        # Stochastic depth only makes sense where a shortcut carries the signal past the block.
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.shortcut is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        aggregation = PointwiseAggregation(self.concat, x)  # memory-efficient training: see its docstring
        aggregation.add(x)
        h = self.reduction(x) if self.reduction is not None else x
        for layer in self.layers:
            h = layer(h)
            aggregation.add(h)
        y = aggregation.result()
        if self.ese is not None:
            y = self.ese(y)
        if self.shortcut is None:
            return y
        if self.drop_path is not None:
            y = self.drop_path(y)
        shortcut = self.shortcut(x)
        out = y + shortcut
        context = active_recompute()
        if context is not None and self.drop_path is None:
            context.register_elementwise(out, "add", y, shortcut)  # a sum is cheaper to redo than to keep
        return out


class OSAStage(nn.Module):
    """Optional 3x3/2 max-pool followed by ``len(blocks)`` OSA blocks."""

    def __init__(self, pool: nn.Module | None, blocks: Sequence[OSABlock]):
        super().__init__()
        self.pool = pool
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = max_pool(x, self.pool)
        return self.blocks(x)


class ClassifierHead(nn.Module):
    """Global average pool -> dropout -> linear. ``[N, C, H, W] -> [N, num_classes]``."""

    def __init__(self, in_chs: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x.mean((2, 3)))
        return x if pre_logits else self.fc(x)


def _make_stage_pool(config: VoVNetConfig, stage_index: int) -> nn.Module | None:
    if config.pool == "padded":
        return nn.MaxPool2d(3, 2, padding=1)
    return nn.MaxPool2d(3, 2, ceil_mode=True) if stage_index > 0 else None


def _block_shortcut(config: VoVNetConfig, block_index: int) -> str:
    if config.shortcut == "identity":
        return "identity" if block_index > 0 else "none"
    return config.shortcut


class VoVNet(nn.Module):
    """VoVNet (V1) and VoVNetV2 in every dialect, configured by a :class:`VoVNetConfig`.

    Args:
        config: the architecture.
        num_classes: classifier outputs; 0 keeps no classifier and ``forward`` returns pooled features.
        in_chans: input image channels.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, rising linearly over the blocks to this value
            (applied only to blocks with a shortcut).
        features_only: ``forward`` returns the feature maps selected by ``out_indices``
            (0 = stem after its second conv, stride 2; 1..4 = stages 2..5, strides 4..32);
            the head and the stages past the last selected one are not built.
        out_indices: which feature maps ``features_only`` returns.
    """

    def __init__(
        self,
        config: VoVNetConfig,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        features_only: bool = False,
        out_indices: Sequence[int] = (1, 2, 3, 4),
    ):
        super().__init__()
        out_indices = tuple(int(i) for i in out_indices)
        if features_only and (not out_indices or any(i not in range(5) for i in out_indices)):
            raise ValueError(f"out_indices must be a non-empty subset of 0..4, got {out_indices}")
        self.config = config
        self.in_chans = in_chans
        self.num_classes = num_classes if not features_only else 0
        self.drop_rate = drop_rate
        self.drop_path_rate = drop_path_rate
        self.features_only = features_only
        self.out_indices = out_indices
        self.name = "vovnet"
        self.class_names: list[str] | None = None
        self.preprocessing = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=(in_chans, 224, 224))
        self.grad_checkpointing = False

        unit = dict(norm=config.norm, act=config.act)
        stem_conv = SeparableConvNormAct if config.depthwise else ConvNormAct
        c0, c1, c2 = config.stem_chs
        s0, s1, s2 = config.stem_strides
        self.stem = nn.Sequential(
            ConvNormAct(in_chans, c0, 3, s0, **unit),
            stem_conv(c0, c1, stride=s1, **unit),
            stem_conv(c1, c2, stride=s2, **unit),
        )
        stride = s0 * s1
        self.feature_info = [dict(num_chs=c1, reduction=stride, module="stem.1")]
        stride *= s2

        num_stages = max(out_indices) if features_only else 4
        total_blocks = sum(config.blocks_per_stage)
        drop_rates = [drop_path_rate * i / max(total_blocks - 1, 1) for i in range(total_blocks)]
        stages, in_chs, block_id = [], c2, 0
        for s in range(num_stages):
            pool = _make_stage_pool(config, s)
            stride *= 2 if pool is not None else 1
            blocks = []
            n_blocks = config.blocks_per_stage[s]
            for b in range(n_blocks):
                ese = config.ese == "every" or (config.ese == "last" and b == n_blocks - 1)
                blocks.append(
                    OSABlock(
                        in_chs,
                        config.stage_conv_chs[s],
                        config.stage_out_chs[s],
                        config.layers_per_block,
                        depthwise=config.depthwise,
                        ese=ese,
                        gate=config.gate,
                        shortcut=_block_shortcut(config, b),
                        drop_path=drop_rates[block_id],
                        **unit,
                    )
                )
                in_chs = config.stage_out_chs[s]
                block_id += 1
            stages.append(OSAStage(pool, blocks))
            self.feature_info.append(dict(num_chs=in_chs, reduction=stride, module=f"stages.{s}"))
        self.stages = nn.ModuleList(stages)
        self.num_features = in_chs
        self.head = None if features_only else ClassifierHead(in_chs, num_classes, drop_rate)
        self._init_weights()
        self.train()  # a new module trains; with norm_eval its batch norms do not

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    # ---- forward -------------------------------------------------------------------------
    def _training_memory(self):
        if self.grad_checkpointing and torch.is_grad_enabled():
            return recompute_cheap_activations()
        return contextlib.nullcontext()

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            cameras = f" (or [B, cameras, {self.in_chans}, H, W] for features_only)" if self.features_only else ""
            raise ValueError(f"expected input of shape [N, {self.in_chans}, H, W]{cameras}, got {list(x.shape)}")

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] = (0, 1, 2, 3, 4)) -> list[torch.Tensor]:
        """Feature maps at ``indices`` (0 = stem/2, 1..4 = stages 2..5) for input ``[N, C, H, W]``."""
        self._check_input(x)
        wanted = set(indices)
        feats = []
        with self._training_memory():
            x = self.stem[1](self.stem[0](x))
            if 0 in wanted:
                feats.append(x)
            x = self.stem[2](x)
            for s, stage in enumerate(self.stages[: max(indices)] if indices else []):
                x = stage(x)
                if s + 1 in wanted:
                    feats.append(x)
        return feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` -> last stage map ``[N, num_features, H/32, W/32]``."""
        self._check_input(x)
        with self._training_memory():
            x = self.stem(x)
            for stage in self.stages:
                x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Last stage map -> logits ``[N, num_classes]`` (pooled features if ``pre_logits``)."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor):
        """Logits ``[N, num_classes]``; with ``features_only`` the maps at ``out_indices``, each
        ``[N, C, h, w]`` for ``[N, C, H, W]`` input, or ``[B, cameras, C, h, w]`` for the multi-camera
        ``[B, cameras, C, H, W]`` (every camera through the same weights, as one batch of ``B * cameras``)."""
        if self.features_only:
            return per_camera(lambda images: self.forward_intermediates(images, self.out_indices), x)
        return self.forward_head(self.forward_features(x))

    # ---- model surgery ---------------------------------------------------------------------
    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised one with ``num_classes`` outputs (0 = none)."""
        if self.head is None:
            raise ValueError("a features_only model has no classifier")
        self.num_classes = num_classes
        self.class_names = None
        fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(fc, nn.Linear):
            nn.init.normal_(fc.weight, std=0.01)
            nn.init.zeros_(fc.bias)
        device = next(self.parameters()).device
        self.head.fc = fc.to(device)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Memory-efficient training: keep only convolution outputs for backward.

        Batch norm + activation outputs and the OSA concatenations are recomputed from the stored conv
        outputs when backward needs them (see :mod:`vovnet.models.memory_efficient`); no convolution runs
        twice, gradients and batch-norm statistics are bit-identical to plain training. It stores less
        than per-block checkpointing (timm's) and costs less time.
        """
        self.grad_checkpointing = enable

    def train(self, mode: bool = True) -> "VoVNet":
        """Training mode; with ``config.norm_eval`` every batch norm stays in eval mode (running statistics)."""
        super().train(mode)
        if mode and self.config.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def freeze_at(self, at: int) -> None:
        """Freeze as detectron2's ``FREEZE_AT``: 0 nothing, 1 the stem, k the stem and stages 2..k.

        Frozen parts stop taking gradients and their batch norms become FrozenBatchNorm2d.
        """
        if not 0 <= at <= 1 + len(self.stages):
            raise ValueError(f"freeze_at takes 0..{1 + len(self.stages)}, got {at}")
        parts = ([self.stem] if at >= 1 else []) + list(self.stages[: max(at - 1, 0)])
        for part in parts:
            for p in part.parameters():
                p.requires_grad_(False)
            freeze_norm_layers(part)
