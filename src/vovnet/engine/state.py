"""Resume state: everything a killed run needs to continue exactly where its last epoch ended.

One file, ``resume.pt``, written atomically after each epoch: the raw model weights, optimizer,
scheduler, grad scaler and EMA state, the RNG states, the metric history and the configuration.
It holds only tensors and plain Python values, and is read back with ``torch.load(weights_only=True)``,
so loading it never runs pickled code.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..io import atomic_write_bytes
from ..weights.checkpoint import check_file_kind

RESUME_FILE = "resume.pt"
FORMAT = "vovnet-resume/1"


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Serialise ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a state written by :func:`save_state`; CheckpointError names a missing, partial or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no resume state here (is this a `vovnet train` output folder?)")
    check_file_kind(path, "resume state")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged files; all mean the same to a user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: corrupt or partial resume state ({reason[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file")
    return state


def rng_state(loader_generator: torch.Generator) -> dict[str, Any]:
    """The random streams training draws from: torch CPU, every CUDA device, and the loader's generator."""
    state = {"torch": torch.get_rng_state(), "loader": loader_generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], loader_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    loader_generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
