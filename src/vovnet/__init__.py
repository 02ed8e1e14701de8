"""VoVNet and VoVNetV2 for PyTorch: every published variant, every weight layout, train and deploy.

One way to do each thing:

- create: :func:`create_model` (classifiers, backbones), :func:`create_detector`, :func:`create_segmenter`;
  :func:`list_models` names what each takes;
- load: :func:`load` (any of our checkpoints or any tag), or the typed :func:`load_checkpoint`,
  :func:`load_detector`, :func:`load_segmenter`; save: :func:`save_checkpoint`, :func:`save_detector`,
  :func:`save_segmenter`;
- deploy: :func:`deploy`; export: :mod:`vovnet.deployment` (``vovnet export``);
- predict on a video file, camera or stream: :func:`predict_stream` (``pip install 'vovnet[video]'``).

Every model carries its record as ``model.config``, its classes as ``model.class_names`` and the input its
weights expect as ``model.preprocessing``.
"""

import importlib

from .deployment import deploy  # vovnet.deploy(model, precision=...); the rest of the package is vovnet.deployment
from .errors import CheckpointError, UnknownModelError, UsageError, VoVNetError
from .factory import (
    create_detector,
    create_model,
    create_segmenter,
    list_models,
    load,
    load_checkpoint,
    load_detector,
    load_segmenter,
    vovnet27_slim,
    vovnet39,
    vovnet57,
)
from .models import MODEL_SPECS, EffectiveSE, OSABlock, VoVNet, VoVNetConfig
from .models.detection.sag_mask import SAG_Mask, SAGMaskHead
from .weights import convert_state_dict, read_checkpoint, save_checkpoint
from .weights.detector_checkpoint import save_detector
from .weights.pretrained import list_pretrained
from .weights.segmenter_checkpoint import save_segmenter

__version__ = "0.1.0"

# Names that need the data layer load it on first use, so ``import vovnet`` stays light.
_LAZY = {"pretrained_transforms": "vovnet.data.classification", "predict_stream": "vovnet.tasks.stream"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vovnet' has no attribute {name!r}")


__all__ = [
    "CheckpointError", "UnknownModelError", "UsageError", "VoVNetError",
    "MODEL_SPECS", "EffectiveSE", "OSABlock", "VoVNet", "VoVNetConfig", "SAGMaskHead", "SAG_Mask",
    "create_model", "create_detector", "create_segmenter", "list_models", "vovnet27_slim", "vovnet39", "vovnet57",
    "load", "load_checkpoint", "load_detector", "load_segmenter", "save_checkpoint", "save_detector", "save_segmenter",
    "read_checkpoint", "convert_state_dict", "list_pretrained", "pretrained_transforms", "deploy", "predict_stream",
]
