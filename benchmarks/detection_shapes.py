"""Detection on the embedded shapes set: COCO AP plus training and inference speed, one table.

Every row is a run of the one training loop with the defaults of
``vovnet train --task detect --arch ARCH --model MODEL --data shapes`` (the benchmark recipe: 128-px
images, lite heads for V-19 backbones), then the speed of its best checkpoint on held-out images. The
``timm:ese_vovnet19b_dw`` rows are the same detectors (same FPN and heads) on timm's network, so the
rows compare backbone implementations measured in one process. Inference speed is at the evaluation
settings (detections scoring >= 0.05, at most 100 per image, masks pasted), batch 8.

Targets (issue 4): centermask + vovnet19_slim_dw reaches box AP50 >= 0.90 and mask AP >= 0.60 on the
val split within 600 s of training on 2 CPU cores.

    .venv/bin/python benchmarks/detection_shapes.py --out runs/bench-detect          # full table (about 1.5 h on 2 cores)
    .venv/bin/python benchmarks/detection_shapes.py --archs centermask --models vovnet19_slim_dw   # the target row only
    .venv/bin/python benchmarks/detection_shapes.py --quick --out /tmp/bench-detect  # a one-minute smoke run
    .venv/bin/python benchmarks/detection_shapes.py --set limit_train=400 --set epochs=1  # every row on the same 400 images

Writes ``results.json`` and ``results.md`` in ``--out`` (atomically) and prints the table.
"""

from __future__ import annotations

from pathlib import Path

import torch
from grid import grid_main, images_per_second, target_cell

from vovnet import load_detector, read_checkpoint
from vovnet.data.detection import open_dataset
from vovnet.engine import loop
from vovnet.engine.task import task_config

ARCHS = ("centermask", "mask_rcnn_sag", "faster_rcnn")
MODELS = ("vovnet19_slim_dw", "vovnet19_dw", "timm:ese_vovnet19b_dw")
TARGET = {"arch": "centermask", "model": "vovnet19_slim_dw", "bbox_map_50": 0.90, "segm_map": 0.60, "train_seconds": 600}
QUICK = {"img_size": 64, "epochs": 1, "limit_train": 16, "limit_val": 8, "batch_size": 4}


def inference_speed(checkpoint: Path, images: int, batch_size: int) -> float:
    """Images per second of the detector in ``checkpoint`` on the first ``images`` val scenes."""
    model, meta = load_detector(checkpoint), read_checkpoint(checkpoint)[1]
    dataset = open_dataset("shapes", "val", image_size=meta["image_size"], seed=0, strict=False, train=False)
    inputs = [dataset[i][0].as_subclass(torch.Tensor) for i in range(images)]
    return images_per_second(model, [inputs[i : i + batch_size] for i in range(0, images, batch_size)])


def run_row(arch: str, model: str, out: Path, settings: dict, infer_images: int) -> dict:
    run_dir = out / f"{arch}-{model.replace(':', '_')}"
    summary = loop.train(task_config(task="detect", arch=arch, model=model, out=str(run_dir), quiet=True, **settings))
    metrics = summary["final_metrics"]
    trained_images = summary["epochs"] * summary["data"]["train_images"]
    return {
        "arch": arch,
        "model": model,
        "bbox_map": metrics["bbox_map"],
        "bbox_map_50": metrics["bbox_map_50"],
        "segm_map": metrics.get("segm_map"),
        "train_seconds": summary["train_seconds"],
        "train_img_s": trained_images / summary["train_seconds"],
        "infer_img_s": inference_speed(run_dir / "best.safetensors", infer_images, 8),
        "epochs": summary["epochs"],
        "train_images": trained_images,
        "val_images": summary["data"]["val_images"],
    }


def meets_target(row: dict) -> bool:
    return (
        row["bbox_map_50"] >= TARGET["bbox_map_50"]
        and row["segm_map"] >= TARGET["segm_map"]
        and row["train_seconds"] <= TARGET["train_seconds"]
    )


def markdown(rows: list[dict], threads: int) -> str:
    lines = [
        f"Shapes detection benchmark ({threads} CPU threads; COCO box/mask AP on {rows[0]['val_images']} held-out val images)",
        "",
        "| arch | backbone | box AP | box AP50 | mask AP | train s | train img/s | infer img/s | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mask = "-" if r["segm_map"] is None else f"{r['segm_map']:.3f}"
        target = target_cell(r, TARGET, meets_target)
        lines.append(
            f"| {r['arch']} | {r['model']} | {r['bbox_map']:.3f} | {r['bbox_map_50']:.3f} | {mask} | {r['train_seconds']:.0f} | "
            f"{r['train_img_s']:.1f} | {r['infer_img_s']:.1f} | {target} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    grid_main(__doc__, archs=ARCHS, models=MODELS, quick=QUICK, default_out="runs/bench-detect", infer_images=32,
              run_row=run_row, markdown=markdown)


if __name__ == "__main__":
    main()
