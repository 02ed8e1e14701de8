"""Model names -> networks: ``create_model``, ``list_models`` and the blog's entry points."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Sequence

from ..errors import UnknownModelError, UsageError
from .specs import MODEL_SPECS, ModelSpec, VoVNetConfig
from .vovnet import VoVNet

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(VoVNetConfig)}
_MODEL_KWARGS = {"drop_rate", "drop_path_rate"}


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally only those containing ``pattern``."""
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


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    pretrained: str | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] = (1, 2, 3, 4),
    **overrides,
) -> VoVNet:
    """Build a registered variant.

    Args:
        name: a name from :func:`list_models`.
        num_classes: classifier outputs (0 = no classifier; ``forward`` gives pooled features).
        in_chans: input channels.
        pretrained: path to a checkpoint (ours, or an official / timm / blog file, detected by its
            keys). Backbone weights must match exactly; a classifier of another size, or none, leaves a
            freshly initialised head.
        features_only: return feature maps (see :class:`VoVNet`).
        out_indices: which maps ``features_only`` returns.
        **overrides: any :class:`VoVNetConfig` field (``norm="frozen_batch"``, ``ese="last"``, ...) and
            ``drop_rate`` / ``drop_path_rate``.
    """
    spec = get_spec(name)
    config_changes = {k: v for k, v in overrides.items() if k in _CONFIG_FIELDS}
    model_kwargs = {k: v for k, v in overrides.items() if k not in _CONFIG_FIELDS}
    try:
        config = spec.config.replace(**config_changes)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None
    model = build_model(
        name, config, num_classes=num_classes, in_chans=in_chans, features_only=features_only, out_indices=out_indices, **model_kwargs
    )
    if pretrained is not None:
        from ..weights.checkpoint import load_pretrained

        load_pretrained(model, pretrained)
    return model


def _entry_point(name: str):
    def factory(**kwargs) -> VoVNet:
        return create_model(name, **kwargs)

    factory.__name__ = name
    factory.__doc__ = f"{MODEL_SPECS[name].official_name}: ``create_model({name!r}, **kwargs)``."
    return factory


# The seed blog's public names (its factories ignored their arguments; ours honour them).
vovnet27_slim = _entry_point("vovnet27_slim")
vovnet39 = _entry_point("vovnet39")
vovnet57 = _entry_point("vovnet57")
