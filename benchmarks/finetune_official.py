"""Fine-tuning from a converted CenterMask2 checkpoint on the embedded shapes set (issue 17, items 5-6).

A generated official-layout CenterMask-Lite V-19-slim-dw checkpoint (80 COCO classes) is converted the
way ``vovnet convert --from official`` does it, once as a whole detector and once ``--backbone-only``;
then the one training loop (``vovnet train --task detect --data shapes`` with the detection defaults:
3 epochs of 2,000 images of 128 px, batch 4) runs three times:

- ``detector``: ``--pretrained`` the converted detector. The run keeps its architecture (centermask, the
  ``centermask2`` dialect, Lite heads, frozen backbone batch norm); the class-dependent layers (FCOS class
  logits, mask predictor, MaskIoU output) start afresh for the 4 shapes classes, every other layer is loaded.
- ``backbone``: ``--pretrained`` the backbone-only conversion, ``-o dialect=centermask2 lite=true``: the same
  layers, the heads freshly initialised, the backbone's batch norm trainable (the default for a backbone).
- ``default``: the detection default (our ``torchvision`` dialect, nothing pretrained), the baseline of
  benchmarks/RESULTS.md.

The generated checkpoint is initialised the way detectron2/centermask2 initialise a fresh model (FPN:
``c2_xavier_fill``; FCOS towers and outputs: normal std 0.01, bias 0, the class-logit bias at the prior
0.01, GroupNorm 1 and 0, scales 1; SAG-Mask convs, deconv and attention: ``c2_msra_fill``, predictor normal
std 0.001; MaskIoU convs and linears: kaiming normal fan-out, output normal std 0.01; backbone batch norm
weight 1, bias 0, mean 0, variance 1, its convs our VoVNet's kaiming init). Its weights carry no knowledge:
the comparison tests the fine-tuning mechanics (what is kept, what restarts, that the run trains), not
transfer from COCO.

Before training, the script checks that the ``detector`` and ``backbone`` runs build the same layers
(same names and shapes, same config but the backbone norm) and that the ``detector`` run loads every
tensor of the conversion except the class-dependent ones.

    .venv/bin/python benchmarks/finetune_official.py --out runs/finetune-official       # full: three runs of the default budget
    .venv/bin/python benchmarks/finetune_official.py --rows detector --threads 1     # one row (26 min on a shared 2-core EPYC)
    .venv/bin/python benchmarks/finetune_official.py --quick --out /tmp/finetune-official  # a one-minute smoke run
    .venv/bin/python benchmarks/finetune_official.py --rows detector backbone --set epochs=2

Writes ``results.json`` and ``results.md`` in ``--out`` (atomically, after each row) and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
from pathlib import Path

import torch
from grid import run_settings
from torch import nn

from vovnet.data.shapes import CLASSES
from vovnet.engine import loop
from vovnet.engine.task import task_config
from vovnet.io import atomic_write_text
from vovnet.models.detection.builders import DetectorConfig, build_detector
from vovnet.tasks.detection.task import DetectionTask
from vovnet.weights.detector_checkpoint import CLASS_LAYERS, read_detector_checkpoint
from vovnet.weights.detector_convert import ours_to_centermask2
from vovnet.weights.official_detectors import COCO_CLASSES, TEST_SIZES, TRAIN_SIZES, convert_official_file

MODEL = "vovnet19_slim_dw"
ROWS = ("detector", "backbone", "default")
QUICK = {"img_size": 64, "epochs": 1, "limit_train": 16, "limit_val": 8, "batch_size": 4}
PRIOR = 0.01  # MODEL.FCOS.PRIOR_PROB


def official_init(model: nn.Module) -> None:
    """Re-initialise a ``centermask2``-dialect CenterMask as detectron2/centermask2 initialise a fresh one
    (see the module docstring); the backbone's convs keep our VoVNet init, its norms become identities."""
    state = model.state_dict()
    for name, module in model.named_modules():
        if name.startswith("backbone.body"):
            if hasattr(module, "running_var"):  # (frozen) batch norm: weight 1, bias 0, mean 0, var 1
                for key, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
                    getattr(module, key).data.fill_(value)
            continue
        if not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.GroupNorm)):
            continue
        weight, bias = module.weight.data, module.bias.data if module.bias is not None else None
        if isinstance(module, nn.GroupNorm):
            weight.fill_(1.0)
            bias.zero_()
            continue
        if name.startswith("backbone.fpn"):
            nn.init.kaiming_uniform_(weight, a=1)  # c2_xavier_fill
        elif name.startswith("head."):
            nn.init.normal_(weight, std=0.01)
        elif name in ("mask_head.predictor",):
            nn.init.normal_(weight, std=0.001)
        elif name in ("maskiou_head.predictor",):
            nn.init.normal_(weight, std=0.01)
        else:  # SAG-Mask convs, deconv, attention; MaskIoU convs and linears: c2_msra_fill
            nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
        if bias is not None:
            bias.zero_()
    model.head.classification_head.cls_logits.bias.data.fill_(-math.log((1 - PRIOR) / PRIOR))
    for key in state:
        if key.startswith("head.regression_head.scales."):
            state[key].fill_(1.0)


