"""task_config: a task's own defaults apply where the user sets nothing; the user's settings win; a task
without its own default for a field has TrainConfig's."""

import dataclasses

import pytest

from vovnet.engine import TrainConfig
from vovnet.engine.task import TASKS, get_task, task_config

FIELDS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


@pytest.mark.parametrize("task", list(TASKS))
def test_a_tasks_defaults_apply_where_the_user_sets_nothing(task):
    own = get_task(task).config_defaults
    config = task_config(task=task)
    for name, default in FIELDS.items():
        if name != "task":
            assert getattr(config, name) == own.get(name, default), name
    mine = {"img_size": 80, "epochs": 11, "lr": 0.37, "batch_size": 5}  # none of them any task's default
    assert all(own.get(name) != value and FIELDS[name] != value for name, value in mine.items())
    config = task_config(task=task, **mine)
    assert {name: getattr(config, name) for name in mine} == mine
