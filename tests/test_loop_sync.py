"""The training loop reads the loss on the host once per logging interval, and still stops at the first
non-finite loss of any process."""

import math

import pytest
import torch

from vovnet.engine import TrainConfig, loop
from vovnet.engine.runtime import Runtime
from vovnet.errors import TrainingError

NAN, INF = float("nan"), float("inf")


class OtherRankFlags(Runtime):
    """One process of two whose partner reports ``other`` non-finite flags for the same steps."""

    def __init__(self, other):
        super().__init__(torch.device("cpu"))
        self.other = other

    def sum_over_ranks(self, values):
        return [a + b for a, b in zip(values, self.other)]


def test_the_first_non_finite_loss_of_an_interval_is_named(tmp_path):
    one = Runtime(torch.device("cpu"))
    assert loop._stop_at_non_finite([1.0, 2.0], one, epoch=0, first_step=1, out=tmp_path) is None
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at epoch 2, step 22; stopped, last good checkpoint: .*\(epoch 1\)"):
        loop._stop_at_non_finite([1.0, NAN, INF], one, epoch=1, first_step=21, out=tmp_path)
    with pytest.raises(TrainingError, match=r"non-finite loss \(inf\) at epoch 1, step 2; stopped, no checkpoint was written"):
        loop._stop_at_non_finite([1.0, INF], one, epoch=0, first_step=1, out=tmp_path)


def test_every_process_stops_at_the_first_bad_step_of_any():
    with pytest.raises(TrainingError, match=r"\(on another process\) at epoch 1, step 3"):
        loop._stop_at_non_finite([1.0, 1.0, 1.0], OtherRankFlags([0.0, 0.0, 1.0]), epoch=0, first_step=1, out=None)
    with pytest.raises(TrainingError, match=r"\(nan\) at epoch 1, step 2"):  # its own step comes first
        loop._stop_at_non_finite([1.0, NAN, 1.0], OtherRankFlags([0.0, 0.0, 1.0]), epoch=0, first_step=1, out=None)


@pytest.mark.slow
def test_losses_are_read_once_per_interval_and_at_the_end_of_each_epoch(tmp_path, monkeypatch):
    reads = []
    real = loop._stop_at_non_finite

    def counted(losses, runtime, epoch, first_step, out):
        reads.append((epoch, first_step, len(losses)))
        return real(losses, runtime, epoch, first_step, out)

    monkeypatch.setattr(loop, "LOG_INTERVAL", 3)
    monkeypatch.setattr(loop, "_stop_at_non_finite", counted)
    config = TrainConfig(epochs=2, limit_train=64, limit_val=16, batch_size=16, quiet=True, out=str(tmp_path / "r"))
    summary = loop.train(config)  # 4 steps an epoch
    assert reads == [(0, 1, 3), (0, 4, 1), (1, 1, 3), (1, 4, 1)]
    assert math.isfinite(summary["final_metrics"]["loss"])
