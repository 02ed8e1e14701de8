import pytest
import torch

torch.set_num_threads(1)  # two xdist workers share two cores


def randomize_norm_stats(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial batch-norm statistics and affine terms, so eval-mode parity tests mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture
def seeded():
    torch.manual_seed(0)


def spread_detector_heads(model: torch.nn.Module) -> torch.nn.Module:
    """Re-initialise the heads whose tiny init makes random-weight outputs tie, so comparisons see an order:
    SAG-Mask's 0.001-std predictor gives every mask pixel 0.5 (here: positive biases, so every class's masks
    have content whatever the seed drew); RetinaNet's 0.01-std head gives every anchor the same score."""
    from torch import nn

    from vovnet.models.detection import SAGMaskHead

    with torch.no_grad():
        for head in model.modules():
            if isinstance(head, SAGMaskHead):
                nn.init.normal_(head.predictor.weight, std=0.05)
                nn.init.uniform_(head.predictor.bias, 0.0, 1.0)
        if type(model).__name__ == "RetinaNet":
            for m in model.head.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight)
                    nn.init.normal_(m.bias, std=0.5)
    return model



@pytest.fixture
def wide_winograd(monkeypatch):
    """Deploys that replace the small test detectors' 3x3 convolutions as Winograd from 8 channels and on maps of
    any size (by default only >= 160 channels and >= 24 tiles are), so that it reaches their FPN and every head."""
    import functools

    from vovnet.deployment import optimize
    from vovnet.deployment.winograd import winograd_convolutions_

    monkeypatch.setattr(optimize, "winograd_convolutions_", functools.partial(winograd_convolutions_, min_channels=8, min_tiles=1))
