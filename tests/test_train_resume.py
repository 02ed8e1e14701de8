"""A run killed with SIGKILL and resumed ends with the same weights, bit for bit, as one never interrupted."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from vovnet.engine import TrainConfig, loop
from vovnet.weights.checkpoint import read_checkpoint

SETTINGS = dict(deterministic=True, epochs=4, limit_train=64, limit_val=32, batch_size=16, ema_decay=0.8, hard_sampling=0.5, quiet=True,
                workers=0)


def completed_epochs(out) -> int:
    """Rows in metrics.csv, which is written after resume.pt."""
    try:
        return max(0, len((out / "metrics.csv").read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


@pytest.mark.slow  # a training process killed and resumed, and a reference run
def test_sigkill_then_resume_is_bit_exact(tmp_path, capsys):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in SETTINGS.items()]
    # Same thread count as this test process (conftest: one thread), so both runs reduce in the same order.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    victim = subprocess.Popen([sys.executable, "-m", "vovnet", "train", *flags, "--out", str(killed)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while completed_epochs(killed) < 2 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert victim.poll() is None, f"run ended before it could be killed:\n{victim.communicate()[0]}"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    interrupted_at = torch.load(killed / "resume.pt", weights_only=True)["epoch"]
    assert 2 <= interrupted_at < 4

    loop.train(TrainConfig(**SETTINGS, out=str(reference)))
    loop.resume(killed)
    assert f"after epoch {interrupted_at}/4" in capsys.readouterr().out

    for name in ("last.safetensors", "best.safetensors"):
        want, _ = read_checkpoint(reference / name)
        got, _ = read_checkpoint(killed / name)
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want), name
    want, got = (torch.load(d / "resume.pt", weights_only=True) for d in (reference, killed))
    assert all(torch.equal(want["model"][k], got["model"][k]) for k in want["model"])
    columns = ("epoch", "train_loss", "val_loss", "top1", "top5", "lr")
    rows = [[{k: r[k] for k in columns} for r in csv.DictReader((d / "metrics.csv").open())] for d in (reference, killed)]
    assert rows[0] == rows[1] and len(rows[0]) == 4
