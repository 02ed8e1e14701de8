"""The contract between a task (classification, detection, segmentation) and the one training engine.

The engine (:mod:`vovnet.engine.loop`) owns everything tasks share: the optimizer and its schedule,
mixed precision, gradient clipping, EMA, DistributedDataParallel, progress bars, ``metrics.csv``,
``curves.png``, ``summary.json``, ``config.yaml``, ``last``/``best`` checkpoints and resume state.
A task owns what differs: its data, its model, its loss, its metrics, its checkpoint metadata and
its plots. A new task is a subclass of :class:`Task` plus one line in :data:`TASKS`.

How the engine calls a task, in order::

    task = get_task(config.task)(config)
    data = task.build_data()                          # TaskData: datasets, collate_fn, class names
    model = task.build_model(data.class_names)        # nn.Module, on CPU, train mode
    for epoch ...:
        for batch in DataLoader(data.train, collate_fn=data.collate_fn, ...):
            batch = runtime.to_device(batch)
            with runtime.autocast():
                step = task.training_losses(model, batch, epoch)   # TrainingLosses
            sum(step.losses.values()).backward() ...
        result = task.evaluate(eval_model, val_loader, runtime)   # EvalResult, reduced over ranks
        task.save_weights(eval_model, "last.safetensors", data.class_names, epoch=..., metrics=...)
    task.write_plots(out_dir, result)                 # e.g. confusion.png

and for ``vovnet eval`` / ``vovnet predict``::

    task = get_task(meta["task"])(config)              # -o from task.checkpoint_options(meta), the user's winning
    model, meta = task.load_weights(path)              # eval mode, class names in meta["class_names"]
    data = task.build_data(train=False, checkpoint=meta)
    result = task.evaluate(model, loader, runtime) ; print(task.format_eval(result))
    rows = task.predict(model, meta, paths, runtime, topk) ; print(task.format_predictions(rows))

Batches are opaque to the engine: a classification batch is ``(images [N, 3, H, W], labels [N])``;
a detection batch may be ``(list of [3, H, W] images, list of target dicts)`` and its model returns a
dict of losses in train mode; a segmentation model returns per-pixel logits ``[N, K, H, W]``.
``training_losses`` hides that difference by always returning named scalar losses.

A task holds no state that changes after construction: its options are validated once in ``__init__``,
and everything a call needs comes in through its arguments (the epoch, a checkpoint's metadata).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.splits import TaskData
from ..errors import UsageError
from .config import TrainConfig
from .runtime import Runtime


@dataclass
class EvalResult:
    """Metrics of one evaluation pass, already reduced over all processes.

    Attributes:
        metrics: scalar metrics; always ``loss`` and the task's ``primary_metric``.
        details: JSON-serialisable extras (per-class accuracy, a confusion matrix, ...).
    """

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)


class TrainingLosses(NamedTuple):
    """What :meth:`Task.training_losses` returns for one batch.

    Attributes:
        losses: named scalar losses; the engine back-propagates their sum.
        count: samples in the batch.
        per_sample: each sample's loss ``[N]`` (detached), which ``--hard-sampling`` draws by; None for
            tasks without ``records_sample_losses``.
    """

    losses: dict[str, torch.Tensor]
    count: int
    per_sample: torch.Tensor | None = None


class Recipe(NamedTuple):
    """A named training recipe of a task (``-o recipe=NAME``): defaults below the user's own settings.

    Attributes:
        config: TrainConfig fields, over the task's ``config_defaults`` (see :func:`task_config`).
        options: ``-o`` options, over the task's ``default_options``.
    """

    config: dict[str, Any]
    options: dict[str, Any]


class Task:
    """Base class of a task. Subclasses set the class attributes and implement the methods.

    Class attributes:
        name: the ``--task`` value.
        primary_metric: key of ``EvalResult.metrics`` that picks ``best.safetensors`` (higher is better).
        metric_columns: metric keys written to ``metrics.csv`` after the engine's own columns.
        find_unused_parameters: passed to DistributedDataParallel (detectors with unused heads need True).
        records_sample_losses: ``training_losses`` returns ``per_sample`` losses, so ``--hard-sampling`` works.
        default_options: task-specific settings and their defaults; users change them with
            ``vovnet train -o KEY=VALUE`` (stored in ``config.task_options``).
        config_defaults: TrainConfig fields whose default differs for this task (detection trains at
            another image size and learning rate than classification); see :func:`task_config`.
        recipes: named :class:`Recipe` s, chosen with ``-o recipe=NAME`` (e.g. detection's official
            CenterMask2 schedules); every task takes the ``recipe`` option.
        predict_formats: what ``predict`` can write (``vovnet predict --format``): ``json`` always, ``coco``
            (a COCO results file) for detectors.
        predict_score_thresh: ``predict`` takes a score threshold (``vovnet predict --score-thresh``): the
            detections it lists and draws.
    """

    name: ClassVar[str] = ""
    primary_metric: ClassVar[str] = ""
    metric_columns: ClassVar[tuple[str, ...]] = ()
    find_unused_parameters: ClassVar[bool] = False
    records_sample_losses: ClassVar[bool] = False
    default_options: ClassVar[dict[str, Any]] = {}
    config_defaults: ClassVar[dict[str, Any]] = {}
    recipes: ClassVar[dict[str, Recipe]] = {}
    predict_formats: ClassVar[tuple[str, ...]] = ("json",)
    predict_score_thresh: ClassVar[bool] = False

    def __init__(self, config: TrainConfig):
        self.config = config
        defaults = {**self.default_options, "recipe": None}
        unknown = sorted(set(config.task_options) - set(defaults))
        if unknown:
            raise UsageError(f"unknown option(s) for --task {self.name}: {', '.join(unknown)} (known: {', '.join(defaults)})")
        recipe = self.recipe(config.task_options.get("recipe"))
        self.options = {**defaults, **recipe.options, **config.task_options}

    @classmethod
    def recipe(cls, name: str | None) -> Recipe:
        """The recipe called ``name`` (None: no recipe, nothing changed); UsageError naming the known ones."""
        if name is None:
            return Recipe({}, {})
        if name not in cls.recipes:
            raise UsageError(f"unknown recipe {name!r} for --task {cls.name}; choose from {', '.join(cls.recipes) or 'none'}")
        return cls.recipes[name]

    # ---- data and model ------------------------------------------------------------------------
    def build_data(self, train: bool = True, checkpoint: dict | None = None) -> TaskData:
        """Datasets from ``config.data`` (``train=False``: only the evaluation split is built).

        ``checkpoint``: the metadata of the weights being evaluated (``vovnet eval``), whose input size,
        normalisation and classes the data must follow; None while training.

        Must raise a :class:`vovnet.errors.VoVNetError` for data that cannot train (no classes, an
        empty class, unreadable files with ``--strict``) before any training starts.
        """
        raise NotImplementedError

    def build_model(self, class_names: Sequence[str]) -> nn.Module:
        """A fresh model for ``class_names`` (``config.pretrained`` loaded if given), on the CPU."""
        raise NotImplementedError

    # ---- training and evaluation --------------------------------------------------------------
    def training_losses(self, model: nn.Module, batch: Any, epoch: int) -> TrainingLosses:
        """Forward one batch already on the device in train mode, in training epoch ``epoch`` (0-based:
        a task's per-epoch schedule, such as progressive resizing, reads it)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader: DataLoader, runtime: Runtime, predictor: nn.Module | None = None) -> EvalResult:
        """Metrics of ``model`` (eval mode, unwrapped from DDP) on ``loader``, reduced over ranks; with a
        ``predictor`` (its :func:`vovnet.deploy` copy: same inputs and outputs) the metrics score that one's
        predictions (a loss that needs the training-mode forward stays ``model``'s).

        Under torchrun every rank sees a disjoint shard of ``loader``'s dataset; the result must be the
        same as for one process.
        """
        raise NotImplementedError

    # ---- files ---------------------------------------------------------------------------------
    def save_weights(self, model: nn.Module, path: str | os.PathLike, class_names: Sequence[str], **extra: Any) -> None:
        """Write a checkpoint at ``path`` atomically; ``extra`` (JSON-serialisable) goes into its metadata."""
        raise NotImplementedError

    def load_weights(self, path: str | os.PathLike) -> tuple[nn.Module, dict]:
        """``(model in eval mode, metadata)`` from a checkpoint written by ``save_weights``."""
        raise NotImplementedError

    @classmethod
    def checkpoint_options(cls, meta: dict) -> dict[str, Any]:
        """``-o`` settings a checkpoint implies for evaluating it (a user's own ``-o`` wins)."""
        return {}

    def write_plots(self, out_dir: Path, result: EvalResult) -> list[Path]:
        """Task-specific figures of a final evaluation (the engine draws curves.png itself)."""
        return []

    # ---- reports -------------------------------------------------------------------------------
    def format_eval(self, result: EvalResult) -> str:
        """Human-readable report of ``vovnet eval``."""
        return "\n".join(f"{k}: {v:.4f}" for k, v in result.metrics.items())

    def predict(self, model: nn.Module, meta: dict, paths: Sequence[str], runtime: Runtime, topk: int = 5,
                score_thresh: float | None = None, output_format: str = "json") -> list[dict]:
        """One JSON-serialisable dict per image file in ``paths`` (``vovnet predict``); ``model`` is the loaded
        one or, with ``--deploy``, its :func:`vovnet.deploy` copy (same inputs and outputs). ``score_thresh``
        (None: the task's default) and ``output_format`` only where ``predict_score_thresh`` and
        ``predict_formats`` say the task takes them."""
        raise NotImplementedError

    def check_deployable(self) -> None:
        """Raise :class:`~vovnet.errors.UsageError` where these settings need the eval model (``vovnet predict --deploy``)."""

    def format_predictions(self, rows: list[dict]) -> str:
        """Human-readable report of ``vovnet predict``."""
        return "\n".join(str(r) for r in rows)


# --task name -> "module:Class", imported on first use so that `vovnet train` loads only its own task.
TASKS: dict[str, str] = {
    "classify": "vovnet.tasks.classification:ClassificationTask",
    "detect": "vovnet.tasks.detection:DetectionTask",
    "segment": "vovnet.tasks.segmentation:SegmentationTask",
}


def register_task(name: str, target: str | type[Task]) -> None:
    """Add a task under ``name``: a ``Task`` subclass or a ``"module:Class"`` string."""
    TASKS[name] = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"


def task_config(**settings: Any) -> TrainConfig:
    """A TrainConfig from explicit ``settings``: a field left out takes the value of the recipe named by
    ``task_options["recipe"]`` (if any), else the task's ``config_defaults`` value, else TrainConfig's
    default. The recipe's ``-o`` options are applied by :class:`Task` itself, below the user's own."""
    task = get_task(settings.get("task", TrainConfig.task))
    recipe = task.recipe(settings.get("task_options", {}).get("recipe"))
    return TrainConfig(**{**task.config_defaults, **recipe.config, **settings})


def get_task(name: str) -> type[Task]:
    """The Task class registered as ``name``; UsageError for an unknown or missing task."""
    if name not in TASKS:
        raise UsageError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    module_name, _, class_name = TASKS[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"task {name!r} is not available in this installation ({e})") from None
    return cls
