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
