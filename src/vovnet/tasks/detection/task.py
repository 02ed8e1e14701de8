"""``--task detect``: object detection and instance segmentation in the one training loop.

Batches are ``(list of [3, H, W] float images, list of target dicts)``; the detector returns its named
losses in train mode and per-image detections in eval mode. Metrics are COCO box AP (and mask AP for the mask
models) from torchmetrics, and for a Panoptic FPN on COCO panoptic data panoptic quality (:mod:`.panoptic_quality`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...data.detection import collate, open_dataset, split_off, with_transforms, without_crowd
from ...data.panoptic import PANOPTIC_PREFIX, PanopticClasses
from ...data.shapes import render_scenes
from ...data.splits import seeded_subset
from ...engine.task import EvalResult, Task, TaskData, TrainingLosses
from ...errors import DataError, UsageError
from ...factory import build_with_backbone_weights
from ...models.detection.builders import ARCHS, DetectorConfig, build_detector, default_lite
from ...weights.detector_checkpoint import (
    detector_from_checkpoint,
    is_detector_checkpoint,
    load_for_finetuning,
    read_detector_checkpoint,
    save_detector,
)
from .metrics import DetectionMetrics
from .panoptic_quality import PanopticQuality
from .predict import COCO_RESULTS, DISPLAY_THRESH, predict_coco_results, predict_files
from .recipes import RECIPES

# What evaluating a Panoptic FPN on instance annotations reports instead of panoptic quality.
NO_PANOPTIC_QUALITY = ("panoptic quality: not computed (it needs COCO panoptic annotations: --data "
                       "coco-panoptic:PANOPTIC.json:IMAGE_DIR[:PNG_DIR]); box and mask AP above are of its instances")

DEFAULT_ARCH = "centermask"


@contextlib.contextmanager
def loss_mode(model: nn.Module):
    """Train-mode forward (the detector returns its losses) with batch norm and dropout kept in eval
    mode, so measuring a validation loss changes no statistics."""
    model.train()
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
            m.eval()
    try:
        yield
    finally:
        model.eval()


def stuff_of(class_names: Sequence[str]) -> tuple[str, ...] | None:
    """A panoptic set's stuff names (None for instance data)."""
    return class_names.stuff if isinstance(class_names, PanopticClasses) else None


