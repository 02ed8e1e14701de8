"""Detection's recipes (``-o recipe=NAME``): the official CenterMask2 COCO training, for a GPU and
``--data coco:...``. Their values, where each comes from and what differs from the official training are in
``docs/recipes.md`` (the official CenterMask2 recipes)."""

from __future__ import annotations

from ...engine.task import Recipe
from ...weights.official_detectors import TRAIN_SIZES

COCO_STEPS_PER_EPOCH = 118_287 / 16  # COCO train2017 images / the official 16 images a step (SOLVER.IMS_PER_BATCH)
# The official CenterMask2 solver, shared by both recipes.
CENTERMASK2_SOLVER = {
    "opt": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 16, "clip_grad": 0.0,
    "warmup_epochs": 1000 / COCO_STEPS_PER_EPOCH, "lr_schedule": "step", "lr_gamma": 0.1,
}

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
}
