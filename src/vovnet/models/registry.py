"""Model names -> networks: ``build_registered``, ``build_model``, ``registered_names``."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Sequence

from ..errors import UnknownModelError, UsageError
from .specs import MODEL_SPECS, ModelSpec, VoVNetConfig
from .vovnet import VoVNet

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(VoVNetConfig)}
_MODEL_KWARGS = {"drop_rate", "drop_path_rate"}


def registered_names(pattern: str | None = None) -> list[str]:
    """Registered variant names, optionally only those containing ``pattern`` (see :func:`vovnet.list_models`)."""
    return [n for n in MODEL_SPECS if pattern is None or pattern in n]


def get_spec(name: str) -> ModelSpec:
    try:
        return MODEL_SPECS[name]
    except KeyError:
        close = difflib.get_close_matches(name, MODEL_SPECS, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(MODEL_SPECS)}"
        raise UnknownModelError(f"unknown model {name!r}{hint}") from None


def build_model(
    name: str,
    config: VoVNetConfig,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    features_only: bool = False,
    out_indices: Sequence[int] = (1, 2, 3, 4),
    **kwargs,
) -> VoVNet:
    """A VoVNet from an explicit config, named ``name`` (used by checkpoints that record their config)."""
    unknown = sorted(set(kwargs) - _MODEL_KWARGS)
    if unknown:
        raise UsageError(f"unknown model option(s): {', '.join(unknown)}")
    try:
        model = VoVNet(
            config, num_classes=num_classes, in_chans=in_chans, features_only=features_only, out_indices=out_indices, **kwargs
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    model.name = name
    return model


def build_registered(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    features_only: bool = False,
    out_indices: Sequence[int] = (1, 2, 3, 4),
    **overrides,
) -> VoVNet:
    """A registered variant with fresh weights; :func:`vovnet.create_model` adds ``pretrained=``.

    ``overrides``: any :class:`VoVNetConfig` field (``norm="frozen_batch"``, ``ese="last"``, ...) and
    ``drop_rate`` / ``drop_path_rate``.
    """
    spec = get_spec(name)
    config_changes = {k: v for k, v in overrides.items() if k in _CONFIG_FIELDS}
    model_kwargs = {k: v for k, v in overrides.items() if k not in _CONFIG_FIELDS}
    try:
        config = spec.config.replace(**config_changes)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None
    return build_model(
        name, config, num_classes=num_classes, in_chans=in_chans, features_only=features_only, out_indices=out_indices, **model_kwargs
    )


