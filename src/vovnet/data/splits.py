"""What the data layer hands a task: datasets plus the facts about them, and the one seeded subset that
``--limit-train`` / ``--limit-val`` take in every task."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset, Subset


@dataclass
class TaskData:
    """What a task's ``build_data`` hands the engine.

    Attributes:
        train: training dataset (None when only evaluation data was asked for).
        val: evaluation dataset (the test split for ``digits``).
        class_names: one name per class; index = label.
        collate_fn: batches samples (None = torch's default collate).
        skipped: files left out because they could not be read (empty with ``--strict``, which fails instead).
        info: JSON-serialisable facts about the data (source, split sizes, ...) for summary.json.
        in_memory: samples are ready in memory, so loader worker processes would only add overhead.
    """

    train: Dataset | None
    val: Dataset
    class_names: list[str]
    collate_fn: Callable | None = None
    skipped: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    in_memory: bool = False


def seeded_subset(dataset: Dataset, n: int, seed: int) -> Dataset:
    """``--limit-train`` / ``--limit-val`` of every task: ``n`` samples of ``dataset`` drawn at random with
    ``seed``, as a :class:`~torch.utils.data.Subset` in index order (``dataset`` itself when ``n`` is 0 or
    not smaller). The same ``n`` and ``seed`` pick the same samples in every run."""
    if n <= 0 or n >= len(dataset):
        return dataset
    keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return Subset(dataset, keep.tolist())
