"""``--task segment``: semantic segmentation in the one training engine.

Batches are ``(images [N, 3, H, W] in 0..1, masks [N, H, W] int64 with 255 = ignore)``; the model returns
logits ``[N, K, H, W]`` at the batch's size. The training loss is cross-entropy plus soft Dice; evaluation
gives mean IoU, per-class IoU and pixel accuracy (torchmetrics, summed over ranks).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ...data.segmentation import build_segmentation_data
from ...engine.report import pyplot, save_figure
from ...engine.task import EvalResult, Task, TaskData, TrainingLosses
from ...errors import DataError, UsageError
from ...factory import create_segmenter
from ...io import atomic_write_text
from ...models.segmentation.model import ARCHS, Segmenter, SegmenterConfig
from ...models.segmentation.refine import check_refine_options
from ...weights.segmenter_checkpoint import read_segmenter_checkpoint, save_segmenter, segmenter_from_checkpoint
from .losses import IGNORE_INDEX, per_image_cross_entropy, segmentation_losses
from .metrics import SegmentationMetrics
from .predict import predict_files

# The model's options take SegmenterConfig's defaults: one set for the CLI and the Python API.
_MODEL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SegmenterConfig)}


class SegmentationTask(Task):
    """``vovnet train --task segment --arch fpn_semantic|deeplabv3|deeplabv3plus --model NAME --data shapes|masks:IMAGES:MASKS``.

    ``-o`` options: ``dice_weight`` (0 = cross-entropy alone), ``aux_weight`` (> 0 adds torchvision's
    ``FCNHead`` on the stride-16 map, trained with this weight on its cross-entropy, as torchvision's
    references do with 0.5), ``fpn_channels``, ``head_channels`` (semantic FPN; DeepLabV3+'s ASPP and
    decoder), ``fpn_p2_conv`` (keep the FPN's 3x3 output conv on p2, which the semantic head convolves
    again; off by default: the stride-4 convs are the head's costliest), ``deeplab_stride`` (16 or 32),
    ``scale`` (training resize range around ``--img-size``) and
    ``color_jitter`` (both default to none on the shapes scenes, whose scenes are already random in size,
    place and colour, and to ``[0.75, 1.25]`` and 0.2 on other data), ``train_scales`` (progressive
    resizing: the network's input size in each training epoch as a fraction of ``--img-size``, the last one
    repeating; ``[0.625, 1]`` at 128 px trains the first epoch at 80 px and the rest at 128, the loss always
    at the label's size; empty = ``--img-size`` always), and test-time augmentation for evaluation and
    prediction (``vovnet eval`` and ``vovnet predict`` take ``-o`` too): ``tta_flip`` (true: average the
    class probabilities of each image and its mirror) and ``tta_sizes`` (network input sizes to average
    over, e.g. ``[128,144]``; empty = the model's own). ``refine_radius`` and ``refine_eps`` set the guided
    filter that makes predicted boundaries follow the image's edges (:mod:`.refine`; radius 5 on the shapes
    scenes, 0 = off elsewhere); a checkpoint keeps them, and ``eval``/``predict`` take them to override it.
    ``input_format`` (``rgb``, ``bgr255`` or ``{channel_order, scale, mean, std}``) sets the backbone's pixel
    format; by default it is the one ``--pretrained`` weights were trained on, else ImageNet RGB.
    """

    name = "segment"
    records_sample_losses = True
    primary_metric = "miou"
    metric_columns = ("miou", "pixel_acc")
    default_options = {
        "dice_weight": 1.0,
        "aux_weight": 0.4,
        "fpn_channels": _MODEL_DEFAULTS["fpn_channels"],
        "fpn_p2_conv": _MODEL_DEFAULTS["fpn_p2_conv"],
        "head_channels": _MODEL_DEFAULTS["head_channels"],
        "deeplab_stride": _MODEL_DEFAULTS["deeplab_stride"],
        "scale": None,
        "color_jitter": None,
        "train_scales": [0.5, 0.625, 0.75, 0.875, 1.0],
        "tta_flip": False,
        "tta_sizes": [],
        "refine_radius": None,
        "refine_eps": 1e-3,
        "input_format": None,
    }
    # Defaults on the shapes scenes and on other data: (scale, color_jitter, refine_radius). The guided
    # filter is measured on the shapes scenes only, so other data gets it when asked for.
    DATA_DEFAULTS = {True: ([1.0, 1.0], 0.0, 5), False: ([0.75, 1.25], 0.2, 0)}
    # The shapes benchmark recipe (README): the 160-px scenes seen at 128 px, a 64-channel FPN and head
    # (twice the images per second of 128 channels on 2 CPU cores) without the FPN's own p2 conv, batches
    # of 8 (on 2 cores 1.2x the images per second of 4 at 128 px and 1.6x at 64, and as much learned per
    # image), the auxiliary FCN loss, no augmentation beyond flips, AdamW at 4.5e-3 held for the first half
    # of the steps and then decayed linearly (WSD; 0.90 against the cosine's 0.87), and progressive
    # resizing (one epoch each at 64, 80, 96 and 112 px, then three at 128) so that seven epochs of 1,700
    # scenes fit the 5-minute budget; after the first epoch 80 % of the scenes are drawn by their last loss
    # (--hard-sampling: the scenes with overlapping shapes of different classes come round more often).
    # At inference the guided filter (refine_radius 5, in DATA_DEFAULTS) makes the boundaries follow the
    # scenes' edges: 0.884 -> 0.949 on the previous benchmark checkpoint.
    config_defaults = {
        "arch": "fpn_semantic",
        "data": "shapes",
        "img_size": 128,
        "epochs": 7,
        "limit_train": 1700,
        "batch_size": 8,
        "lr": 4.5e-3,
        "lr_schedule": "wsd",
        "decay_fraction": 0.5,
        "weight_decay": 1e-4,
        "warmup_epochs": 0.2,
        "label_smoothing": 0.0,
        "hard_sampling": 0.8,
    }

    def __init__(self, config):
        super().__init__(config)
        if config.arch is not None and config.arch not in ARCHS:
            raise UsageError(f"--arch for --task segment takes {', '.join(ARCHS)}, got {config.arch!r}")
        if config.drop_rate:
            raise UsageError("--drop-rate applies to classifiers; segmenters take --drop-path-rate (stochastic depth)")
        for key, default in zip(("scale", "color_jitter", "refine_radius"), self.DATA_DEFAULTS[config.data == "shapes"]):
            if self.options[key] is None:
                self.options[key] = default
        check_refine_options(self.options["refine_radius"], self.options["refine_eps"])
        scale = self.options["scale"]
        if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and 0 < scale[0] <= scale[1]):
            raise UsageError(f"-o scale takes [LOW, HIGH] with 0 < LOW <= HIGH, got {scale!r}")
        if min(self.options["dice_weight"], self.options["aux_weight"], self.options["color_jitter"]) < 0:
            raise UsageError("-o dice_weight, -o aux_weight and -o color_jitter must be 0 or more")
        for key in ("fpn_p2_conv", "tta_flip"):
            if not isinstance(self.options[key], bool):
                raise UsageError(f"-o {key} takes true or false, got {self.options[key]!r}")
        scales = self.options["train_scales"]
        if not (isinstance(scales, (list, tuple)) and all(isinstance(v, (int, float)) and 0 < v <= 4 for v in scales)):
            raise UsageError(f"-o train_scales takes a list of fractions of --img-size in (0, 4], e.g. [0.625,1], got {scales!r}")
        self.train_sizes = [max(16, round(config.img_size * v)) for v in scales]  # network input size per epoch
        sizes = self.options["tta_sizes"]
        if not (isinstance(sizes, (list, tuple)) and all(type(v) is int and v >= 16 for v in sizes)):
            raise UsageError(f"-o tta_sizes takes a list of input sizes of 16 px or more, e.g. [128,144], got {sizes!r}")

    # ---- data and model ------------------------------------------------------------------------
    def build_data(self, train: bool = True, checkpoint: dict | None = None) -> TaskData:
        c, o = self.config, self.options
        return build_segmentation_data(
            c.data, crop_size=c.img_size, train=train, val_fraction=c.val_fraction, seed=c.seed, strict=c.strict,
            class_names=checkpoint["class_names"] if checkpoint is not None else None, limit_train=c.limit_train, limit_val=c.limit_val,
            scale=tuple(o["scale"]), color_jitter=o["color_jitter"],
        )

    def build_model(self, class_names: Sequence[str]) -> Segmenter:
        c, o = self.config, self.options
        model = create_segmenter(
            c.arch or "fpn_semantic", c.model, class_names, pretrained=c.pretrained, fpn_channels=o["fpn_channels"],
            fpn_p2_conv=o["fpn_p2_conv"], head_channels=o["head_channels"], deeplab_stride=o["deeplab_stride"],
            input_size=c.img_size, freeze_at=c.freeze_at, drop_path_rate=c.drop_path_rate,
            refine_radius=o["refine_radius"], refine_eps=o["refine_eps"], aux_classifier=o["aux_weight"] > 0,
            input_format=o["input_format"],
        )
        if c.grad_checkpointing:
            model.backbone.set_grad_checkpointing(True)
        return model

    # ---- training and evaluation --------------------------------------------------------------
    def training_losses(self, model: nn.Module, batch, epoch: int) -> TrainingLosses:
        images, masks = batch
        sizes = self.train_sizes
        size = sizes[min(epoch, len(sizes) - 1)] if sizes else None  # None: the model's own input size
        logits, aux_logits = model(images, with_aux=True, input_size=size)
        losses = segmentation_losses(logits, masks, dice_weight=self.options["dice_weight"], label_smoothing=self.config.label_smoothing)
        per_sample = per_image_cross_entropy(logits, masks) if self.config.hard_sampling else None
        if aux_logits is not None:
            aux = F.cross_entropy(aux_logits.float(), masks.long(), ignore_index=IGNORE_INDEX, label_smoothing=self.config.label_smoothing)
            losses["loss_aux"] = self.options["aux_weight"] * aux
        return TrainingLosses(losses, len(images), per_sample)

    def check_deployable(self) -> None:
        if self.options["tta_flip"] or self.options["tta_sizes"]:
            raise UsageError("-o tta_flip / tta_sizes run the eval segmenter at several sizes; leave out --deploy")

    def infer(self, model: Segmenter, images: torch.Tensor) -> torch.Tensor:
        """Logits of ``images`` at their size, through ``-o tta_flip`` / ``-o tta_sizes`` when either is set
        (then log-probabilities, which score and argmax as logits do)."""
        flip, sizes = self.options["tta_flip"], self.options["tta_sizes"]
        return model.tta_log_probs(images, flip=flip, input_sizes=sizes) if flip or sizes else model(images)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, runtime, predictor: nn.Module | None = None) -> EvalResult:
        """Mean IoU over the classes present, per-class IoU, pixel accuracy, and the loss (cross-entropy without
        label smoothing + weighted Dice) of each image alone, averaged over images."""
        from torchmetrics import MeanMetric

        scores = SegmentationMetrics(model.class_names).to(runtime.device)
        loss = MeanMetric().to(runtime.device)
        model.eval()
        for batch in loader:
            images, masks = runtime.to_device(batch)
            with runtime.autocast():
                logits = self.infer(model if predictor is None else predictor, images).float()
            scores.update(logits, masks)
            for one_logits, one_mask in zip(logits, masks):  # per image, so the mean does not depend on batching
                loss.update(sum(segmentation_losses(one_logits[None], one_mask[None], dice_weight=self.options["dice_weight"]).values()))
        result = scores.compute()
        return EvalResult(
            metrics={"loss": float(loss.compute()), "miou": result["miou"], "pixel_acc": result["pixel_acc"]},
            details={"per_class_iou": result["per_class_iou"], "class_names": list(model.class_names)},
        )

    # ---- files ---------------------------------------------------------------------------------
    def save_weights(self, model: nn.Module, path: str | os.PathLike, class_names: Sequence[str], **extra: Any) -> None:
        if list(class_names) != list(model.class_names):
            raise DataError(f"class names {list(class_names)} differ from the model's {list(model.class_names)}")
        save_segmenter(model, path, dice_weight=self.options["dice_weight"], **extra)

    def load_weights(self, path: str | os.PathLike) -> tuple[Segmenter, dict]:
        """The segmenter (eval mode) and its metadata; evaluation then scores its classes and its loss."""
        # -o refine_radius / refine_eps given: they override the checkpoint's own
        refine = {k: self.options[k] for k in ("refine_radius", "refine_eps") if k in self.config.task_options}
        state_dict, meta = read_segmenter_checkpoint(path)
        return segmenter_from_checkpoint(state_dict, meta, source=str(path), **refine), meta

    @classmethod
    def checkpoint_options(cls, meta: dict) -> dict:
        """The validation loss weighs Dice as the checkpoint was trained."""
        return {"dice_weight": meta["dice_weight"]} if "dice_weight" in meta else {}

    def write_plots(self, out_dir: Path, result: EvalResult) -> list[Path]:
        """iou.png: the final per-class IoU as bars."""
        plt = pyplot()
        per_class = result.details["per_class_iou"]
        names = list(per_class)
        values = [v if v is not None else 0.0 for v in per_class.values()]
        fig, ax = plt.subplots(figsize=(min(3 + 0.5 * len(names), 16), 4))
        ax.bar(range(len(names)), values, color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
        ax.set_ylim(0, 1)
        ax.set_ylabel("IoU")
        ax.set_title(f"per-class IoU, mean {result.metrics['miou']:.3f}, pixel accuracy {result.metrics['pixel_acc']:.3f}")
        fig.tight_layout()
        return [save_figure(fig, out_dir / "iou.png")]

    # ---- reports -------------------------------------------------------------------------------
    def format_eval(self, result: EvalResult) -> str:
        m = result.metrics
        per_class = result.details["per_class_iou"]
        width = max(len(n) for n in per_class)
        lines = [f"mIoU {m['miou']:.4f}  pixel accuracy {m['pixel_acc']:.4f}  loss {m['loss']:.4f}", "per-class IoU:"]
        lines += [f"  {name:<{width}}  {'absent' if v is None else f'{v:.4f}'}" for name, v in per_class.items()]
        return "\n".join(lines)

    def predict(self, model: nn.Module, meta: dict, paths: Sequence[str], runtime, topk: int = 5,
                score_thresh: float | None = None, output_format: str = "json") -> list[dict]:
        """Per image: the share of each predicted class and each class's pixels as COCO RLE; with ``--out DIR``
        also ``NAME_overlay.png``, ``NAME_classes.png`` (raw class indices) and ``predictions.json`` in DIR."""
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise DataError(f"{missing[0]}: no such image file")
        out = self.config.out
        rows = predict_files(model.to(runtime.device), paths, out, runtime.device, infer=functools.partial(self.infer, model),
                             class_names=meta.get("class_names"))
        if out is not None:
            atomic_write_text(Path(out) / "predictions.json", json.dumps(rows, indent=2))
        return rows

    def format_predictions(self, rows: list[dict]) -> str:
        lines = []
        for r in rows:
            if "error" in r:
                lines.append(f"{r['image']}: {r['error']}")
                continue
            shares = ", ".join(f"{name} {share:.1%}" for name, share in sorted(r["class_shares"].items(), key=lambda kv: -kv[1]))
            written = f" -> {r['overlay']}, {r['class_map']}" if "overlay" in r else ""
            lines.append(f"{r['image']}: {shares}{written}")
        return "\n".join(lines)
