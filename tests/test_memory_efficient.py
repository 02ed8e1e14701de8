"""Memory-efficient OSA training (set_grad_checkpointing): same gradients and statistics, fewer tensors kept."""

import contextlib
import copy
import gc

import pytest
import torch
from conftest import rel_err
from torch.multiprocessing.reductions import StorageWeakRef

import vovnet
from vovnet.models.registry import build_model
from vovnet.models.specs import BLOG_DIALECT, VoVNetConfig

# Two blocks in stage 3 so that identity shortcuts and stochastic depth are exercised.
SMALL = VoVNetConfig(stem_chs=(8, 8, 16), stage_conv_chs=(8, 12, 16, 16), stage_out_chs=(16, 24, 32, 48),
                     layers_per_block=3, blocks_per_stage=(1, 2, 1, 1))

CASES = {
    "official": dict(config=SMALL),
    "identity shortcut sums recomputed (no stochastic depth)": dict(config=SMALL, drop_path_rate=0.0),
    "depthwise": dict(name="vovnet19_slim_dw"),
    "blog dialect (relu6, projection shortcut)": dict(config=SMALL.replace(**BLOG_DIALECT)),
    "gelu (not in place)": dict(config=SMALL.replace(act="gelu")),
    "group norm": dict(config=SMALL.replace(norm="group")),
    "frozen batch norm": dict(config=SMALL.replace(norm="frozen_batch")),
    "channels_last": dict(config=SMALL, channels_last=True),
    "features_only": dict(config=SMALL, features_only=True),
    "eval-mode norms": dict(config=SMALL, eval=True),
    "bf16 autocast": dict(config=SMALL, autocast=True),
}


def make(case: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    if "name" in case:
        model = vovnet.create_model(case["name"], num_classes=5)
    else:
        model = build_model("small", case["config"], num_classes=5, drop_path_rate=case.get("drop_path_rate", 0.2),
                            features_only=case.get("features_only", False), out_indices=(0, 2, 4))
    if case.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return model.train(not case.get("eval", False))


def train_step(model: torch.nn.Module, x: torch.Tensor, case: dict, efficient: bool):
    """One SGD step; returns the outputs, the gradients and the buffers afterwards."""
    model.set_grad_checkpointing(efficient)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(1)  # the same stochastic-depth draws
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if case.get("autocast") else contextlib.nullcontext()
    with autocast:
        out = model(x)
        outputs = out if isinstance(out, list) else [out]
        loss = sum(o.float().square().mean() for o in outputs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    return [o.detach() for o in outputs], grads, {n: b.clone() for n, b in model.named_buffers()}


def _inputs(case: dict, dtype: torch.dtype) -> torch.Tensor:
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2)).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if case.get("channels_last") else x


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_gradients_and_statistics_equal_plain_training(case):
    """Checked in float64, where rounding cannot hide a difference in the mathematics: outputs, gradients
    and running statistics agree to 1e-10 (the issue asks for 1e-5). Under autocast the plain path runs,
    so there they are bit-identical."""
    autocast = case.get("autocast", False)
    model = make(case) if autocast else make(case).double()
    x = _inputs(case, torch.float32 if autocast else torch.float64)
    out_plain, grads_plain, buffers_plain = train_step(copy.deepcopy(model), x, case, efficient=False)
    out_eff, grads_eff, buffers_eff = train_step(model, x, case, efficient=True)
    tolerance = 0.0 if autocast else 1e-10
    for a, b in zip(out_eff, out_plain):
        assert rel_err(a, b) <= tolerance
    assert grads_eff.keys() == grads_plain.keys() and grads_plain
    for name, g in grads_plain.items():
        assert rel_err(grads_eff[name], g) <= tolerance, name
    for name, b in buffers_plain.items():  # running statistics updated once, as in plain training
        torch.testing.assert_close(buffers_eff[name], b, rtol=tolerance, atol=tolerance, msg=name)