def generate_official(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write a fresh CenterMask-Lite V-19-slim-dw with 80 classes to ``path`` as centermask2 writes it
    (``{"model": state_dict}`` in the official key layout); returns that state dict."""
    torch.manual_seed(seed)
    short, long = TEST_SIZES["lite"]
    cfg = DetectorConfig("centermask", MODEL, COCO_CLASSES, True, min_size=short, max_size=long, norm="frozen_batch",
                         mask_detections_per_gt=None, dialect="centermask2", train_sizes=TRAIN_SIZES["lite"])
    model = build_detector(cfg)
    official_init(model)
    state = ours_to_centermask2({k: v.clone() for k, v in model.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "iteration": 0}, path)
    return state


def row_settings(row: str, out: Path, converted: dict[str, Path], settings: dict) -> dict:
    """The ``task_config`` settings of one row (``vovnet train --task detect ...``)."""
    common = {"task": "detect", "arch": "centermask", "model": MODEL, "out": str(out / row), "quiet": True, **settings}
    if row == "detector":
        return {**common, "pretrained": str(converted["detector"])}
    if row == "backbone":
        return {**common, "pretrained": str(converted["backbone"]), "task_options": {"dialect": "centermask2", "lite": True}}
    return common


def build_row_model(settings: dict) -> tuple[nn.Module, str]:
    """The detector a row's run starts from, and what building it printed (the fine-tune message)."""
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        model = DetectionTask(task_config(**{**settings, "quiet": False})).build_model(list(CLASSES))
    return model, said.getvalue().strip()


def check_rows(converted: dict[str, Path], out: Path, settings: dict) -> str:
    """Assert that the ``detector`` and ``backbone`` rows build the same layers and that the ``detector`` row
    loads every converted tensor but the class-dependent ones. Returns the fine-tune message."""
    detector, message = build_row_model(row_settings("detector", out, converted, settings))
    backbone, _ = build_row_model(row_settings("backbone", out, converted, settings))
    a, b = detector.config, backbone.config
    # the pixel format each run feeds (a default and an explicit record may be the same); tuples and lists compare alike
    fields_a, fields_b = (json.loads(json.dumps({**c.to_dict(), "input_format": dataclasses.asdict(c.effective_input_format)})) for c in (a, b))
    differ = sorted(k for k in fields_a if fields_a[k] != fields_b[k])
    assert differ == ["norm"] and (a.norm, b.norm) == ("frozen_batch", "batch"), f"the detector and backbone rows differ in {differ}"
    shapes_a = {k: v.shape for k, v in detector.state_dict().items() if not k.endswith("num_batches_tracked")}
    shapes_b = {k: v.shape for k, v in backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert shapes_a == shapes_b, f"layers differ: {sorted(set(shapes_a) ^ set(shapes_b))[:5]}"

    converted_sd, _ = read_detector_checkpoint(converted["detector"])
    ours = detector.state_dict()
    fresh = sorted(k for k in converted_sd if k.startswith(CLASS_LAYERS))
    assert fresh == sorted(k for k in converted_sd if converted_sd[k].shape != ours[k].shape), "a non-class layer changed shape"
    kept = [k for k in converted_sd if k not in fresh]
    assert all(torch.equal(ours[k], converted_sd[k]) for k in kept), "a non-class layer was not loaded"
    assert len(kept) + len(fresh) == len(converted_sd) and set(converted_sd) <= set(ours)
    layers = sorted({k.rsplit(".", 1)[0] for k in fresh})
    assert f"re-initialised for {len(CLASSES)} classes: {', '.join(layers)}" in message, message
    return message


def run_row(row: str, out: Path, converted: dict[str, Path], settings: dict) -> dict:
    summary = loop.train(task_config(**row_settings(row, out, converted, settings)))
    metrics = summary["final_metrics"]
    return {
        "row": row,
        "bbox_map_50": metrics["bbox_map_50"],
        "bbox_map": metrics["bbox_map"],
        "segm_map": metrics["segm_map"],
        "train_seconds": summary["train_seconds"],
        "epochs": summary["epochs"],
        "train_images": summary["epochs"] * summary["data"]["train_images"],
        "val_images": summary["data"]["val_images"],
    }


ROW_LABELS = {
    "detector": "`--pretrained` converted detector (centermask2 dialect, frozen BN)",
    "backbone": "`--pretrained` backbone-only conversion, `-o dialect=centermask2 lite=true`",
    "default": "default recipe (torchvision dialect, nothing pretrained)",
}


def markdown(rows: list[dict], threads: int, message: str) -> str:
    lines = [
        f"Fine-tuning from a converted CenterMask2 checkpoint ({threads} CPU threads; COCO AP on {rows[0]['val_images']} val images)",
        "",
        "| start | box AP50 | box AP | mask AP | train s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {ROW_LABELS[r['row']]} | {r['bbox_map_50']:.3f} | {r['bbox_map']:.3f} | {r['segm_map']:.3f} | {r['train_seconds']:.0f} |"
        for r in rows
    ]
    return "\n".join(lines + ["", f"detector row: {message}"]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/finetune-official", help="folder for the checkpoints, runs and table")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help=f"rows to run (default: {' '.join(ROWS)})")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a training setting of every row, e.g. --set epochs=2")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    settings = run_settings(parser, args.set, QUICK if args.quick else {})

    generate_official(out / "centermask2_lite_V_19_slim_dw_random.pth")
    converted = {"detector": out / "converted-detector.safetensors", "backbone": out / "converted-backbone.safetensors"}
    convert_official_file(out / "centermask2_lite_V_19_slim_dw_random.pth", converted["detector"])
    convert_official_file(out / "centermask2_lite_V_19_slim_dw_random.pth", converted["backbone"], backbone_only=True)
    message = check_rows(converted, out, settings)
    print(message)

    rows = []
    for row in args.rows:
        rows.append({**run_row(row, out, converted, settings), "overrides": settings})
        table = markdown(rows, args.threads, message)
        atomic_write_text(out / "results.json", json.dumps({"settings": settings, "message": message, "rows": rows}, indent=2))
        atomic_write_text(out / "results.md", table)
    print(table, end="")


if __name__ == "__main__":
    main()
