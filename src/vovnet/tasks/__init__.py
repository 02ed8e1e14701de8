"""Tasks plugged into the one training engine: see :mod:`vovnet.engine.task` for the contract."""

from ..engine.task import TASKS, EvalResult, Task, TaskData, TrainingLosses, get_task, register_task

__all__ = ["TASKS", "EvalResult", "Task", "TaskData", "TrainingLosses", "get_task", "register_task"]
