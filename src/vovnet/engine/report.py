"""What a run leaves in its output folder besides checkpoints: metrics.csv, curves.png, config.yaml, summary.json."""

from __future__ import annotations

import csv
import datetime
import io
import json
from pathlib import Path
from typing import Any, Sequence

import yaml

from ..errors import TrainingError
from ..io import atomic_write_bytes, atomic_write_text


def default_out_dir(model: str) -> Path:
    return Path("runs") / f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{model}"


def prepare_out_dir(out: Path) -> None:
    """Create ``out`` and prove it can be written, before any training; TrainingError otherwise."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = atomic_write_text(out / ".write-test", "ok")
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"cannot write to output folder {out}: {e.strerror or e}") from None


def write_config(out: Path, config: dict[str, Any]) -> None:
    atomic_write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def write_metrics_csv(out: Path, rows: Sequence[dict[str, Any]]) -> None:
    """One row per epoch; columns are the keys of the first row."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "metrics.csv", buf.getvalue())


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Render a matplotlib figure to PNG bytes and write them atomically."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_curves(out: Path, rows: Sequence[dict[str, Any]], metric_columns: Sequence[str]) -> Path:
    """curves.png: training and validation loss (left) and the task's metrics (right) against epoch."""
    plt = pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss"):
        ax_loss.plot(epochs, [r[key] for r in rows], marker="o", label=key.replace("_", " "))
    for key in metric_columns:
        ax_metric.plot(epochs, [r[key] for r in rows], marker="o", label=key)
    for ax, label in ((ax_loss, "loss"), (ax_metric, "metric")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, out / "curves.png")
