"""What the data layer hands a task: datasets plus the facts about them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch.utils.data import Dataset


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
