"""VoVNet and VoVNetV2 for PyTorch: every published variant, every weight layout, train and deploy."""

from .errors import CheckpointError, UnknownModelError, UsageError, VoVNetError
from .models import (
    MODEL_SPECS,
    EffectiveSE,
    OSABlock,
    VoVNet,
    VoVNetConfig,
    create_model,
    list_models,
    vovnet27_slim,
    vovnet39,
    vovnet57,
)
from .weights import convert_state_dict, load_checkpoint, read_checkpoint, save_checkpoint
from .deployment import deploy  # vovnet.deploy(model, precision=...); the rest of the package is vovnet.deployment
from .tasks.detection.sag_mask import SAG_Mask, SAGMaskHead

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "UnknownModelError", "UsageError", "VoVNetError",
    "MODEL_SPECS", "EffectiveSE", "OSABlock", "VoVNet", "VoVNetConfig",
    "create_model", "list_models", "vovnet27_slim", "vovnet39", "vovnet57",
    "convert_state_dict", "load_checkpoint", "read_checkpoint", "save_checkpoint",
    "SAGMaskHead", "SAG_Mask", "deploy",
]
