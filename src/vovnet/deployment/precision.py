"""Numeric precisions for inference and training, and whether the hardware runs them natively.

A precision that the device can only emulate is usually far slower than fp32 (bf16 on a CPU
without AVX512-BF16/AMX runs at well under 1 % of the fp32 speed), so the default is to fall back
to fp32 with a message rather than to deliver a "fast path" that is slow.
"""

from __future__ import annotations

import torch

from ..errors import UsageError

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ON_UNSUPPORTED = ("fallback", "emulate", "error")


class DeployWarning(UserWarning):
    """A requested optimisation was not applied (e.g. bf16 on a CPU without native bf16)."""


def precision_dtype(name: str) -> torch.dtype:
    """``"fp32" | "bf16" | "fp16"`` -> the torch dtype; anything else is a UsageError."""
    try:
        return PRECISIONS[name]
    except KeyError:
        raise UsageError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}") from None


def _cpu_support(name: str) -> str | None:
    if name == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "this CPU has no native bf16 (AVX512-BF16 or AMX), so oneDNN would emulate it far slower than fp32"
    if name == "fp16" and not torch.ops.mkldnn._is_mkldnn_fp16_supported():
        return "this CPU has no native fp16 arithmetic (AVX512-FP16 or AMX-FP16)"
    return None


def _cuda_support(name: str, device: torch.device) -> str | None:
    if name == "bf16" and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name(device)} has no native bf16"
    return None


def unsupported_reason(name: str, device: torch.device | str = "cpu") -> str | None:
    """Why ``device`` cannot run precision ``name`` natively, or None when it can."""
    precision_dtype(name)
    device = torch.device(device)
    if name == "fp32":
        return None
    if device.type == "cpu":
        return _cpu_support(name)
    if device.type == "cuda":
        return _cuda_support(name, device)
    return None


def resolve_precision(name: str, device: torch.device | str = "cpu", on_unsupported: str = "fallback") -> tuple[str, str | None]:
    """The precision to actually run, and a message when it is not the one asked for.

    ``on_unsupported`` decides what happens when the device lacks native support:
    ``"fallback"`` runs fp32 instead (with a message), ``"emulate"`` runs the slow emulation anyway
    (useful to check numerics), ``"error"`` raises UsageError.
    """
    if on_unsupported not in ON_UNSUPPORTED:
        raise UsageError(f"on_unsupported must be one of {', '.join(ON_UNSUPPORTED)}, got {on_unsupported!r}")
    reason = unsupported_reason(name, device)
    if reason is None:
        return name, None
    if on_unsupported == "error":
        raise UsageError(f"{name} is not supported natively: {reason}")
    if on_unsupported == "emulate":
        return name, f"{name} is emulated ({reason}); expect it to be slow"
    return "fp32", f"{name} requested but {reason}; running fp32 instead"
