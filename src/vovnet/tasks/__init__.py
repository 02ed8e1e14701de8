"""Tasks plugged into the one training engine: see :mod:`vovnet.tasks.base` for the contract."""

from .base import TASKS, EvalResult, Task, TaskData, get_task, register_task

__all__ = ["TASKS", "EvalResult", "Task", "TaskData", "get_task", "register_task"]
