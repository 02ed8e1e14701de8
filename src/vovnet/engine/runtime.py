"""Where a run executes: device, mixed precision, memory format and the process group.

One :class:`Runtime` is made per process (``Runtime.create``) and handed to the task's hooks, so a
task never asks "which device? which rank? autocast or not?" itself.

Multi-process runs are started by ``torchrun``, which sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; :func:`Runtime.create` then joins the process group (gloo on CPU, nccl on CUDA).
Several machines: run the same command on every node with torchrun's rendezvous flags, e.g.
``torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29400 --rdzv_id JOB -m vovnet train ...``.

:func:`environment` describes the machine and the installed versions, for bug reports (``vovnet env``).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import UsageError

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a usage error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise UsageError(f"--device takes auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but torch sees no CUDA device")
    return torch.device(name)


@dataclass
class Runtime:
    """Device, precision and distributed facts of this process.

    Attributes:
        device: where the model and batches live (``cuda:LOCAL_RANK`` under torchrun on GPUs).
        amp_dtype: autocast dtype (``torch.bfloat16`` / ``torch.float16``) or None for fp32.
        channels_last: move 4-D image tensors to channels-last memory format.
        rank, world_size, local_rank: torchrun's process coordinates (0, 1, 0 for a single process).
    """

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def create(cls, device: str = "auto", amp: str = "none", channels_last: bool = False) -> "Runtime":
        """Resolve ``device``/``amp`` and, under torchrun, join the process group."""
        if amp not in AMP_DTYPES:
            raise UsageError(f"--amp takes {', '.join(AMP_DTYPES)}, got {amp!r}")
        dev = resolve_device(device)
        if amp == "fp16" and dev.type != "cuda":
            raise UsageError("--amp fp16 needs CUDA; on CPU use --amp bf16")
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if world_size > 1:
            if dev.type == "cuda":
                dev = torch.device("cuda", local_rank)
                torch.cuda.set_device(dev)
            if not dist.is_initialized():
                backend = "nccl" if dev.type == "cuda" else "gloo"
                dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        return cls(dev, AMP_DTYPES[amp], channels_last, rank, world_size, local_rank)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) prints progress and writes files."""
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes (a no-op in fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, obj: Any) -> Any:
        """Move every tensor inside ``obj`` (tensors, lists, tuples, dicts) to the device.

        4-D floating tensors (image batches ``[N, C, H, W]``) also take channels-last format when asked.
        """
        if isinstance(obj, torch.Tensor):
            obj = obj.to(self.device, non_blocking=True)
            if self.channels_last and obj.dim() == 4 and obj.is_floating_point():
                obj = obj.contiguous(memory_format=torch.channels_last)
            return obj
        if isinstance(obj, dict):
            return {k: self.to_device(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            moved = [self.to_device(v) for v in obj]
            return type(obj)(*moved) if hasattr(obj, "_fields") else type(obj)(moved)
        return obj

    def sum_over_ranks(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes (identity for one process)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process (identity for one process)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every process (``[obj]`` for one process)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


# Distributions a bug report needs the versions of (as ``python -m torch.utils.collect_env`` lists them).
REPORTED_PACKAGES = ("vovnet", "torch", "torchvision", "numpy", "safetensors", "onnx", "onnxruntime", "onnxscript", "timm",
                     "pycocotools", "faster-coco-eval", "pillow", "matplotlib")


def environment() -> dict[str, Any]:
    """What a bug report needs: the installed versions of ``REPORTED_PACKAGES`` (None where not installed), Python,
    the platform, torch's CUDA and cuDNN builds, the CPU (name, cores, torch threads, the vector ISA torch
    uses) and each GPU torch sees (name, memory in GiB, compute capability)."""
    versions = {}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                         "capability": f"{props.major}.{props.minor}"})
    return {
        "packages": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda_build": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu": {"name": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                "capability": torch.backends.cpu.get_cpu_capability()},
        "gpus": gpus,
    }


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