@pytest.mark.parametrize("case", [c for c in CASES.values() if not c.get("autocast")],
                         ids=[k for k, c in CASES.items() if not c.get("autocast")])
def test_float32_gradients_are_as_accurate_as_plain_training(case):
    """In float32 the aggregation sums its pieces' products instead of multiplying their concatenation, so
    it rounds differently; its gradients stay as close to the float64 ones as plain float32 training's
    (on this tiny model plain float32 itself is 1e-6..4e-3 off, tensor by tensor)."""
    model = make(case)
    _, exact, _ = train_step(copy.deepcopy(model).double(), _inputs(case, torch.float64), case, efficient=False)
    _, plain, _ = train_step(copy.deepcopy(model), _inputs(case, torch.float32), case, efficient=False)
    _, efficient, _ = train_step(model, _inputs(case, torch.float32), case, efficient=True)
    def worst(grads):
        return max(rel_err(grads[name].double(), g) for name, g in exact.items())
    assert worst(efficient) <= 2 * worst(plain) + 1e-7


def _kept_after_forward(model: torch.nn.Module, efficient: bool) -> dict[str, bool]:
    """Which of an OSA block's concatenation and layer activations still have their memory after forward."""
    model.set_grad_checkpointing(efficient)
    block = model.stages[1].blocks[0]
    refs = {}
    def track(name, t):
        refs[name] = StorageWeakRef(t.untyped_storage())

    hooks = [block.concat.register_forward_pre_hook(lambda m, args: track("concat", args[0]))]
    cat = torch.cat  # memory-efficient training concatenates inside one autograd function: watch torch.cat

    def watched_cat(tensors, dim=0, **kwargs):
        out = cat(tensors, dim, **kwargs)
        if block_input and len(tensors) == len(block.layers) + 1 and tensors[0] is block_input[0]:
            track("concat", out)
        return out

    block_input = []
    hooks.append(block.register_forward_pre_hook(lambda m, args: block_input.append(args[0])))
    for i, layer in enumerate(block.layers):
        hooks.append(layer.register_forward_hook(lambda m, args, out, i=i: track(f"layer{i}", out)))
    torch.cat = watched_cat
    try:
        out = model(torch.randn(2, 3, 64, 64))
    finally:
        torch.cat = cat
    gc.collect()
    kept = {name: not ref.expired() for name, ref in refs.items()}
    out.sum().backward()  # still works with nothing of that kept
    for h in hooks:
        h.remove()
    return kept


def test_concatenation_and_activations_are_recomputed_not_kept():
    model = make(CASES["official"])
    assert all(_kept_after_forward(model, efficient=False).values())  # plain autograd keeps them all
    kept = _kept_after_forward(model, efficient=True)
    assert kept and not any(kept.values()), kept


def test_inference_and_switching_off_are_unaffected():
    model = make(CASES["official"]).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
    model.set_grad_checkpointing(True)
    with torch.no_grad():
        assert torch.equal(model(x), want)
    model.set_grad_checkpointing(False)
    assert not model.grad_checkpointing
    assert _kept_after_forward(make(CASES["official"]), efficient=False)["concat"]


def test_frozen_early_stages_train_the_rest_with_the_same_gradients():
    """Frozen weights (``--freeze-at``): the aggregation's chain skips their gradients and still gives the rest."""
    model = make(CASES["official"]).double()
    for p in [*model.stem.parameters(), *model.stages[0].parameters()]:
        p.requires_grad_(False)
    x = _inputs(CASES["official"], torch.float64)
    _, grads_plain, _ = train_step(copy.deepcopy(model), x, CASES["official"], efficient=False)
    _, grads_eff, _ = train_step(model, x, CASES["official"], efficient=True)
    assert grads_eff.keys() == grads_plain.keys() and not any(k.startswith(("stem.", "stages.0.")) for k in grads_plain)
    for name, g in grads_plain.items():
        assert rel_err(grads_eff[name], g) <= 1e-10, name
