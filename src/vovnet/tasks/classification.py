"""Image classification: a VoVNet with a linear head, cross-entropy, top-1/top-5 and a confusion matrix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from torch.utils.data import DataLoader

from ..data.classification import (
    BUILTIN_SOURCES,
    FOLDER_CROP_PCT,
    Preprocessing,
    build_classification_data,
    eval_transform,
    load_image,
)
from ..engine.report import pyplot, save_figure
from ..engine.task import EvalResult, Task, TaskData, TrainingLosses
from ..errors import DataError, UsageError
from ..factory import create_model
from ..models.registry import get_spec
from ..models.vovnet import VoVNet
from ..weights.checkpoint import load_weights, model_from_metadata, read_checkpoint, save_checkpoint
from ..weights.hub import pretrained_preprocessing


def checkpoint_preprocessing(meta: dict) -> Preprocessing:
    """How a checkpoint's classifier wants its images: its normalisation, evaluation size and crop."""
    pre = meta.get("preprocessing") or {}
    size = (meta.get("eval_input") or {}).get("img_size") or pre.get("input_size", (3, 224, 224))[-1]
    crop = (meta.get("eval_input") or {}).get("crop_pct", FOLDER_CROP_PCT)
    return Preprocessing.from_record(pre, int(size), crop)


def top_classes(probs: torch.Tensor, class_names: Sequence[str], k: int) -> list[dict]:
    """An image's record of its ``k`` most probable classes, most probable first: ``[{"class": name, "prob": p}]``
    from its probabilities ``[num_classes]``."""
    p, idx = probs.topk(k)
    return [{"class": class_names[i], "prob": float(q)} for q, i in zip(p.tolist(), idx.tolist())]