class DetectionTask(Task):
    """Detectors from :mod:`vovnet.models.detection.builders` on ``--data shapes``, ``coco:ANN.json:IMAGE_DIR`` or
    ``coco-panoptic:PANOPTIC.json:IMAGE_DIR[:PNG_DIR]`` (COCO panoptic: things as instances, crowd regions left out
    of training; a ``panoptic_fpn`` also trains its semantic head on the stuff and is scored by panoptic quality).

    Options (``-o KEY=VALUE``): ``lite`` (default: V-19 backbones), ``score_thresh`` (0.05),
    ``mask_detections_per_gt`` (CenterMask's mask-training RoIs: ground truths plus this many detections
    per ground truth; 0 by default: ground truths alone, which halves a CPU training step; ``null`` = all
    matching detections, as the official code),
    ``val_data`` (a second ``coco:...`` spec; by default a COCO file is split by ``--val-fraction``),
    ``shapes_seed`` (0), ``eval_batch`` (images per evaluation forward, 8), ``dialect`` (``centermask``:
    ``torchvision``, ours, or ``centermask2``, the official inference and training), ``train_sizes``
    (``centermask``: short sides drawn at random per training image, e.g. ``[580,600]``; default: ``--img-size``),
    ``recipe`` (``centermask2`` or ``centermask2_lite``: the official schedule, below), ``input_format`` (``rgb``,
    ``bgr255`` or ``{channel_order, scale, mean, std}``; default: what ``--pretrained`` weights were trained on).

    Recipes are data in :mod:`.recipes` (any flag or ``-o`` given explicitly wins over a recipe's); their values,
    sources and what differs from the official training are in ``docs/recipes.md``.

    ``--pretrained`` takes a backbone (a tag or a classification checkpoint) or a detector checkpoint, e.g. a
    converted centermask2 model: the run then keeps that detector's architecture (arch, backbone, heads,
    dialect), loads every layer whose shape fits and starts the class-dependent ones afresh, saying which
    (an explicit ``-o dialect`` or ``-o lite`` other than the checkpoint's is refused).
    """

    name = "detect"
    primary_metric = "bbox_map"
    predict_formats = ("json", "coco")
    predict_score_thresh = True
    find_unused_parameters = True  # a batch without objects leaves the mask head without RoIs
    default_options = {
        "lite": None, "score_thresh": 0.05, "mask_detections_per_gt": 0, "val_data": None, "shapes_seed": 0, "eval_batch": 8,
        "dialect": "torchvision", "train_sizes": None, "input_format": None,
    }
    recipes = RECIPES
    # The shapes benchmark recipe (CenterMask-Lite, vovnet19_slim_dw): 6,000 training images of 128 px,
    # under 10 minutes on 2 CPU cores with the mask head trained on ground-truth RoIs alone
    # (mask_detections_per_gt=0; 12 img/s, against 9 with one detection per ground truth). Batches of 4
    # learn more per image than batches of 8 here (box AP50 0.30 vs 0.20 after the first 1,000 images).
    config_defaults = {
        "data": "shapes",
        "arch": DEFAULT_ARCH,
        "img_size": 128,
        "batch_size": 4,
        "epochs": 3,
        "lr": 2e-3,
        "weight_decay": 1e-4,
        "warmup_epochs": 0.25,
        "label_smoothing": 0.0,
        "clip_grad": 10.0,
    }

    def __init__(self, config):
        super().__init__(config)
        self.arch = getattr(config, "arch", None) or DEFAULT_ARCH
        if self.arch not in ARCHS:
            raise UsageError(f"unknown detector arch {self.arch!r}; choose from {', '.join(ARCHS)}")
        if config.drop_rate:
            raise UsageError("--drop-rate applies to classifiers; detectors take --drop-path-rate (stochastic depth)")
        per_gt = self.options["mask_detections_per_gt"]
        if per_gt is not None and (isinstance(per_gt, bool) or not isinstance(per_gt, int) or per_gt < 0):
            raise UsageError(f"-o mask_detections_per_gt takes a count of 0 or more, or null for all, got {per_gt!r}")
        masks = ARCHS[self.arch].masks
        panoptic = self.arch == "panoptic_fpn" and str(config.data).startswith(PANOPTIC_PREFIX)
        self.metric_columns = ("bbox_map", "bbox_map_50") + (("segm_map", "segm_map_50") if masks else ()) + (("pq",) if panoptic else ())

    # ---- data and model ------------------------------------------------------------------------
    def build_data(self, train: bool = True, checkpoint: dict | None = None) -> TaskData:
        """Shapes: its train and val streams. COCO: ``--data`` for training and ``-o val_data=coco:...`` for
        evaluation, or a seeded ``--val-fraction`` split of ``--data``; for ``vovnet eval`` (``train=False``) the
        whole of ``val_data``, or else of ``--data``, is evaluated at the checkpoint's image size."""
        c = self.config
        val_spec = self.options["val_data"]
        arch = checkpoint["arch"] if checkpoint is not None else self.arch
        image_size = int(checkpoint["image_size"]) if checkpoint is not None else c.img_size

        def open_split(spec: str, split: str, is_train: bool):
            return open_dataset(spec, split, image_size=image_size, seed=self.options["shapes_seed"], strict=c.strict, train=is_train)

        if c.data == "shapes":
            train_set, val_set = open_split("shapes", "train", True), open_split("shapes", "val", False)
            sources = [train_set, val_set]
        elif val_spec or not train:
            train_set = open_split(c.data, "train", True) if train else None
            val_set = open_split(val_spec or c.data, "val", False)
            sources = [s for s in (train_set, val_set) if s is not None]
        else:
            full = open_split(c.data, "train", True)
            train_set, held_out = split_off(full, c.val_fraction, c.seed)
            val_set = with_transforms(held_out, train=False)
            sources = [full]
        class_names = sources[0].class_names  # a panoptic set's: PanopticClasses, its stuff names along
        if val_spec and train and (list(val_set.class_names) != list(class_names) or stuff_of(val_set.class_names) != stuff_of(class_names)):
            raise DataError(f"{val_spec} has other classes than {c.data}: {list(val_set.class_names)} vs {list(class_names)}")
        if checkpoint is not None and arch == "panoptic_fpn" and stuff_of(class_names) is not None:
            trained = tuple(checkpoint["detector"]["stuff_classes"][1:])
            if trained != stuff_of(class_names):
                diff = sorted(set(trained) ^ set(stuff_of(class_names)))
                detail = f"only in one of them: {', '.join(diff[:5])}" if diff else "same names in another order"
                raise DataError(f"{c.data} has other stuff classes than the checkpoint's semantic head ({detail})")
        if ARCHS[arch].masks and not all(getattr(s, "has_masks", True) for s in sources):
            raise DataError(
                f"--arch {arch} predicts masks, but {c.data} has no segmentations; use faster_rcnn, fcos or retinanet"
            )
        reports = [s.report for s in sources if hasattr(s, "report")]
        info = {"source": c.data, "image_size": image_size, "classes": list(class_names)}
        if stuff_of(class_names) is not None:
            info["stuff_classes"] = list(stuff_of(class_names))
        if train_set is not None:
            train_set = seeded_subset(train_set, c.limit_train, c.seed)
            info["train_images"] = len(train_set)
        val_set = seeded_subset(val_set, c.limit_val, c.seed)
        info["val_images"] = len(val_set)
        if c.data == "shapes":  # render the scenes in use now (they are cached), so training time is training alone
            if train:
                render_scenes(train_set, progress=not c.quiet)
            render_scenes(val_set, progress=not c.quiet)
        if reports:
            info["annotations"] = [r.to_dict() for r in reports]
        skipped = [f"{reason}: {item}" for r in reports for reason in r.problems for item in r.items[reason]]
        # Shapes are rendered in a few milliseconds: loader processes would only compete with training for the cores.
        in_memory = c.data == "shapes"
        return TaskData(train_set, val_set, class_names, collate_fn=collate, skipped=skipped, info=info, in_memory=in_memory)

    def detector_config(self, class_names: Sequence[str], dialect: str | None = None) -> DetectorConfig:
        """This run's detector record (``dialect``: a checkpoint's, else ``-o dialect``); a ``panoptic_fpn`` on panoptic
        data (:class:`PanopticClasses`) takes its stuff."""
        c = self.config
        lite = self.options["lite"]
        stuff = stuff_of(class_names)
        square = c.data == "shapes"  # shapes images are image_size squares: no resizing at all
        return DetectorConfig(
            self.arch,
            c.model,
            tuple(class_names),
            default_lite(c.model) if lite is None else bool(lite),
            min_size=c.img_size,
            max_size=c.img_size if square else round(c.img_size * 1333 / 800),
            freeze_at=c.freeze_at,
            score_thresh=float(self.options["score_thresh"]),
            mask_detections_per_gt=self.options["mask_detections_per_gt"],
            drop_path_rate=c.drop_path_rate,
            dialect=dialect or self.options["dialect"],
            train_sizes=self._train_sizes(),
            input_format=self.options["input_format"],
            stuff_classes=("things", *stuff) if self.arch == "panoptic_fpn" and stuff is not None else None,
        )

    def _train_sizes(self) -> tuple[int, ...] | None:
        sizes = self.options["train_sizes"]
        if sizes is None:
            return None
        if not isinstance(sizes, list) or not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 32 for s in sizes):
            raise UsageError(f"-o train_sizes takes a list of short sides of 32 px or more, e.g. [580,600], got {sizes!r}")
        return tuple(sizes)

    def _finetuned(self, class_names: Sequence[str], path: str) -> nn.Module:
        """The detector in checkpoint ``path`` set up for this run: its architecture with this run's classes, sizes
        and training options; every layer that fits loaded, the class-dependent ones fresh (and said so)."""
        state_dict, meta = read_detector_checkpoint(path)
        base = DetectorConfig.from_dict(meta["detector"])
        if base.arch != self.arch:
            raise UsageError(f"--pretrained {path} is a {base.arch}; train it with --arch {base.arch}")
        given = self.config.task_options  # the checkpoint's layers decide these; a different explicit one is refused
        for name, value in (("dialect", base.dialect), ("lite", base.lite)):
            if name in given and given[name] != value:
                raise UsageError(f"--pretrained {path} has {name}={value}; drop -o {name}={given[name]} or start from a backbone")
        run = self.detector_config(class_names, base.dialect)
        keep = ("class_names", "min_size", "max_size", "freeze_at", "score_thresh", "mask_detections_per_gt", "drop_path_rate", "train_sizes")
        keep += ("input_format",) if run.input_format is not None else ()  # else the checkpoint's, which its weights expect
        keep += ("stuff_classes",) if run.stuff_classes is not None else ()  # panoptic data: its stuff; else the checkpoint's
        cfg = dataclasses.replace(base, **{name: getattr(run, name) for name in keep})
        model = build_detector(cfg)
        fresh = load_for_finetuning(model, state_dict, source=str(path))
        if not self.config.quiet:
            layers = sorted({k.rsplit(".", 1)[0] for k in fresh})
            start = f"re-initialised for {len(cfg.class_names)} classes: {', '.join(layers)}" if layers else "every layer loaded"
            print(f"--pretrained {path}: {cfg.arch} ({cfg.dialect}) on {cfg.model}, {start}")
        return model

    def build_model(self, class_names: Sequence[str]) -> nn.Module:
        pretrained = self.config.pretrained
        if pretrained and is_detector_checkpoint(pretrained):
            model = self._finetuned(class_names, pretrained)
        else:
            if self.arch == "panoptic_fpn" and stuff_of(class_names) is None:
                raise UsageError("--arch panoptic_fpn trains from a backbone on coco-panoptic:PANOPTIC.json:IMAGE_DIR data (its "
                                 "semantic head needs stuff classes), or fine-tunes a Panoptic FPN checkpoint given as --pretrained")
            model = build_with_backbone_weights(self.detector_config(class_names), pretrained)
        if self.config.grad_checkpointing:
            model.backbone.set_grad_checkpointing(True)
        return model

    # ---- training and evaluation --------------------------------------------------------------
    def training_losses(self, model: nn.Module, batch, epoch: int) -> TrainingLosses:
        images, targets = batch
        return TrainingLosses(model(images, [without_crowd(t) for t in targets]), len(images))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, runtime, predictor: nn.Module | None = None) -> EvalResult:
        """COCO AP over ``loader`` plus the mean validation loss (see :func:`loss_mode`); a Panoptic FPN's panoptic
        quality where the data is COCO panoptic, else the line :data:`NO_PANOPTIC_QUALITY`."""
        cfg: DetectorConfig = model.config
        metrics = DetectionMetrics(cfg.class_names, masks=cfg.has_masks)
        quality = PanopticQuality(cfg.class_names, cfg.stuff_classes[1:]) if cfg.arch == "panoptic_fpn" else None
        loss_sum, seen = 0.0, 0
        chunk = max(int(self.options["eval_batch"]), 1)
        model.eval()
        for batch in loader:
            images, targets = runtime.to_device(batch)
            for start in range(0, len(images), chunk):
                x, y = images[start : start + chunk], targets[start : start + chunk]
                with runtime.autocast():
                    with loss_mode(model):
                        losses = model(x, [without_crowd(t) for t in y])
                    predictions = (model if predictor is None else predictor)(x)
                loss_sum += float(sum(losses.values())) * len(x)
                seen += len(x)
                metrics.update(predictions, y)
                if quality is not None:
                    quality.update(predictions, y)
        loss_sum, seen = runtime.sum_over_ranks([loss_sum, seen])
        values, details = metrics.compute()  # torchmetrics gathers every rank's detections
        if quality is not None:
            pq_values, pq_details = quality.compute(runtime.sum_over_ranks)
            values.update(pq_values)
            details.update(pq_details or {"panoptic": NO_PANOPTIC_QUALITY})
        return EvalResult({"loss": loss_sum / max(seen, 1), **values}, {"images": int(seen), **details})

    # ---- files ---------------------------------------------------------------------------------
    def save_weights(self, model: nn.Module, path: str | os.PathLike, class_names: Sequence[str], **extra: Any) -> None:
        save_detector(model, path, **extra)

    def load_weights(self, path: str | os.PathLike) -> tuple[nn.Module, dict]:
        """The detector in ``path`` (eval mode) and its metadata."""
        state_dict, meta = read_detector_checkpoint(path)
        return detector_from_checkpoint(state_dict, meta, source=str(path)), meta

    # ---- reports -------------------------------------------------------------------------------
    def format_eval(self, result: EvalResult) -> str:
        m = result.metrics
        lines = [f"loss {m['loss']:.4f}  ({result.details['images']} images)"]
        for kind in result.details["per_class"]:
            lines.append(f"{kind}: AP {m[f'{kind}_map']:.4f}  AP50 {m[f'{kind}_map_50']:.4f}  AP75 {m[f'{kind}_map_75']:.4f}")
            lines += [f"  {name:<16} AP {ap:.4f}" for name, ap in result.details["per_class"][kind].items()]
        if "panoptic" in result.details:
            lines.append(result.details["panoptic"])
        if "panoptic_categories" in result.details:
            for part, suffix in (("panoptic", ""), ("  things", "_things"), ("  stuff", "_stuff")):
                n = result.details["panoptic_categories"][part.strip() if suffix else "all"]
                lines.append(f"{part}: PQ {m['pq' + suffix]:.4f}  SQ {m['sq' + suffix]:.4f}  RQ {m['rq' + suffix]:.4f}  ({n} categories)")
            lines += [f"  {name:<16} PQ {r['pq']:.4f}  SQ {r['sq']:.4f}  RQ {r['rq']:.4f}"
                      for name, r in result.details["panoptic_per_class"].items()]
        return "\n".join(lines)

    def predict(self, model: nn.Module, meta: dict, paths: Sequence[str], runtime, topk: int = 5,
                score_thresh: float | None = None, output_format: str = "json") -> list[dict]:
        """Detections scoring at least ``score_thresh`` (default :data:`.predict.DISPLAY_THRESH`) per image. With
        ``config.out`` set (``vovnet predict --out DIR``), each image is also written there with its boxes, labels,
        scores and masks drawn, plus ``predictions.json`` (see :func:`.predict.predict_files`). ``output_format``
        ``coco``: every detection the model returns, written to ``DIR/coco_results.json`` (see
        :func:`.predict.predict_coco_results`)."""
        out = self.config.out or None
        if output_format == "coco":
            if out is None:
                raise UsageError(f"--format coco writes DIR/{COCO_RESULTS}: give --out DIR")
            if score_thresh is not None:
                raise UsageError("--format coco writes every detection the model returns, as evaluation needs; "
                                 "--score-thresh picks what is listed and drawn")
            return predict_coco_results(model, paths, out, meta["class_names"], runtime.device, runtime.autocast)
        thresh = DISPLAY_THRESH if score_thresh is None else score_thresh
        if not 0 <= thresh <= 1:
            raise UsageError(f"--score-thresh takes a score from 0 to 1, got {thresh}")
        return predict_files(model, paths, out, meta["class_names"], runtime.device, runtime.autocast, thresh)

    def format_predictions(self, rows: list[dict]) -> str:
        if rows and "coco_results" in rows[0]:
            found = sum(r["detections"] for r in rows)
            return f"{rows[0]['coco_results']}: {found} detections of {len(rows)} images (COCO results)"
        lines = []
        for r in rows:
            found = ", ".join(f"{d['class']} {d['score']:.2f}" for d in r["detections"]) or "nothing"
            lines.append(f"{r['image']}: {found}" + (f"  -> {r['drawn']}" if "drawn" in r else ""))
        return "\n".join(lines)
