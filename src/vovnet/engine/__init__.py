"""The training engine shared by every task: one loop, its schedule, EMA, resume state and DDP runtime."""

from .config import TrainConfig
from .runtime import Runtime

__all__ = ["TrainConfig", "Runtime", "train", "resume"]


def __getattr__(name):  # the loop pulls in matplotlib and friends; import it when asked for
    if name in ("train", "resume"):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(name)
