"""Detection's recipes (``-o recipe=NAME``): the official CenterMask2 and vovnet-detectron2 COCO trainings, for a
GPU and ``--data coco:...``. The CenterMask2 values, where each comes from and what differs from the official
training are in ``docs/recipes.md`` (the official CenterMask2 recipes).

``detectron2``: vovnet-detectron2's 3x Faster / Mask R-CNN training (``--arch faster_rcnn`` or ``mask_rcnn``, the
``detectron2`` dialect; V-19 bodies get FPNLite unless ``-o lite=False``), from its ``configs/Base-RCNN-VoVNet-FPN.yaml``
and ``configs/*_3x.yaml`` over detectron2's ``config/defaults.py``:

- SGD, ``SOLVER.BASE_LR`` 0.02 at ``SOLVER.IMS_PER_BATCH`` 16 (scale ``--lr`` with ``--batch-size``), momentum 0.9,
  weight decay 1e-4 (``SOLVER.MOMENTUM``, ``WEIGHT_DECAY``), no gradient clipping;
- linear warm-up over 1000 iterations (``SOLVER.WARMUP_ITERS``; detectron2 starts at ``WARMUP_FACTOR`` 1/1000 of the
  rate), then x0.1 at iterations 210,000 and 250,000 of 270,000 (``SOLVER.STEPS``, ``MAX_ITER``): here epochs of
  COCO train2017 at 16 images a step;
- multi-scale training, short side drawn from 640..800 in steps of 32 (``INPUT.MIN_SIZE_TRAIN``), long side at most
  1333, test at 800 (``INPUT.MAX_SIZE_TRAIN``, ``MIN_SIZE_TEST``);
- the dialect's training (:mod:`vovnet.models.detection.rcnn_detectron2`): RPN 256 anchors per image at most half
  positive, RoI heads 512 per image at most a quarter positive (``RPN.BATCH_SIZE_PER_IMAGE``, ``POSITIVE_FRACTION``,
  ``ROI_HEADS.*``), detectron2's losses (L1 box losses, ``SMOOTH_L1_BETA`` 0).

Not reproduced: the official horizontal flip is the data pipeline's (``-o`` options of the task), and detectron2's
frozen stem (``BACKBONE.FREEZE_AT`` 0 in these configs: nothing frozen, as here by default).
"""

from __future__ import annotations

from ...engine.task import Recipe
from ...weights.official_detectors import TRAIN_SIZES

COCO_STEPS_PER_EPOCH = 118_287 / 16  # COCO train2017 images / the official 16 images a step (SOLVER.IMS_PER_BATCH)
# The official CenterMask2 solver, shared by both recipes.
CENTERMASK2_SOLVER = {
    "opt": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 16, "clip_grad": 0.0,
    "warmup_epochs": 1000 / COCO_STEPS_PER_EPOCH, "lr_schedule": "step", "lr_gamma": 0.1,
}

# vovnet-detectron2's solver: the same but for its base learning rate.
DETECTRON2_SOLVER = {**CENTERMASK2_SOLVER, "lr": 0.02}

# name: TrainConfig defaults, then -o options; the iteration counts are SOLVER.MAX_ITER and SOLVER.STEPS.
RECIPES = {
    "centermask2": Recipe(
        {**CENTERMASK2_SOLVER, "img_size": 800, "epochs": round(270_000 / COCO_STEPS_PER_EPOCH), "lr_steps": [210_000 / 270_000, 250_000 / 270_000]},
        {"dialect": "centermask2", "lite": False, "train_sizes": list(TRAIN_SIZES["full"]), "mask_detections_per_gt": None},
    ),
    "centermask2_lite": Recipe(
        {**CENTERMASK2_SOLVER, "img_size": 600, "epochs": round(360_000 / COCO_STEPS_PER_EPOCH), "lr_steps": [300_000 / 360_000, 340_000 / 360_000]},
        {"dialect": "centermask2", "lite": True, "train_sizes": list(TRAIN_SIZES["lite"]), "mask_detections_per_gt": None},
    ),
    "detectron2": Recipe(
        {**DETECTRON2_SOLVER, "img_size": 800, "epochs": round(270_000 / COCO_STEPS_PER_EPOCH), "lr_steps": [210_000 / 270_000, 250_000 / 270_000]},
        {"dialect": "detectron2", "train_sizes": list(TRAIN_SIZES["full"])},
    ),
}
