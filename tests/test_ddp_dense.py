"""`torchrun --nproc_per_node 2 -m vovnet train` for the dense tasks on CPU (gloo): both ranks train and
evaluate a shard, and the metrics reduced over the ranks equal one process evaluating the saved weights
on the whole validation set."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vovnet.engine.inference import evaluate_checkpoint

pytestmark = pytest.mark.slow  # torchrun: two training processes per task

TINY = ["--img-size", "64", "--epochs", "1", "--limit-train", "8", "--limit-val", "6", "--batch-size", "2", "--quiet"]
CASES = {
    "segment": (["--task", "segment"], ("miou", "pixel_acc")),
    "detect": (["--task", "detect", "--arch", "faster_rcnn"], ("bbox_map", "bbox_map_50")),
}


@pytest.mark.parametrize("task", CASES)
def test_two_processes_reduce_metrics_like_one(tmp_path, task):
    flags, metrics = CASES[task]
    out = tmp_path / task
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "vovnet", "train", *flags, *TINY, "--out", str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 process(es)" in result.stdout

    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["epochs"] == 1
    _, alone = evaluate_checkpoint(out / "best.safetensors", "shapes", task=task, limit_val=6, img_size=64, device="cpu")
    for name in metrics:
        assert summary["final_metrics"][name] == pytest.approx(alone.metrics[name], abs=1e-3), name
