"""Facts about each registered variant: parameters, GMACs, feature channels."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .registry import build_registered, registered_names
from .specs import MODEL_SPECS
from .vovnet import VoVNet


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: torch.nn.Module, input_size: tuple[int, int, int] = (3, 224, 224), batch: int = 1) -> int:
    """Forward FLOPs (2 per multiply-add) of ``model`` on one ``input_size`` image, counted by
    ``torch.utils.flop_counter`` on the meta device (nothing is computed)."""
    was_training = model.training
    model.eval()
    x = torch.empty(batch, *input_size, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return counter.get_total_flops()


def model_info(name: str, img_size: int = 224) -> dict:
    """One row of ``vovnet models``: name, version, official name, params, GMACs, feature channels."""
    spec = MODEL_SPECS[name]
    with torch.device("meta"):
        model: VoVNet = build_registered(name)
        flops = count_flops(model, (3, img_size, img_size))
    return {
        "name": name,
        "version": spec.version,
        "official_name": spec.official_name,
        "timm_name": spec.timm_name,
        "params": count_params(model),
        "gmacs": round(flops / 2 / 1e9, 3),
        "feature_channels": [f["num_chs"] for f in model.feature_info],
        "feature_strides": [f["reduction"] for f in model.feature_info],
    }


def model_table(img_size: int = 224) -> list[dict]:
    return [model_info(name, img_size) for name in registered_names()]
