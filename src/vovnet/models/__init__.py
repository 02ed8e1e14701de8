from .layers import EffectiveSE
from .registry import build_model, build_registered, get_spec, registered_names
from .specs import BLOG_DIALECT, MODEL_SPECS, ModelSpec, VoVNetConfig
from .vovnet import OSABlock, OSAStage, VoVNet

__all__ = [
    "BLOG_DIALECT", "MODEL_SPECS", "ModelSpec", "VoVNetConfig", "VoVNet", "OSABlock", "OSAStage", "EffectiveSE",
    "build_model", "build_registered", "get_spec", "registered_names",
]
