"""One benchmark subject in its own process: ``python -m vovnet.bench.worker``.

Each subject (a network in some configuration, or a matrix multiply) lives in a separate process so
that its peak resident memory is its own, and so that the parent can interleave single timed
iterations of several subjects without them competing for the cores. The protocol is one JSON object
per line: ``{"cmd": "setup", "subject": {...}}``, ``{"cmd": "run", "iters": N}`` (timed steps),
``{"cmd": "memory"}`` (one step measured for memory, last), ``{"cmd": "quit"}``; every reply is one
JSON line (``{"error": "..."}`` on failure).
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, fields
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ..deployment.export import export_onnx, fpn_target, vovnet_target
from ..deployment.optimize import deploy
from ..deployment.precision import precision_dtype, resolve_precision
from ..engine.allocator import big_blocks_unmapped
from ..errors import UsageError, VoVNetError
from ..models.backbone import TIMM_PREFIX, BackboneConfig, fpn_backbone
from ..models.registry import build_registered
from ..models.vovnet import VoVNet
from .dense_steps import StageClock, prepare_detector, prepare_segmenter

MODES = ("infer", "train")
RUNTIMES = ("torch", "onnxruntime")
SOURCES = ("vovnet", "timm", "torchvision")
NUM_CLASSES = 1000
MATMUL_SIZE = 4096  # n of the n x n matmul that measures the machine's peak


@dataclass(frozen=True)
class Subject:
    """What one worker measures. ``kind="model"``: a network step; ``kind="matmul"``: an ``n x n`` GEMM."""

    label: str
    kind: str = "model"
    source: str = "vovnet"  # "vovnet" (our registry name), "timm" (a timm vovnet model_cfgs name) or "torchvision" (dense)
    model: str = "vovnet39"
    task: str = "classify"  # or "detect" / "segment": a whole dense model on one image (vovnet.bench.dense_steps)
    arch: str = ""  # the dense model's arch
    checkpoint: str = ""  # the dense model's weights and config (a detector or segmenter checkpoint); "": random, by name
    detections: int = 100  # detectors keep this many
    mode: str = "infer"
    precision: str = "fp32"
    deploy: bool = False  # ours, inference: vovnet.deploy (folded, channels_last); training: channels_last
    winograd: bool | None = None  # a deployed detector: its wide 3x3 convolutions as Winograd (None: deploy's default)
    channels_last: bool = False
    grad_checkpointing: bool = False
    compile: bool = False
    runtime: str = "torch"
    img_size: int = 224
    img_height: int = 0  # > 0: images are img_height x img_size (height x width); 0: square
    features: bool = False  # the feature extractor with its FPN (a camera-3D detector's image backbone), not a classifier
    batch: int = 8
    device: str = "cpu"
    threads: int = 0  # 0: torch's default
    matmul_size: int = MATMUL_SIZE

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(3, H, W)`` of one input image."""
        return (3, self.img_height or self.img_size, self.img_size)

    @classmethod
    def from_dict(cls, data: dict) -> "Subject":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Prepared:
    """A ready-to-time step and the facts measured while building it."""

    step: Callable[[], object]
    flops: int  # useful FLOPs of one step (forward, plus backward when training; no recomputation)
    items: int  # images per step (0 for a matmul)
    precision: str
    notes: list[str]
    base_rss_mb: float | None = None  # resident memory before the model was built (libraries only)
    clock: StageClock | None = None  # stage seconds of the last step (dense models)
    detections: int | None = None  # detections per image (detectors)


def rss_now_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return None


def rss_peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (peak RSS) to the current RSS
        return True
    except OSError:
        return False


