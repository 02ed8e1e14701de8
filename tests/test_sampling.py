"""Loss-weighted sampling (``--hard-sampling``): draw probabilities, step-to-sample bookkeeping, ranks, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from vovnet.engine import TrainConfig, loop
from vovnet.engine.sampling import LossWeightedSampler
from vovnet.errors import UsageError


class OneProcess:
    @staticmethod
    def sum_over_ranks(values):
        return list(values)


class TwoRanks:
    """sum_over_ranks as torch.distributed would give it: this rank's values plus the other's."""

    def __init__(self, other: LossWeightedSampler):
        self.other = other.local_records()

    def sum_over_ranks(self, values):
        return (torch.tensor(values, dtype=torch.float64) + self.other).tolist()


def sampler(n=8, fraction=0.5, batch_size=2, **kw) -> LossWeightedSampler:
    return LossWeightedSampler(list(range(n)), hard_fraction=fraction, batch_size=batch_size, **kw)


def record_epoch(s: LossWeightedSampler, loss_of) -> list[int]:
    """One epoch: draw, record loss_of(index) for every batch, merge."""
    order = list(iter(s))
    for step in range(len(order) // s.batch_size):
        batch = order[step * s.batch_size:(step + 1) * s.batch_size]
        s.record(step, torch.tensor([loss_of(i) for i in batch]))
    s.end_epoch(OneProcess)
    return order


@pytest.mark.parametrize("fraction", [0.0, 0.7])
def test_first_epoch_is_distributed_samplers_permutation(fraction):
    for rank in (0, 1):
        ours = sampler(10, fraction, num_replicas=2, rank=rank, seed=3)
        theirs = DistributedSampler(list(range(10)), num_replicas=2, rank=rank, shuffle=True, seed=3)
        assert list(ours) == list(theirs)


def test_weights_mix_uniform_and_loss_proportional_draws():
    s = sampler(4, 0.5, batch_size=4)
    record_epoch(s, lambda i: 5.0 if i == 3 else 1.0)
    # (1 - f) / n + f * loss / sum(loss) = 0.125 + 0.5 * [1, 1, 1, 5] / 8
    assert torch.allclose(s.weights(), torch.tensor([0.1875, 0.1875, 0.1875, 0.4375], dtype=torch.float64))
    draws = []
    for epoch in range(1, 401):
        s.set_epoch(epoch)
        draws += list(s)
    share = torch.bincount(torch.tensor(draws), minlength=4) / len(draws)
    assert abs(share[3].item() - 0.4375) < 0.03 and share[:3].min() > 0.15


def test_fraction_zero_keeps_shuffling_uniformly_after_losses_are_known():
    s = sampler(10, 0.0)
    record_epoch(s, lambda i: float(i))
    s.set_epoch(1)
    assert sorted(s) == list(range(10))


def test_later_epochs_draw_hard_samples_more_often():
    s = sampler(20, 1.0, batch_size=4)
    record_epoch(s, lambda i: 10.0 if i < 2 else 0.1)
    s.set_epoch(1)
    order = list(s)
    assert len(order) == 20
    assert sum(i < 2 for i in order) >= 12  # expected 20 * 20 / 21.8 = 18.3 draws of samples 0 and 1


def test_a_sample_never_recorded_weighs_the_mean_loss():
    s = sampler(5, 1.0, batch_size=2)
    order = list(iter(s))
    s.record(0, torch.tensor([1.0, 3.0]))  # samples order[0] and order[1]; three are never recorded
    s.end_epoch(OneProcess)
    assert s.losses[order[0]] == 1.0 and s.losses[order[1]] == 3.0
    assert all(math.isnan(s.losses[i]) for i in order[2:])
    w = s.weights()
    assert torch.allclose(w[order[2:]], torch.full((3,), 2.0 / 10, dtype=torch.float64))  # mean 2 of a total 1 + 3 + 3 * 2
    assert torch.isclose(w.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_a_sample_drawn_twice_keeps_the_mean_of_its_losses():
    s = sampler(4, 1.0, batch_size=1)
    record_epoch(s, lambda i: 1.0)
    s.set_epoch(1)
    s._order = [2, 2, 0, 1]  # a draw with a repeat
    s._sums.zero_(), s._counts.zero_()
    for step, loss in enumerate([1.0, 3.0, 4.0, 5.0]):
        s.record(step, torch.tensor([loss]))
    s.end_epoch(OneProcess)
    assert s.losses.tolist() == [4.0, 5.0, 2.0, 1.0]


def test_two_ranks_split_one_draw_and_merge_their_losses():
    ranks = [sampler(12, 1.0, batch_size=2, num_replicas=2, rank=r, seed=1) for r in (0, 1)]
    orders = [list(iter(s)) for s in ranks]
    assert sorted(orders[0] + orders[1]) == list(range(12))
    for s, order in zip(ranks, orders):
        for step in range(3):
            s.record(step, torch.tensor([float(i) for i in order[2 * step:2 * step + 2]]))
    ranks[0].end_epoch(TwoRanks(ranks[1]))
    ranks[1].end_epoch(TwoRanks(ranks[0]))
    assert ranks[0].losses.tolist() == ranks[1].losses.tolist() == [float(i) for i in range(12)]
    for s in ranks:
        s.set_epoch(1)
    draws = [list(s) for s in ranks]
    assert len(draws[0]) == len(draws[1]) == 6
    generator = torch.Generator().manual_seed(1 + 1)
    whole = torch.multinomial(ranks[0].weights(), 12, replacement=True, generator=generator).tolist()
    assert draws[0] == whole[0::2] and draws[1] == whole[1::2]


def test_record_and_state_errors():
    s = sampler(6, 0.5, batch_size=4)
    list(iter(s))
    with pytest.raises(ValueError, match="batch 1 has 4 losses but the sampler drew 2"):
        s.record(1, torch.ones(4))
    other = sampler(6, 0.5)
    other.load_state_dict(s.state_dict())
    assert other.losses.isnan().all()
    with pytest.raises(ValueError, match="saved sampler holds 6 losses, the data 7"):
        sampler(7).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="hard_fraction must lie in"):
        sampler(6, 1.5)


def test_config_and_task_errors(tmp_path):
    with pytest.raises(UsageError, match="--hard-sampling must lie in"):
        TrainConfig(hard_sampling=-0.1)
    with pytest.raises(UsageError, match="--hard-sampling needs per-sample training losses, which --task detect does not give"):
        loop.train(TrainConfig(task="detect", hard_sampling=0.5, out=str(tmp_path / "d"), quiet=True))
    assert not (tmp_path / "d").exists()


def test_per_image_cross_entropy_averages_labelled_pixels_of_each_image():
    from vovnet.tasks.segmentation.losses import per_image_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5, 6)
    target = torch.randint(0, 4, (3, 5, 6))
    target[0, :2] = 255
    target[2] = 255  # nothing labelled
    got = per_image_cross_entropy(logits, target)
    want = [F.cross_entropy(logits[i:i + 1], target[i:i + 1], ignore_index=255) for i in range(2)]
    assert torch.allclose(got[:2], torch.stack(want)) and got[2] == 0
