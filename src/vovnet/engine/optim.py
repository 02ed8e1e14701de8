"""Optimizer, learning-rate schedules and weight EMA of the training loop."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: weights with decay, norm scales and biases (1-D) without."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    """``adamw`` or ``sgd`` (with momentum) over :func:`param_groups`; the fused implementation (one kernel
    for all parameters) where every parameter is a float tensor on the CPU or a GPU, which on 2 CPU cores
    makes a small model's training step about 10 % faster than the per-parameter loop."""
    groups = param_groups(model, weight_decay)
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, fused=fused)
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


class WarmupCosine:
    """Learning-rate factor at optimizer step ``t``: linear from ~0 to 1 over ``warmup`` steps, then a
    cosine from 1 to ``min_ratio`` at ``total`` steps. Plain numbers only, so its state is JSON-like."""

    def __init__(self, total: int, warmup: int, min_ratio: float):
        self.total, self.warmup, self.min_ratio = total, warmup, min_ratio

    def __call__(self, t: int) -> float:
        if t < self.warmup:
            return (t + 1) / (self.warmup + 1)
        return self.decay(min(1.0, (t - self.warmup) / max(1, self.total - self.warmup)))

    def decay(self, progress: float) -> float:
        """The factor at ``progress`` (0..1) through the steps after warm-up."""
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupStableDecay(WarmupCosine):
    """Warm-up, stable, decay: the same warm-up, then 1 until the last ``decay_fraction`` of the steps after
    warm-up, then linear to ``min_ratio`` at ``total`` steps. A short run spends more of its steps at the
    peak rate than under a cosine and still ends annealed."""

    def __init__(self, total: int, warmup: int, min_ratio: float, decay_fraction: float):
        super().__init__(total, warmup, min_ratio)
        self.decay_fraction = decay_fraction

    def decay(self, progress: float) -> float:
        decayed = max(0.0, progress - (1 - self.decay_fraction)) / self.decay_fraction
        return 1 - (1 - self.min_ratio) * decayed


class WarmupMultiStep(WarmupCosine):
    """Step decay, as detectron2's WarmupMultiStepLR: the same warm-up, multiplied by ``gamma`` once for each
    of ``steps`` reached. ``steps`` are fractions of all ``total`` steps counted from the first (warm-up
    included, as detectron2's ``SOLVER.STEPS``); the step ``round(f * total)`` is the first decayed one."""

    def __init__(self, total: int, warmup: int, steps: Sequence[float], gamma: float):
        super().__init__(total, warmup, min_ratio=gamma ** len(steps))
        self.steps, self.gamma = [float(f) for f in steps], gamma

    def __call__(self, t: int) -> float:
        decays = sum(t >= round(f * self.total) for f in self.steps)
        return min(1.0, (t + 1) / (self.warmup + 1)) * self.gamma ** decays


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_ratio: float,
                    schedule: str = "cosine", decay_fraction: float = 0.5,
                    steps: Sequence[float] = (), gamma: float = 0.1) -> LambdaLR:
    """Per-step LambdaLR: :class:`WarmupCosine` (``cosine``), :class:`WarmupStableDecay` (``wsd``) or
    :class:`WarmupMultiStep` (``step``, at the fractions ``steps`` of ``total_steps``, by ``gamma``)."""
    if schedule == "wsd":
        return LambdaLR(optimizer, WarmupStableDecay(total_steps, warmup_steps, min_ratio, decay_fraction))
    if schedule == "step":
        return LambdaLR(optimizer, WarmupMultiStep(total_steps, warmup_steps, steps, gamma))
    return LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps, min_ratio))


def build_ema(model: nn.Module, decay: float) -> AveragedModel:
    """Exponential moving average of ``model``'s parameters and buffers (torch.optim.swa_utils)."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
