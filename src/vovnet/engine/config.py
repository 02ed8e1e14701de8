"""Every setting of a training run in one dataclass: the CLI fills it, config.yaml records it, resume compares it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from ..records import record_from_dict

# Settings that may change between a run and its --resume without changing what is computed.
RESUME_FREE_FIELDS = ("out", "quiet", "workers", "data_root", "download", "device")
LR_SCHEDULES = ("cosine", "wsd", "step")


@dataclass
class TrainConfig:
    """A training run. Defaults are the ``make demo`` recipe (digits, test top-1 >= 99 %).

    Data: ``data`` is ``digits`` (embedded), ``cifar10|cifar100|mnist|fashion-mnist`` (torchvision, under
    ``data_root``, fetched only with ``download``) or a folder (``train/`` + ``val/``, or class folders
    split ``val_fraction`` with the seed). ``limit_train``/``limit_val`` keep a random subset drawn with
    the seed, the same in every task (0 = all).
    ``strict`` fails on unreadable images instead of skipping them. ``workers=None`` picks 0 for
    in-memory data and up to 8 loader processes for files.

    Model: ``model`` is the backbone variant; ``arch`` the network built on it by dense tasks (a detector
    or segmenter; None = the task's default). A task may change the defaults of any field (its
    ``config_defaults``, applied by :func:`vovnet.engine.task.task_config`).

    Optimisation: ``opt`` adamw|sgd, peak ``lr`` reached after ``warmup_epochs`` of linear warm-up, then
    ``lr_schedule``: ``cosine`` to ``lr * min_lr_ratio``, or ``wsd`` (warm-up, stable, decay): the peak held
    until the last ``decay_fraction`` of the steps after warm-up, then a linear decay to ``lr * min_lr_ratio``,
    or ``step`` (detectron2's WarmupMultiStepLR): the peak multiplied by ``lr_gamma`` at each of ``lr_steps``,
    fractions of all the steps counted from the first (``min_lr_ratio`` unused);
    ``weight_decay`` spares norm and bias parameters; ``clip_grad`` is a max gradient norm (0 = off);
    ``ema_decay`` > 0 keeps an EMA of the weights, which is then what is evaluated and saved.
    ``hard_sampling`` > 0 draws that fraction of each epoch after the first in proportion to each sample's
    last training loss (:class:`vovnet.engine.sampling.LossWeightedSampler`; 0 = uniform shuffling).
    """

    task: str = "classify"
    data: str = "digits"
    data_root: str = "data"
    download: bool = False
    val_fraction: float = 0.2
    limit_train: int = 0
    limit_val: int = 0
    strict: bool = False
    model: str = "vovnet19_slim_dw"
    pretrained: str | None = None
    arch: str | None = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    img_size: int = 32
    epochs: int = 8
    batch_size: int = 64
    workers: int | None = None
    opt: str = "adamw"
    lr: float = 4e-3
    momentum: float = 0.9
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    lr_schedule: str = "cosine"
    decay_fraction: float = 0.5
    lr_steps: list[float] = field(default_factory=lambda: [2 / 3, 8 / 9])  # detectron2's 1x: (60k, 80k) of 90k
    lr_gamma: float = 0.1
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    clip_grad: float = 0.0
    ema_decay: float = 0.0
    hard_sampling: float = 0.0
    amp: str = "none"
    channels_last: bool = True
    grad_checkpointing: bool = False
    freeze_at: int = 0
    sync_bn: bool = False
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    out: str | None = None
    quiet: bool = False
    task_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.img_size >= 32, "--img-size must be at least 32 (stage 5 pools a 2x2 map at stride 32)"),
            (self.lr > 0, "--lr must be positive"),
            (0 < self.val_fraction < 1, "--val-fraction must lie strictly between 0 and 1"),
            (self.opt in ("adamw", "sgd"), f"--opt takes adamw or sgd, got {self.opt!r}"),
            (self.lr_schedule in LR_SCHEDULES, f"--lr-schedule takes {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}"),
            (0 < self.decay_fraction <= 1, "--decay-fraction must lie in (0, 1]"),
            (list(self.lr_steps) == sorted(self.lr_steps) and all(0 < f < 1 for f in self.lr_steps),
             f"--lr-steps takes increasing fractions of the run in (0, 1), got {self.lr_steps!r}"),
            (0 < self.lr_gamma <= 1, "--lr-gamma must lie in (0, 1]"),
            (0 <= self.ema_decay < 1, "--ema-decay must lie in [0, 1)"),
            (0 <= self.hard_sampling <= 1, "--hard-sampling must lie in [0, 1]"),
            (0 <= self.label_smoothing < 1, "--label-smoothing must lie in [0, 1)"),
            (self.workers is None or self.workers >= 0, "--workers must be 0 or more"),
            (self.limit_train >= 0 and self.limit_val >= 0, "--limit-train/--limit-val must be 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return record_from_dict(cls, data, what="training setting", error=UsageError)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def config_changes(stored: TrainConfig, requested: dict[str, Any]) -> list[str]:
    """``requested`` settings that differ from ``stored`` and would change the result, as ``name: old -> new``."""
    return [
        f"{name}: {getattr(stored, name)!r} -> {value!r}"
        for name, value in requested.items()
        if name not in RESUME_FREE_FIELDS and getattr(stored, name) != value
    ]
