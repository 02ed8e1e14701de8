"""VoVNet and VoVNetV2 for PyTorch: every published variant, every weight layout, train and deploy."""

import importlib

from .deployment import deploy  # vovnet.deploy(model, precision=...); the rest of the package is vovnet.deployment
from .errors import CheckpointError, UnknownModelError, UsageError, VoVNetError
from .factory import create_model, vovnet27_slim, vovnet39, vovnet57
from .models import (
    MODEL_SPECS,
    EffectiveSE,
    OSABlock,
    VoVNet,
    VoVNetConfig,
    list_models,
)
from .weights import convert_state_dict, load_checkpoint, read_checkpoint, save_checkpoint
from .weights.pretrained import list_pretrained

__version__ = "0.1.0"

# Task-level names load their subpackage on first use, so ``import vovnet`` stays light.
_LAZY = {
    "SAGMaskHead": "vovnet.tasks.detection.sag_mask",
    "SAG_Mask": "vovnet.tasks.detection.sag_mask",
    "pretrained_transforms": "vovnet.data.classification",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vovnet' has no attribute {name!r}")


def load_detector(path, image_size="checkpoint"):
    """A detector checkpoint (trained here, or converted from centermask2 by ``vovnet convert --from official``)
    in eval mode; a tag (``centermask2_vovnet39.coco``, see ``vovnet weights``) is pulled and converted first.

    ``image_size``: ``"checkpoint"`` (its test size: 600/1000 for CenterMask-Lite, 800/1333 for CenterMask), a
    short side, a ``(short, long)`` pair, or None (every image at its own size, as the official model called
    directly). Input and output as torchvision's detectors: ``model([image, ...])`` with ``[3, H, W]`` RGB
    floats in 0..1 -> per image ``boxes`` ``[N, 4]``, ``scores``, ``labels`` (1-based; the names are
    ``model.detector_config.class_names``), ``masks`` ``[N, 1, H, W]`` and, with CenterMask's MaskIoU head,
    ``mask_scores``.
    """
    detection = importlib.import_module("vovnet.tasks.detection.checkpoint")  # on first use: import vovnet stays light
    official = importlib.import_module("vovnet.tasks.detection.official")
    return detection.load_detector(official.detector_file(path), image_size=image_size)[0]

__all__ = [
    "CheckpointError", "UnknownModelError", "UsageError", "VoVNetError",
    "MODEL_SPECS", "EffectiveSE", "OSABlock", "VoVNet", "VoVNetConfig",
    "create_model", "list_models", "vovnet27_slim", "vovnet39", "vovnet57",
    "convert_state_dict", "load_checkpoint", "read_checkpoint", "save_checkpoint", "list_pretrained", "pretrained_transforms",
    "SAGMaskHead", "SAG_Mask", "deploy", "load_detector",
]