def step_memory_mb(step: Callable[[], object], device: torch.device, base_rss_mb: float | None) -> float | None:
    """Peak memory of one ``step``: on CUDA the allocator's peak; on the CPU the peak resident memory
    above ``base_rss_mb`` (the process before the model was built), measured with freed memory
    returned to the system, so that allocator caching does not count. Covers weights, optimizer
    state, gradients, activations and workspace."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        return torch.cuda.max_memory_allocated(device) / 2**20
    if base_rss_mb is None:
        return None
    with big_blocks_unmapped() as unmapped:  # resident memory then tracks live tensors, not glibc's cache
        if not unmapped or not _reset_peak_rss():
            return None
        step()
        return rss_peak_mb() - base_rss_mb


def build_network(source: str, name: str, *, on_meta: bool = False, features: bool = False) -> torch.nn.Module:
    """Our ``name`` or timm's ``name`` (built from timm's own ``model_cfgs``) with a 1000-class head; ``features``:
    its body (stages 2..5) under a 256-channel FPN, as a camera-3D detector's image backbone."""
    with torch.device("meta") if on_meta else nullcontext():
        if features:
            return fpn_backbone(BackboneConfig(name if source == "vovnet" else TIMM_PREFIX + name), extra="maxpool")
        if source == "vovnet":
            return build_registered(name, num_classes=NUM_CLASSES)
        from timm.models.vovnet import VovNet, model_cfgs

        return VovNet(model_cfgs[name], num_classes=NUM_CLASSES)


