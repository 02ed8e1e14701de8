"""Shared by the shapes benchmarks: an arch x backbone grid of runs, timed inference, results written as they come.

A benchmark script supplies ``run_row(arch, model, out, settings, infer_images) -> dict`` and
``markdown(rows, threads) -> str``; :func:`grid_main` parses the common flags, runs every pair in one
process (so rows compare like with like) and rewrites ``results.json`` / ``results.md`` after each row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import yaml

from vovnet.io import atomic_write_text


def images_per_second(model: Callable, batches: Sequence, repeats: int = 3) -> float:
    """Images per second of ``model`` over ``batches`` (median of ``repeats`` passes, after one warm-up call)."""
    images = sum(len(b) for b in batches)
    seconds = []
    with torch.no_grad():
        model(batches[0])  # warm-up: first-call allocations
        for _ in range(repeats):
            started = time.perf_counter()
            for batch in batches:
                model(batch)
            seconds.append(time.perf_counter() - started)
    return images / statistics.median(seconds)


def target_cell(row: dict, target: dict, met: Callable[[dict], bool]) -> str:
    """The table's target column: "met"/"missed" on the target's own (arch, model) row trained with the
    benchmark recipe, empty on other rows and on runs with ``--set`` / ``--quick`` overrides."""
    if (row["arch"], row["model"]) != (target["arch"], target["model"]) or row["overrides"]:
        return ""
    return "met" if met(row) else "missed"


def run_settings(parser: argparse.ArgumentParser, items: Sequence[str], base: dict) -> dict:
    """Training settings of every row: ``base`` (the quick run's, or none) under the ``--set FIELD=VALUE``
    items (VALUE read as YAML); a malformed item is a usage error of ``parser``."""
    settings = dict(base)
    for item in items:
        field, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set takes FIELD=VALUE, got {item!r}")
        settings[field.replace("-", "_")] = yaml.safe_load(value)
    return settings


def grid_main(doc: str, *, archs: Sequence[str], models: Sequence[str], quick: dict, default_out: str,
              infer_images: int, run_row: Callable[..., dict], markdown: Callable[[list[dict], int], str]) -> None:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=default_out, help="folder for the runs and the table")
    parser.add_argument("--archs", nargs="+", default=list(archs), help=f"heads (default: {' '.join(archs)})")
    parser.add_argument("--models", nargs="+", default=list(models), help=f"backbones (default: {' '.join(models)})")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--infer-images", type=int, default=infer_images, help=f"val images timed for inference (default {infer_images})")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {quick}")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a training setting of every row, e.g. --set limit_train=400 --set epochs=1")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    settings = run_settings(parser, args.set, quick if args.quick else {})
    n_infer = 8 if args.quick else args.infer_images
    rows = []
    for arch in args.archs:
        for model in args.models:
            rows.append({**run_row(arch, model, out, settings, n_infer), "overrides": settings})
            table = markdown(rows, args.threads)
            atomic_write_text(out / "results.json", json.dumps({"settings": settings, "rows": rows}, indent=2))
            atomic_write_text(out / "results.md", table)
    print(table, end="")