def draw_top_classes(image: torch.Tensor, top: Sequence[dict]) -> torch.Tensor:
    """``image`` ``[3, H, W]`` uint8 with its top classes (:func:`top_classes`) written in its top-left corner,
    one ``name 93%`` a line, white on black -> ``[3, H, W]`` uint8."""
    canvas = Image.fromarray(image.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    y = 2
    for row in top:
        text = f"{row['class']} {row['prob']:.0%}"
        left, top_, right, bottom = draw.textbbox((4, y), text, font=font)
        draw.rectangle((left - 2, top_ - 1, right + 2, bottom + 1), fill=(0, 0, 0))
        draw.text((4, y), text, fill=(255, 255, 255), font=font)
        y = bottom + 3
    return torch.from_numpy(np.array(canvas)).permute(2, 0, 1)  # over HWC memory, as the video encoder takes it


class ClassificationTask(Task):
    """``--task classify``: batches are ``(images [N, 3, S, S], labels [N])``; the model returns logits ``[N, K]``."""

    name = "classify"
    records_sample_losses = True
    primary_metric = "top1"
    metric_columns = ("top1", "top5")

    def __init__(self, config):
        super().__init__(config)
        get_spec(config.model)  # an unknown name is a usage error before any folder is made
        # The input of the weights trained from (--pretrained: a tag or a file), at config.img_size.
        record = pretrained_preprocessing(config.pretrained) if config.pretrained else None
        self.prep = Preprocessing.from_record(record, config.img_size, 1.0 if config.data in BUILTIN_SOURCES else None)

    # ---- data and model ------------------------------------------------------------------------
    def build_data(self, train: bool = True, checkpoint: dict | None = None) -> TaskData:
        c = self.config
        prep = checkpoint_preprocessing(checkpoint) if checkpoint is not None else self.prep
        return build_classification_data(
            c.data, prep, train=train, data_root=c.data_root, download=c.download,
            val_fraction=c.val_fraction, seed=c.seed, strict=c.strict, limit_train=c.limit_train, limit_val=c.limit_val,
        )

    def build_model(self, class_names: Sequence[str]) -> VoVNet:
        c = self.config
        model = create_model(c.model, num_classes=len(class_names), pretrained=c.pretrained,
                             drop_rate=c.drop_rate, drop_path_rate=c.drop_path_rate)
        model.class_names = list(class_names)
        prep = self.prep
        model.preprocessing = prep.record()
        if c.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if c.freeze_at:
            try:
                model.freeze_at(c.freeze_at)
            except ValueError as e:
                raise UsageError(f"--freeze-at: {e}") from None
        return model

    # ---- training and evaluation --------------------------------------------------------------
    def training_losses(self, model: nn.Module, batch, epoch: int) -> TrainingLosses:
        images, labels = batch
        logits = model(images)
        losses = F.cross_entropy(logits.float(), labels, label_smoothing=self.config.label_smoothing, reduction="none")
        return TrainingLosses({"loss": losses.mean()}, len(labels), losses.detach())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, runtime, predictor: nn.Module | None = None) -> EvalResult:
        """Top-1, top-5 (top-K for fewer classes), mean cross-entropy, per-class accuracy and the
        confusion matrix (rows = true class), summed over ranks by torchmetrics."""
        from torchmetrics import MeanMetric
        from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

        num_classes = model.num_classes
        metrics = {
            "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            "confusion": MulticlassConfusionMatrix(num_classes),
            "loss": MeanMetric(),
        }
        metrics = {k: m.to(runtime.device) for k, m in metrics.items()}
        model.eval()
        for batch in loader:
            images, labels = runtime.to_device(batch)
            with runtime.autocast():
                logits = (model if predictor is None else predictor)(images).float()
            for key in ("top1", "top5", "confusion"):
                metrics[key].update(logits, labels)
            metrics["loss"].update(F.cross_entropy(logits, labels, reduction="none"))
        confusion = metrics["confusion"].compute().cpu()
        per_class = (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist()
        names = model.class_names or [str(i) for i in range(num_classes)]
        return EvalResult(
            metrics={k: float(metrics[k].compute()) for k in ("loss", "top1", "top5")},
            details=dict(
                per_class_accuracy=dict(zip(names, per_class)),
                confusion=confusion.tolist(),
                class_names=list(names),
                samples=int(confusion.sum()),
            ),
        )

    # ---- files ---------------------------------------------------------------------------------
    def save_weights(self, model: nn.Module, path: str | os.PathLike, class_names: Sequence[str], **extra: Any) -> None:
        prep = self.prep
        save_checkpoint(model, path, class_names=class_names, task=self.name,
                        eval_input=dict(img_size=prep.img_size, crop_pct=prep.crop_pct), **extra)

    def load_weights(self, path: str | os.PathLike) -> tuple[VoVNet, dict]:
        """The classifier in ``path`` (eval mode) and its metadata."""
        state_dict, meta = read_checkpoint(path)
        if meta is None or not meta.get("num_classes"):
            raise DataError(f"{path}: not a vovnet classification checkpoint (no metadata or no classifier)")
        model = model_from_metadata(meta)
        load_weights(model, state_dict, source=str(path))
        return model.eval(), meta

    def write_plots(self, out_dir: Path, result: EvalResult) -> list[Path]:
        """confusion.png: the final confusion matrix, rows normalised to the true class."""
        plt = pyplot()
        confusion = torch.tensor(result.details["confusion"], dtype=torch.float64)
        rates = confusion / confusion.sum(1, keepdim=True).clamp(min=1)
        names = result.details["class_names"]
        k = len(names)
        side = min(4 + 0.45 * k, 16)
        fig, ax = plt.subplots(figsize=(side, side))
        ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
        if k <= 30:  # beyond that the labels would overlap
            ax.set_xticks(range(k), names, rotation=90)
            ax.set_yticks(range(k), names)
            for i in range(k):
                for j in range(k):
                    if confusion[i, j]:
                        ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=8,
                                color="white" if rates[i, j] > 0.5 else "black")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"confusion matrix, top-1 {result.metrics['top1']:.2%}")
        fig.tight_layout()
        return [save_figure(fig, out_dir / "confusion.png")]

    # ---- reports -------------------------------------------------------------------------------
    def format_eval(self, result: EvalResult) -> str:
        m = result.metrics
        lines = [f"top-1 {m['top1']:.2%}  top-5 {m['top5']:.2%}  loss {m['loss']:.4f}  ({result.details['samples']} images)",
                 "per-class accuracy:"]
        width = max(len(n) for n in result.details["per_class_accuracy"])
        lines += [f"  {name:<{width}}  {acc:.2%}" for name, acc in result.details["per_class_accuracy"].items()]
        return "\n".join(lines)

    @torch.no_grad()
    def predict(self, model: nn.Module, meta: dict, paths: Sequence[str], runtime, topk: int = 5,
                score_thresh: float | None = None, output_format: str = "json") -> list[dict]:
        """``[{"image": path, "top": [{"class": name, "prob": p}, ...]}]``, most probable first."""
        transform = eval_transform(checkpoint_preprocessing(meta))
        names = meta.get("class_names") or [str(i) for i in range(getattr(model, "module", model).num_classes)]
        k = min(topk, len(names))
        model = model.to(runtime.device)
        rows = []
        for path in paths:
            if not Path(path).is_file():
                raise DataError(f"{path}: no such image file")
            x = runtime.to_device(transform(load_image(path)).unsqueeze(0))
            with runtime.autocast():
                probs = model(x).float().softmax(1)[0]
            rows.append({"image": str(path), "top": top_classes(probs, names, k)})
        return rows

    def format_predictions(self, rows: list[dict]) -> str:
        return "\n".join(f"{r['image']}: " + ", ".join(f"{t['class']} {t['prob']:.1%}" for t in r["top"]) for r in rows)
