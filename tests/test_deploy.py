"""vovnet.deploy: folded fp32 equals the eval model, bf16 keeps the predictions, fallbacks say so."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_norm_stats, rel_err
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import vovnet
from vovnet.deployment import DeployWarning, deploy, fold_batch_norm_
from vovnet.deployment import precision as precision_module
from vovnet.deployment.fuse import OneDNNConvAct
from vovnet.models.layers import EffectiveSE
from vovnet.models.registry import build_model
from vovnet.models.specs import VoVNetConfig

# A VoVNet small enough to train on 8x8 digits in seconds: every feature of the big ones (eSE on every
# block, identity shortcuts on the second block of a stage), narrow widths.
TINY = VoVNetConfig(stem_chs=(16, 16, 24), stage_conv_chs=(16, 24, 32, 32), stage_out_chs=(32, 48, 64, 96),
                    layers_per_block=2, blocks_per_stage=(1, 2, 1, 1))


def count(model: nn.Module, kind) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("name, channels_last", [("vovnet19_slim_dw", False), ("vovnet19_slim_dw", True), ("vovnet27_slim", True)])
def test_folded_fp32_matches_the_eval_model(name, channels_last):
    model = randomize_norm_stats(vovnet.create_model(name, num_classes=7))
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
    deployed = deploy(model, channels_last=channels_last)
    got = deployed(x)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert rel_err(got, want) < 1e-5
    assert count(deployed.module, nn.BatchNorm2d) == 0
    # channels_last on the CPU: every conv-act unit is one oneDNN call; otherwise plain folded convs
    assert (count(deployed.module, OneDNNConvAct) > 0) == channels_last
    assert count(deployed.module, nn.Conv2d) == (0 if channels_last else count(model, nn.Conv2d) - count(model, EffectiveSE))


def test_fused_units_repack_for_new_shapes_and_survive_copies():
    model = randomize_norm_stats(vovnet.create_model("vovnet19_slim_dw", num_classes=7))
    deployed = deploy(model)
    for shape in [(2, 3, 64, 64), (1, 3, 96, 80), (2, 3, 64, 64)]:
        x = torch.randn(shape)
        with torch.no_grad():
            assert rel_err(deployed(x), model(x)) < 1e-5
    copied = copy.deepcopy(deployed)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(copied(x), deployed(x))


def test_deploy_leaves_the_model_alone():
    model = vovnet.create_model("vovnet19_slim_dw", num_classes=3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert isinstance(vovnet.deploy(model, precision="fp32"), vovnet.deployment.DeployedModel)  # the top-level function
    assert model.training and count(model, nn.BatchNorm2d) > 0
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_frozen_norms_and_feature_maps_fold_too():
    model = randomize_norm_stats(vovnet.create_model("vovnet27_slim", features_only=True, out_indices=(0, 2, 4)))
    model.freeze_at(2)  # stem and stage 2 get FrozenBatchNorm2d
    assert count(model, FrozenBatchNorm2d) > 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
    got = deploy(model)(x)
    assert len(got) == 3
    for g, w in zip(got, want):
        assert g.shape == w.shape and rel_err(g, w) < 1e-5


def test_group_norm_is_not_folded():
    model = vovnet.create_model("vovnet19_slim_dw", num_classes=3, norm="group").eval()
    groups = count(model, nn.GroupNorm)
    assert fold_batch_norm_(model) == 0 and count(model, nn.GroupNorm) == groups > 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(deploy(model)(x), model(x)) < 1e-5


def _digits(seed: int = 0):
    """sklearn's 8x8 digits as [N, 3, 32, 32] in [-1, 1], split 1400 train / rest test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).div(8).sub(1).unsqueeze(1)
    x = F.interpolate(x, size=32, mode="nearest").expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(data.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


@pytest.fixture(scope="module")
def digits_model():
    torch.manual_seed(0)
    (xs, ys), test = _digits()
    model = build_model("tiny", TINY, num_classes=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for epoch in range(4):
        for i in range(0, len(ys), 50):
            loss = F.cross_entropy(model(xs[i : i + 50]), ys[i : i + 50])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), test


@pytest.mark.slow  # trains a classifier first
def test_bf16_keeps_the_predictions_of_a_trained_model(digits_model):
    model, (x, y) = digits_model
    with torch.no_grad():
        fp32 = model(x)
    assert (fp32.argmax(1) == y).float().mean() > 0.85  # it learned something, so agreement means something
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeployWarning)  # emulated where the CPU lacks bf16
        deployed = deploy(model, "bf16", on_unsupported="emulate")
    assert deployed.precision == "bf16" and deployed.module.head.fc.weight.dtype == torch.bfloat16
    bf16 = deployed(x)
    assert F.cosine_similarity(bf16, fp32, dim=1).min() >= 0.999
    assert (bf16.argmax(1) == fp32.argmax(1)).float().mean() >= 0.99


def _pretend_cpu(monkeypatch, bf16_reason):
    monkeypatch.setattr(precision_module, "_cpu_support", lambda name: bf16_reason if name == "bf16" else None)


def test_bf16_falls_back_to_fp32_with_a_message_where_the_cpu_lacks_it(monkeypatch):
    _pretend_cpu(monkeypatch, "no native bf16 here")
    model = vovnet.create_model("vovnet19_slim_dw", num_classes=3)
    with pytest.warns(DeployWarning, match="bf16 requested but no native bf16 here; running fp32"):
        deployed = deploy(model, "bf16")
    assert deployed.precision == "fp32" and deployed.requested_precision == "bf16"
    assert deployed.module.head.fc.weight.dtype == torch.float32 and deployed.notes
    with pytest.raises(vovnet.UsageError, match="not supported natively"):
        deploy(model, "bf16", on_unsupported="error")


def test_bf16_is_used_where_the_cpu_has_it(monkeypatch):
    _pretend_cpu(monkeypatch, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeployWarning)
        deployed = deploy(vovnet.create_model("vovnet19_slim_dw", num_classes=3), "bf16")
    assert deployed.precision == "bf16" and not deployed.notes


@pytest.mark.parametrize("kwargs, match", [(dict(precision="fp8"), "unknown precision 'fp8'"),
                                           (dict(precision="bf16", on_unsupported="maybe"), "on_unsupported")])
def test_bad_arguments_are_usage_errors(kwargs, match):
    with pytest.raises(vovnet.UsageError, match=match):
        deploy(vovnet.create_model("vovnet19_slim_dw", num_classes=3), **kwargs)
