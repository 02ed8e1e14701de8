from .registry import create_model, get_spec, list_models, vovnet27_slim, vovnet39, vovnet57
from .specs import BLOG_DIALECT, MODEL_SPECS, ModelSpec, VoVNetConfig
from .vovnet import OSABlock, OSAStage, VoVNet
from .layers import EffectiveSE

__all__ = [
    "BLOG_DIALECT", "MODEL_SPECS", "ModelSpec", "VoVNetConfig", "VoVNet", "OSABlock", "OSAStage", "EffectiveSE",
    "create_model", "get_spec", "list_models", "vovnet27_slim", "vovnet39", "vovnet57",
]
