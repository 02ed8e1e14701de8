"""Loss-weighted sampling: later epochs draw more of the training samples the model still gets wrong.

Online hard example mining at the level of whole samples (Loshchilov & Hutter 2015, "Online batch
selection"; Katharopoulos & Fleuret 2018): the engine records each sample's training loss as its batch
goes by, and from the second epoch on a fraction ``hard_fraction`` of each epoch's draws is made in
proportion to those losses, the rest uniformly. Easy samples are seen less, hard ones (on the shapes
scenes: overlapping shapes of different classes) more. The only extra work per step is the
per-sample loss (segmentation computes each image's cross-entropy once more, without gradients).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, DistributedSampler


class LossWeightedSampler(DistributedSampler):
    """A :class:`~torch.utils.data.DistributedSampler` that weights each sample by its last training loss.

    The first epoch (and any epoch with ``hard_fraction`` 0) is a seeded permutation sharded over ranks,
    exactly as ``DistributedSampler`` does. Later epochs draw ``total_size`` indices with replacement,
    with probability ``(1 - f) / n + f * loss_i / sum(loss)``, from a generator seeded by ``seed + epoch``
    (so every rank draws the same list), and each rank takes every ``num_replicas``-th draw.

    The loop calls :meth:`record` after each step with the batch's per-sample losses (batches follow the
    sampler's order, ``batch_size`` at a time) and :meth:`end_epoch` after the epoch, which merges the
    ranks' records. A sample never recorded (one a dropped last batch held) weighs the mean loss.
    """

    def __init__(self, dataset: Dataset, *, hard_fraction: float, batch_size: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        if not 0 <= hard_fraction <= 1:
            raise ValueError(f"hard_fraction must lie in [0, 1], got {hard_fraction}")
        self.hard_fraction = hard_fraction
        self.batch_size = batch_size
        self.losses = torch.full((len(dataset),), math.nan)  # last recorded loss of each sample
        self._order: list[int] = []  # this rank's indices for the current epoch, in draw order
        self._sums = torch.zeros(len(dataset), dtype=torch.float64)  # this epoch's records on this rank
        self._counts = torch.zeros(len(dataset), dtype=torch.float64)
        self._pending: list[tuple[list[int], torch.Tensor]] = []  # records not yet summed, losses on their device

    def weights(self) -> torch.Tensor | None:
        """Draw probabilities ``[n]`` for the next loss-weighted epoch, or None while no loss is known."""
        known = ~self.losses.isnan()
        if not known.any():
            return None
        losses = torch.where(known, self.losses, self.losses[known].mean()).double().clamp_min(1e-12)
        n = len(losses)
        return (1 - self.hard_fraction) / n + self.hard_fraction * losses / losses.sum()

    def __iter__(self) -> Iterator[int]:
        weights = self.weights() if self.hard_fraction > 0 else None
        if weights is None:
            self._order = list(super().__iter__())
        else:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            draws = torch.multinomial(weights, self.total_size, replacement=True, generator=generator)
            self._order = draws[self.rank:self.total_size:self.num_replicas].tolist()
        self._sums.zero_()
        self._counts.zero_()
        self._pending = []
        return iter(self._order)

    def record(self, step: int, losses: torch.Tensor) -> None:
        """Note the per-sample losses ``[B]`` of batch ``step`` (0-based) of this epoch. They stay on their
        device until :meth:`end_epoch`: reading them each step would make the host wait for the device."""
        start = step * self.batch_size
        index = self._order[start:start + len(losses)]
        if len(index) != len(losses):
            raise ValueError(f"batch {step} has {len(losses)} losses but the sampler drew {len(index)} samples for it")
        self._pending.append((index, losses.detach()))

    def local_records(self) -> torch.Tensor:
        """This rank's records of the epoch so far: per-sample loss sums ``[n]`` then counts ``[n]`` (float64)."""
        if self._pending:
            index = torch.tensor([i for indices, _ in self._pending for i in indices], dtype=torch.long)
            losses = torch.cat([losses.reshape(-1) for _, losses in self._pending]).double().cpu()
            self._sums.index_add_(0, index, losses)
            self._counts.index_add_(0, index, torch.ones(len(index), dtype=torch.float64))
            self._pending = []
        return torch.cat([self._sums, self._counts])

    def end_epoch(self, runtime) -> None:
        """Merge this epoch's records of all ranks into :attr:`losses` (the mean where a sample was drawn twice)."""
        n = len(self.losses)
        merged = torch.tensor(runtime.sum_over_ranks(self.local_records().tolist()), dtype=torch.float64)
        sums, counts = merged[:n], merged[n:]
        seen = counts > 0
        self.losses[seen] = (sums[seen] / counts[seen]).float()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"losses": self.losses.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        losses = state["losses"]
        if losses.shape != self.losses.shape:
            raise ValueError(f"the saved sampler holds {len(losses)} losses, the data {len(self.losses)} samples")
        self.losses = losses.clone().float()
