"""Library side of ``vovnet eval`` and ``vovnet predict``: a trained checkpoint on data or on files."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

import torch
from safetensors import safe_open
from torch import nn
from torch.utils.data import DataLoader

from ..errors import DataError, UsageError
from ..weights.checkpoint import META_KEY
from .config import TrainConfig
from .loop import loader_workers
from .runtime import Runtime
from .task import EvalResult, Task, get_task


def checkpoint_header(path: str | os.PathLike) -> dict:
    """A checkpoint's metadata read from its header alone (empty when absent or unreadable: the task's
    own loader then reports the bad file, naming it)."""
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {}).get(META_KEY, "{}"))
    except Exception:  # safetensors raises several types for foreign or broken files
        return {}


def checkpoint_task(path: str | os.PathLike) -> str:
    """The ``task`` recorded in a checkpoint's metadata (``classify`` when absent or unreadable)."""
    return checkpoint_header(path).get("task", "classify")


def _task_for(path: str | os.PathLike, task: str | None, **settings: Any) -> Task:
    meta = checkpoint_header(path)
    name = task or meta.get("task", "classify")
    cls = get_task(name)
    if settings.get("data", "") is None:  # the task's own default data (digits, shapes)
        settings["data"] = cls.config_defaults.get("data", TrainConfig.data)
    settings["task_options"] = {**cls.checkpoint_options(meta), **(settings.get("task_options") or {})}
    return cls(TrainConfig(task=name, **settings))


# (model on its device, device) -> its inference copy, e.g. ``vovnet.deploy`` at a precision (``--deploy``).
Deployer = Callable[[nn.Module, torch.device], nn.Module]


def evaluate_checkpoint(path: str | os.PathLike, data: str | None = None, *, task: str | None = None, batch_size: int = 128,
                        workers: int | None = None, device: str = "auto", amp: str = "none", deployer: Deployer | None = None,
                        **data_settings: Any) -> tuple[Task, EvalResult]:
    """Evaluate the checkpoint at ``path`` on ``data``'s evaluation split (None: the task's default data,
    digits for classifiers and the shapes scenes for detectors and segmenters); returns ``(task, result)``.

    ``deployer``: makes the copy whose predictions are scored (``vovnet eval --deploy``: :func:`vovnet.deploy`;
    a detector's loss is still the eval model's); None: the eval model's.

    ``data_settings`` are TrainConfig data fields (``data_root``, ``download``, ``val_fraction``,
    ``seed``, ``strict``) and ``task_options`` (``-o``, e.g. a segmenter's test-time augmentation). The
    data's classes must be the checkpoint's, in the same order.
    """
    t = _task_for(path, task, data=data, batch_size=batch_size, workers=workers, **data_settings)
    runtime = Runtime.create(device, amp)
    model, meta = t.load_weights(path)
    d = t.build_data(train=False, checkpoint=meta)
    trained = list(meta.get("class_names") or [])
    if trained and trained != list(d.class_names):
        diff = sorted(set(trained) ^ set(d.class_names))
        detail = f"only in one of them: {', '.join(map(str, diff[:5]))}" if diff else "same names in another order"
        raise DataError(f"{t.config.data} has other classes than {path} was trained on ({detail})")
    loader = DataLoader(d.val, batch_size=batch_size, num_workers=loader_workers(workers, d.in_memory), collate_fn=d.collate_fn)
    model = model.to(runtime.device)
    predictor = _deploy(t, model, runtime.device, deployer)
    return t, t.evaluate(model, loader, runtime, predictor=predictor)


def predict_files(path: str | os.PathLike, images: Sequence[str], *, task: str | None = None, topk: int = 5,
                  score_thresh: float | None = None, output_format: str = "json", device: str = "auto",
                  out: str | None = None, task_options: dict | None = None,
                  deployer: Deployer | None = None) -> tuple[Task, list[dict]]:
    """Predictions of the checkpoint at ``path`` for each image file; returns ``(task, rows)``.

    ``topk``: classes per image (classifiers); ``score_thresh``: the least score of the detections listed and
    drawn (detectors; None: the task's default); ``output_format``: ``json`` (rows, and ``predictions.json`` in
    ``out``) or, for detectors, ``coco`` (a COCO results file of every detection in ``out``); ``out``: a folder
    for the task's per-image outputs (the task reads it as ``config.out``); ``task_options``: the task's ``-o``
    settings; ``deployer``: makes the copy that predicts (``vovnet predict --deploy``: :func:`vovnet.deploy`);
    None: the eval model. UsageError for a setting the checkpoint's task does not take.
    """
    t = _task_for(path, task, out=out, task_options=task_options or {})
    if output_format not in t.predict_formats:
        raise UsageError(f"--format {output_format}: {t.name} predictions are written as {' or '.join(t.predict_formats)}")
    if score_thresh is not None and not t.predict_score_thresh:
        raise UsageError(f"--score-thresh does not apply to a {t.name} checkpoint")
    model, meta, runtime = _load_predictor(t, path, device, deployer)
    return t, t.predict(model, meta, images, runtime, topk, score_thresh, output_format)


def load_predictor(path: str | os.PathLike, *, task: str | None = None, device: str = "auto", out: str | None = None,
                   task_options: dict | None = None, deployer: Deployer | None = None) -> tuple[Task, nn.Module, dict, Runtime]:
    """What predicts for the checkpoint at ``path``: ``(task, model, meta, runtime)``, the model on the runtime's
    device in eval mode (``deployer``'s copy where given, as :func:`predict_files`), its checkpoint metadata.
    ``out`` and ``task_options``: as for :func:`predict_files`."""
    t = _task_for(path, task, out=out, task_options=task_options or {})
    return (t, *_load_predictor(t, path, device, deployer))


def _load_predictor(task: Task, path: str | os.PathLike, device: str, deployer: Deployer | None) -> tuple[nn.Module, dict, Runtime]:
    runtime = Runtime.create(device)
    model, meta = task.load_weights(path)
    fast = _deploy(task, model, runtime.device, deployer)
    return (model.to(runtime.device).eval() if fast is None else fast), meta, runtime


def _deploy(task: Task, model: nn.Module, device: torch.device, deployer: Deployer | None) -> nn.Module | None:
    """``deployer``'s copy of ``model`` (None without one), after the task has said that its settings allow it."""
    if deployer is None:
        return None
    task.check_deployable()
    return deployer(model.to(device), device)
