"""Memory-efficient OSA training (set_grad_checkpointing): same gradients and statistics, fewer tensors kept."""

import contextlib
import copy
import gc

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef

import vovnet
from vovnet.models.registry import build_model
from vovnet.models.specs import BLOG_DIALECT, VoVNetConfig

from conftest import rel_err

# Two blocks in stage 3 so that identity shortcuts and stochastic depth are exercised.
SMALL = VoVNetConfig(stem_chs=(8, 8, 16), stage_conv_chs=(8, 12, 16, 16), stage_out_chs=(16, 24, 32, 48),
                     layers_per_block=3, blocks_per_stage=(1, 2, 1, 1))

CASES = {
    "official": dict(config=SMALL),
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
        model = build_model("small", case["config"], num_classes=5, drop_path_rate=0.2,
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


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_gradients_and_statistics_equal_plain_training(case):
    model = make(case)
    x = torch.randn(3, 3, 64, 64)
    if case.get("channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)
    out_plain, grads_plain, buffers_plain = train_step(copy.deepcopy(model), x, case, efficient=False)
    out_eff, grads_eff, buffers_eff = train_step(model, x, case, efficient=True)
    for a, b in zip(out_eff, out_plain):
        assert torch.equal(a, b)
    assert grads_eff.keys() == grads_plain.keys() and grads_plain
    for name, g in grads_plain.items():
        assert rel_err(grads_eff[name], g) <= 1e-5, name
    for name, b in buffers_plain.items():  # running statistics updated once, as in plain training
        assert torch.equal(buffers_eff[name], b), name


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