def count_step_flops(subject: Subject) -> int:
    """FLOPs of one step of ``subject``: the forward counted by ``torch.utils.flop_counter`` on the meta
    device; a training step counts the backward as twice the forward, the usual convention (the
    counter itself overcounts the backward of depthwise convolutions by their channel count)."""
    model = build_network(subject.source, subject.model, on_meta=True, features=subject.features).eval()
    with torch.device("meta"):
        x = torch.empty(subject.batch, *subject.image_shape)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() * (3 if subject.mode == "train" else 1)


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=precision_dtype(precision))


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _onnx_step(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    import onnxruntime as ort


    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="vovnet-bench-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        target = vovnet_target(model) if isinstance(model, VoVNet) else fpn_target(model, x.shape[-1], {})
        export_onnx(target, path, input_size=tuple(x.shape[1:]), batch=x.shape[0], check=False)
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def _prepare_model(s: Subject) -> Prepared:
    device = torch.device(s.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    precision, message = resolve_precision(s.precision, device)
    notes = [message] if message else []
    model = build_network(s.source, s.model, features=s.features).to(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(s.batch, *s.image_shape, generator=gen).to(device)
    channels_last = s.channels_last or s.deploy
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    sync = _sync(device)

    if s.runtime == "onnxruntime":
        return Prepared(_onnx_step(model.eval(), x), count_step_flops(s), s.batch, "fp32", notes)

    if s.mode == "infer" and s.deploy:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            deployed = deploy(model, s.precision, device=device, compile=s.compile)
        net, x = deployed.module, deployed.prepare_input(x)
        del model

        def step():
            with torch.inference_mode():
                net(x)
            sync()

        return Prepared(step, count_step_flops(s), s.batch, deployed.precision, notes)

    model = model.to(memory_format=memory_format)
    x = x.contiguous(memory_format=memory_format)
    autocast = _autocast(device, precision)
    if s.mode == "infer":
        model.eval()
        net = torch.compile(model) if s.compile else model

        def step():
            with torch.inference_mode(), autocast:
                net(x)
            sync()

        return Prepared(step, count_step_flops(s), s.batch, precision, notes)

    model.train()
    if s.grad_checkpointing:
        model.set_grad_checkpointing(True)
    net = torch.compile(model) if s.compile else model
    target = torch.randint(0, NUM_CLASSES, (s.batch,), generator=gen).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def loss_of(out) -> torch.Tensor:  # the feature extractor: every level's mean, so that all of it is trained
        if s.features:
            return sum(m.float().mean() for m in out.values())
        return F.cross_entropy(out.float(), target)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_of(net(x))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        sync()

    return Prepared(step, count_step_flops(s), s.batch, precision, notes)


def _prepare_dense(s: Subject) -> Prepared:
    options = dict(img_size=s.img_size, deploy=s.deploy, runtime=s.runtime, precision=s.precision, device=s.device,
                   checkpoint=s.checkpoint)
    if s.task == "detect":
        dense = prepare_detector(s.source, s.arch, s.model, detections=s.detections, winograd=s.winograd, **options)
    else:
        dense = prepare_segmenter(s.source, s.arch, s.model, **options)
    return Prepared(dense.step, 0, 1, dense.precision, dense.notes, clock=dense.clock, detections=dense.detections)


def _prepare_matmul(s: Subject) -> Prepared:
    device = torch.device(s.device)
    precision, message = resolve_precision(s.precision, device)
    dtype = precision_dtype(precision)
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(s.matmul_size, s.matmul_size, generator=gen).to(device, dtype) for _ in range(2))
    sync = _sync(device)

    def step():
        torch.mm(a, b)
        sync()

    return Prepared(step, 2 * s.matmul_size**3, 0, precision, [message] if message else [])


# Libraries a subject needs, imported before the baseline memory is read so that they do not count.
_LIBRARIES = {"timm": ("timm.models.vovnet",), "onnxruntime": ("onnx", "onnxruntime", "onnxscript")}


def prepare(subject: Subject) -> Prepared:
    """Build the step of ``subject``; FLOPs are counted on a meta-device twin."""
    if subject.threads > 0:
        torch.set_num_threads(subject.threads)
    for module in (*_LIBRARIES.get(subject.source, ()), *_LIBRARIES.get(subject.runtime, ())):
        importlib.import_module(module)
    torch.manual_seed(0)
    base = rss_now_mb()
    if subject.kind == "matmul":
        prepared = _prepare_matmul(subject)
    else:
        prepared = (_prepare_model if subject.task == "classify" else _prepare_dense)(subject)
    prepared.base_rss_mb = base
    return prepared


def time_steps(step: Callable[[], object], iters: int) -> list[float]:
    """Seconds taken by each of ``iters`` calls of ``step``."""
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def _handle(request: dict, state: dict) -> dict:
    cmd = request.get("cmd")
    if cmd == "setup":
        subject = Subject.from_dict(request["subject"])
        start = time.perf_counter()
        prepared = prepare(subject)
        state["prepared"] = prepared
        state["device"] = torch.device(subject.device)
        if state["device"].type == "cuda":
            torch.cuda.reset_peak_memory_stats(state["device"])
        return dict(
            flops=prepared.flops, items=prepared.items, precision=prepared.precision, notes=prepared.notes,
            base_rss_mb=prepared.base_rss_mb, setup_s=time.perf_counter() - start, threads=torch.get_num_threads(),
            detections=prepared.detections,
        )
    if cmd == "run":
        prepared, times, stages = state["prepared"], [], []
        for _ in range(int(request.get("iters", 1))):
            times += time_steps(prepared.step, 1)
            if prepared.clock is not None:
                stages.append(dict(prepared.clock.seconds))
        reply = dict(times=times, peak_rss_mb=rss_peak_mb(), stages=stages)
        if state["device"].type == "cuda":
            reply["peak_device_mb"] = torch.cuda.max_memory_allocated(state["device"]) / 2**20
        return reply
    if cmd == "memory":  # last: it changes how the allocator behaves
        prepared = state["prepared"]
        return dict(memory_mb=step_memory_mb(prepared.step, state["device"], prepared.base_rss_mb))
    raise ValueError(f"unknown command {cmd!r}")


def main() -> int:
    state: dict = {}
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints from libraries must not break the protocol
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("cmd") == "quit":
            break
        try:
            reply = _handle(request, state)
        except (VoVNetError, UsageError) as e:
            reply = {"error": str(e)}
        except Exception as e:  # reported to the parent, which raises it as one line
            traceback.print_exc(file=sys.stderr)
            reply = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
