"""One policy for every config record stored in a file (checkpoint metadata, ``config.yaml``): a field
this version does not know is refused with its name, never dropped, so a file written by a newer or
different version cannot load as something else. Formats change by a version in the file's ``format``."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def record_from_dict(cls: type[T], data: Mapping[str, Any], *, what: str, error: type[Exception] = ValueError) -> T:
    """``cls(**data)`` for a dataclass ``cls``; ``error`` naming every unknown field otherwise."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"unknown {what} field(s): {', '.join(unknown)}")
    return cls(**data)
