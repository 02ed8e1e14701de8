"""``create_model``: a registered network, with its weights when asked for.

Building (:mod:`vovnet.models`) and loading weights (:mod:`vovnet.weights`) stay separate layers; this
thin function composes them, so ``models`` never imports ``weights``.
"""

from __future__ import annotations

import os
from typing import Sequence

from .errors import UsageError
from .models.registry import build_registered
from .models.specs import MODEL_SPECS
from .models.vovnet import VoVNet
from .weights.checkpoint import load_pretrained
from .weights.hub import pull
from .weights.pretrained import as_tag, get_pretrained


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    pretrained: bool | str | os.PathLike | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] = (1, 2, 3, 4),
    **overrides,
) -> VoVNet:
    """Build a registered variant, optionally with pretrained weights.

    Args:
        name: a name from :func:`vovnet.list_models`.
        num_classes: classifier outputs (0 = no classifier; ``forward`` gives pooled features).
        in_chans: input channels.
        pretrained: True for ``name``'s default published weights, a tag (``vovnet39.timm_ra_in1k``,
            see :func:`vovnet.list_pretrained`; downloaded once, verified, converted and cached), or a
            path to a checkpoint (ours, or an official / timm / blog file, detected by its keys). A tag's
            dialect options (timm's ``ese="last"``) apply before building. Backbone weights must match
            exactly; a classifier of another size, or none, leaves a freshly initialised head. The
            model's ``preprocessing`` becomes the one the weights were trained with.
        features_only: return feature maps (see :class:`VoVNet`).
        out_indices: which maps ``features_only`` returns.
        **overrides: any :class:`VoVNetConfig` field (``norm="frozen_batch"``, ``ese="last"``, ...) and
            ``drop_rate`` / ``drop_path_rate``.
    """
    tag = as_tag(pretrained, name)
    if tag is not None:
        weights = get_pretrained(tag)
        if weights.task != "classify":
            raise UsageError(f"{tag} is a whole {weights.detector} detector; load it with vovnet.load_detector({tag!r})")
        if weights.model != name:
            raise UsageError(f"{tag} holds {weights.model} weights, not {name}")
        clash = [f"{k}={overrides[k]!r}" for k, v in weights.options.items() if k in overrides and overrides[k] != v]
        if clash:
            raise UsageError(f"{tag} needs {weights.options}; drop {', '.join(clash)}")
        overrides = {**weights.options, **overrides}
        pretrained = pull(tag)
    model = build_registered(
        name, num_classes=num_classes, in_chans=in_chans, features_only=features_only, out_indices=out_indices, **overrides
    )
    if pretrained is not None and pretrained is not False:
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
