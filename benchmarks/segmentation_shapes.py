"""Semantic segmentation on the embedded shapes scenes: mIoU plus training and inference speed, one table.

Every row is a run of the one training loop with the defaults of
``vovnet train --task segment --arch ARCH --model MODEL --data shapes`` (the benchmark recipe), then the
speed of its best checkpoint on held-out scenes. The ``timm:ese_vovnet19b_dw`` row is the same head on
timm's network (same FPN, same head, same recipe), so the rows compare backbones measured in one process.

Target (issue 6): fpn_semantic + vovnet19_slim_dw reaches mIoU >= 0.93 on the 200-scene val split within
300 s of training on 2 CPU cores.

    .venv/bin/python benchmarks/segmentation_shapes.py --out runs/bench-segment      # ours and timm's (about 15 min)
    .venv/bin/python benchmarks/segmentation_shapes.py --archs fpn_semantic deeplabv3  # both heads
    .venv/bin/python benchmarks/segmentation_shapes.py --quick --out /tmp/bench-seg    # a smoke run of a minute or two

The mIoU is the model's own prediction, the guided filter of the recipe included (``-o refine_radius``).
Each row also gives the mIoU of the same checkpoint without that filter (``-o refine_radius=0``: the
network's upsampled logits alone) and under test-time augmentation (``-o tta_flip=true
-o tta_sizes=[S,1.125S]`` at the model's input size S: the class probabilities of each scene and its
mirror at two sizes, averaged), as ``vovnet eval`` computes them; the target is judged on the mIoU
without test-time augmentation.

Training seconds are the loop's own (``summary.json``: training epochs only); scenes are rendered before
training starts and the wall time of each row, rendering and evaluation included, is printed too.
Writes ``results.json`` and ``results.md`` in ``--out`` (atomically) and prints the table
(the grid, flags and files are :mod:`grid`'s, shared with the detection benchmark's layout).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from grid import grid_main, images_per_second, target_cell

from vovnet import load_segmenter
from vovnet.data.segmentation import ShapesSegmentation
from vovnet.engine import loop
from vovnet.engine.inference import evaluate_checkpoint
from vovnet.engine.task import task_config

ARCHS = ("fpn_semantic",)
MODELS = ("vovnet19_slim_dw", "timm:ese_vovnet19b_dw")
TARGET = {"arch": "fpn_semantic", "model": "vovnet19_slim_dw", "miou": 0.93, "train_seconds": 300}
QUICK = {"img_size": 64, "epochs": 1, "limit_train": 32, "limit_val": 8, "batch_size": 8}


def inference_speed(checkpoint: Path, images: int, batch_size: int) -> float:
    """Images per second of the segmenter in ``checkpoint`` on the first ``images`` val scenes (160 px)."""
    model = load_segmenter(checkpoint)
    scenes = ShapesSegmentation("val", images)
    inputs = torch.stack([scenes.raw(i)[0] for i in range(images)]).float() / 255
    return images_per_second(model, inputs.split(batch_size))


def miou_under(checkpoint: Path, limit_val: int, **options) -> float:
    """mIoU of ``checkpoint`` on the val scenes under the ``-o`` ``options`` of ``vovnet eval``."""
    _, result = evaluate_checkpoint(checkpoint, "shapes", batch_size=8, limit_val=limit_val, task_options=options)
    return result.metrics["miou"]


def tta_miou(checkpoint: Path, limit_val: int) -> float:
    """mIoU of ``checkpoint`` on the val scenes under flip and two-size test-time augmentation."""
    model = load_segmenter(checkpoint)
    size = model.config.input_size
    return miou_under(checkpoint, limit_val, tta_flip=True, tta_sizes=[size, round(size * 1.125)])


def run_row(arch: str, model: str, out: Path, settings: dict, infer_images: int) -> dict:
    run_dir = out / f"{arch}-{model.replace(':', '_')}"
    started = time.perf_counter()
    summary = loop.train(task_config(task="segment", arch=arch, model=model, out=str(run_dir), quiet=True, **settings))
    wall = time.perf_counter() - started
    metrics = summary["final_metrics"]
    trained_images = summary["epochs"] * summary["data"]["train_images"]
    return {
        "arch": arch,
        "model": model,
        "miou": metrics["miou"],
        "miou_unrefined": miou_under(run_dir / "best.safetensors", settings.get("limit_val", 0), refine_radius=0),
        "miou_tta": tta_miou(run_dir / "best.safetensors", settings.get("limit_val", 0)),
        "pixel_acc": metrics["pixel_acc"],
        "per_class_iou": summary["details"]["per_class_iou"],
        "train_seconds": summary["train_seconds"],
        "wall_seconds": round(wall, 1),
        "train_img_s": trained_images / summary["train_seconds"],
        "infer_img_s": inference_speed(run_dir / "best.safetensors", infer_images, 8),
        "epochs": summary["epochs"],
        "train_images": trained_images,
    }


def meets_target(row: dict) -> bool:
    return row["miou"] >= TARGET["miou"] and row["train_seconds"] <= TARGET["train_seconds"]


def markdown(rows: list[dict], threads: int) -> str:
    lines = [
        f"Shapes semantic segmentation benchmark ({threads} CPU threads; mIoU on the val split)",
        "",
        "| arch | backbone | mIoU | mIoU without the guided filter | mIoU, flip + 2-size TTA | pixel acc | train s | wall s "
        "| train img/s | infer img/s | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = target_cell(r, TARGET, meets_target)
        lines.append(
            f"| {r['arch']} | {r['model']} | {r['miou']:.3f} | {r['miou_unrefined']:.3f} | {r['miou_tta']:.3f} | {r['pixel_acc']:.3f} | "
            f"{r['train_seconds']:.0f} | "
            f"{r['wall_seconds']:.0f} | {r['train_img_s']:.1f} | {r['infer_img_s']:.1f} | {target} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    grid_main(__doc__, archs=ARCHS, models=MODELS, quick=QUICK, default_out="runs/bench-segment", infer_images=64,
              run_row=run_row, markdown=markdown)


if __name__ == "__main__":
    main()
