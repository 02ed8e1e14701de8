"""Learning-rate schedules of the training loop: cosine, warm-up-stable-decay and step, their state and their flags."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from vovnet.cli import main
from vovnet.engine import TrainConfig, loop
from vovnet.engine.optim import WarmupCosine, WarmupMultiStep, WarmupStableDecay, build_scheduler
from vovnet.errors import UsageError


def test_wsd_holds_the_peak_then_decays_linearly_to_the_floor():
    f = WarmupStableDecay(total=110, warmup=10, min_ratio=0.01, decay_fraction=0.4)
    assert [f(t) for t in (0, 4, 9)] == [1 / 11, 5 / 11, 10 / 11]  # the same warm-up as the cosine
    assert all(f(t) == 1.0 for t in range(10, 71))  # 60 of the 100 steps after warm-up at the peak
    assert f(90) == pytest.approx(1 - 0.99 * 0.5)  # halfway through the 40 decay steps
    assert f(110) == pytest.approx(0.01) and f(500) == pytest.approx(0.01)
    decay = [f(t) for t in range(70, 111)]
    steps = [a - b for a, b in zip(decay, decay[1:])]
    assert max(steps) - min(steps) < 1e-12  # linear


def test_cosine_is_unchanged_and_wsd_over_all_steps_is_a_linear_decay():
    f = WarmupCosine(total=100, warmup=0, min_ratio=0.0)
    assert f(0) == 1.0 and f(50) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    assert f(25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    linear = WarmupStableDecay(total=100, warmup=0, min_ratio=0.0, decay_fraction=1.0)
    assert [linear(t) for t in (0, 25, 100)] == pytest.approx([1.0, 0.75, 0.0])


def test_wsd_state_round_trips_for_resume():
    def scheduler():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        return opt, build_scheduler(opt, total_steps=50, warmup_steps=5, min_ratio=0.01, schedule="wsd", decay_fraction=0.5)

    opt, first = scheduler()
    for _ in range(40):
        opt.step()
        first.step()
    opt2, second = scheduler()
    second.load_state_dict(first.state_dict())
    assert isinstance(second.lr_lambdas[0], WarmupStableDecay) and second.lr_lambdas[0].decay_fraction == 0.5
    opt.step(), first.step(), opt2.step(), second.step()
    assert first.get_last_lr() == second.get_last_lr() and first.get_last_lr()[0] < 0.1


@pytest.mark.slow
def test_the_loop_follows_the_wsd_schedule(tmp_path):
    config = TrainConfig(epochs=4, limit_train=32, limit_val=16, batch_size=16, quiet=True, out=str(tmp_path / "w"),
                         warmup_epochs=0, lr=0.01, lr_schedule="wsd", decay_fraction=0.5, min_lr_ratio=0.1)
    assert loop.train(config)["finished"]
    lrs = [float(row["lr"]) for row in csv.DictReader((tmp_path / "w" / "metrics.csv").open())]
    # 8 steps; the rate logged after epochs 1-4 is the one for the next step: 1, 1, then decaying to the floor.
    assert lrs[:2] == [0.01, 0.01] and lrs[2] == pytest.approx(0.01 * (1 - 0.9 * 0.5)) and lrs[3] == pytest.approx(0.001)


def test_step_warms_up_then_drops_by_gamma_at_fractions_of_all_steps():
    # centermask2's 3x: STEPS (210000, 250000) of MAX_ITER 270000, GAMMA 0.1, here over 270 steps with 10 of warm-up.
    f = WarmupMultiStep(total=270, warmup=10, steps=[210 / 270, 250 / 270], gamma=0.1)
    assert [f(t) for t in (0, 4, 9)] == [1 / 11, 5 / 11, 10 / 11]  # the same warm-up as the cosine
    assert f(10) == 1.0 and f(209) == 1.0
    assert f(210) == pytest.approx(0.1) and f(249) == pytest.approx(0.1)
    assert f(250) == pytest.approx(0.01) and f(269) == pytest.approx(0.01) and f(1000) == pytest.approx(0.01)
    early = WarmupMultiStep(total=10, warmup=4, steps=[0.2], gamma=0.5)  # a drop inside the warm-up multiplies it
    assert [early(t) for t in (0, 1, 2, 4)] == pytest.approx([0.2, 0.4, 0.3, 0.5])


def test_step_state_round_trips_and_the_optimizer_gets_the_exact_rates():
    def scheduler():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
        return opt, build_scheduler(opt, total_steps=20, warmup_steps=0, min_ratio=0.0, schedule="step", steps=[0.5, 0.75], gamma=0.1)

    opt, first = scheduler()
    rates = []
    for _ in range(20):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        first.step()
    assert rates[:10] == [0.01] * 10 and rates[10:15] == pytest.approx([0.001] * 5) and rates[15:] == pytest.approx([0.0001] * 5)
    opt2, second = scheduler()
    second.load_state_dict(first.state_dict())
    assert isinstance(second.lr_lambdas[0], WarmupMultiStep) and second.lr_lambdas[0].steps == [0.5, 0.75]


def test_schedule_flags_are_checked(capsys):
    with pytest.raises(UsageError, match="--lr-schedule takes cosine, wsd, step, got 'poly'"):
        TrainConfig(lr_schedule="poly")
    with pytest.raises(UsageError, match="--lr-steps takes increasing fractions"):
        TrainConfig(lr_steps=[0.9, 0.5])
    with pytest.raises(UsageError, match="--lr-steps takes increasing fractions"):
        TrainConfig(lr_steps=[1.0])
    with pytest.raises(UsageError, match=r"--lr-gamma must lie in \(0, 1\]"):
        TrainConfig(lr_gamma=0)
    with pytest.raises(UsageError, match=r"--decay-fraction must lie in \(0, 1\]"):
        TrainConfig(decay_fraction=0)
    assert main(["train", "--lr-schedule", "wsd", "--decay-fraction", "1.5", "--epochs", "1"]) == 2
    assert "--decay-fraction must lie in (0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--lr-schedule", "poly"])
    assert exit_info.value.code == 2
