"""`torchrun --nproc_per_node 2 -m vovnet train` on CPU (gloo): sharded data, metrics reduced over ranks,
only rank 0 writing, and the same accuracy band as one process."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from vovnet.engine import TrainConfig, loop

pytestmark = pytest.mark.slow  # torchrun: two training processes

# Same global batch (2 x 8 vs 16), steps and sampling for both runs: 120 steps, enough for the batch-norm
# running statistics to settle (they start at var 1, far from the ~1e-3 of a fresh network).
COMMON = dict(limit_train=960, limit_val=101, epochs=2, lr=2e-3, hard_sampling=0.5, quiet=True)


def test_two_processes_train_like_one(tmp_path):
    out = tmp_path / "ddp"
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in COMMON.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "vovnet", "train", *flags, "--batch-size", "8", "--out", str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    single = loop.train(TrainConfig(**COMMON, batch_size=16, out=str(tmp_path / "single")))
    log = ddp.communicate(timeout=300)[0]
    assert ddp.returncode == 0, log

    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["epochs"] == 2
    assert summary["details"]["samples"] == 101  # ranks evaluated 51 and 50 images; the sums count each once
    assert summary["data"]["train_size"] == 960
    assert "2 process(es)" in log
    assert log.count("epoch 1/2") == 1 and log.count("test top1:") == 1  # rank 0 speaks for both
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 2 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert single["test_acc"] > 0.6 and summary["test_acc"] > 0.6, (single["test_acc"], summary["test_acc"])
    assert abs(summary["test_acc"] - single["test_acc"]) < 0.1, (single["test_acc"], summary["test_acc"])
    # --hard-sampling: each rank recorded the losses of its own half; after the merge rank 0 holds them all.
    losses = torch.load(out / "resume.pt", weights_only=True)["sampler"]["losses"]
    assert losses.shape == (960,) and torch.isfinite(losses).all() and (losses > 0).all()
