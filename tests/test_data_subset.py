"""--limit-train/--limit-val: the same seeded random subset in every task, and the shapes scenes of a
limited run rendered only where chosen."""

import pytest
from torch.utils.data import Subset

from vovnet.data.splits import seeded_subset
from vovnet.engine.task import get_task, task_config


def test_seeded_subset_is_random_fixed_and_ordered():
    data = list(range(100))
    a, b = seeded_subset(data, 10, seed=3), seeded_subset(data, 10, seed=3)
    assert isinstance(a, Subset) and a.indices == b.indices == sorted(a.indices) and len(set(a.indices)) == 10
    assert a.indices != list(range(10))  # not the first ten
    assert seeded_subset(data, 10, seed=4).indices != a.indices
    assert seeded_subset(data, 0, seed=3) is data and seeded_subset(data, 100, seed=3) is data


# The training and validation sizes of each task's default data (shapes: 2000/200, digits: 1437/360).
TASKS = {
    "classify": {"settings": {}, "sizes": (1437, 360)},
    "detect": {"settings": {"img_size": 64}, "sizes": (2000, 200)},
    "segment": {"settings": {"img_size": 64}, "sizes": (2000, 200)},
}


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_limits_to_the_same_seeded_subset(task):
    case = TASKS[task]
    config = task_config(task=task, limit_train=6, limit_val=4, seed=7, quiet=True, **case["settings"])
    data = get_task(task)(config).build_data(train=True)
    n_train, n_val = case["sizes"]
    assert data.train.indices == seeded_subset(range(n_train), 6, seed=7).indices
    assert data.val.indices == seeded_subset(range(n_val), 4, seed=7).indices
    if task == "detect":  # the scene cache holds exactly the chosen scenes
        assert sorted(data.train.dataset._cache) == data.train.indices
        assert sorted(data.val.dataset._cache) == data.val.indices
    if task == "segment":
        assert [i for i, s in enumerate(data.train.dataset._scenes) if s is not None] == data.train.indices
        assert [i for i, s in enumerate(data.val.dataset._scenes) if s is not None] == data.val.indices
