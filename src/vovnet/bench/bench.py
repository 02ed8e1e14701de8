"""``vovnet bench``: our network against timm's in one run, against the machine's own matmul peak.

Every subject (our network, timm's baseline and variants of it, a matrix multiply at the same
precision) runs in its own worker process (:mod:`vovnet.bench.worker`): peak resident memory is then
per subject, and the parent interleaves single timed iterations of all subjects, so a noisy neighbour
slows them all alike and the ratios stay meaningful even when the absolute figures drift.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict

import torch

from ..deployment.precision import precision_dtype
from ..engine.allocator import BIG_BLOCK_BYTES
from ..engine.runtime import cpu_name
from ..errors import UsageError, VoVNetError
from ..models.registry import get_spec
from .worker import MATMUL_SIZE, MODES, RUNTIMES, Subject


class BenchError(VoVNetError):
    """A benchmark subject failed (its worker process raised or died)."""


class Worker:
    """A running ``python -m vovnet.bench.worker`` process measuring one subject."""

    def __init__(self, subject: Subject, *, unmap_big_blocks: bool = False):
        self.subject = subject
        self._stderr = tempfile.TemporaryFile(mode="w+")
        # From the first allocation on, as `vovnet train --grad-checkpointing` does (vovnet.engine.allocator).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(BIG_BLOCK_BYTES)} if unmap_big_blocks else None
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "vovnet.bench.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1, env=env,
        )
        self.times: list[float] = []
        self.stages: list[dict[str, float]] = []  # seconds per stage of each timed step (dense models)
        self.info: dict = {}
        self.last: dict = {}
        self.memory_mb: float | None = None

    def send(self, **message) -> None:
        try:
            self._proc.stdin.write(json.dumps(message) + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # reported by receive()

    def receive(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            raise BenchError(f"{self.subject.label}: worker died (exit {self._proc.wait()}){self._stderr_tail()}")
        reply = json.loads(line)
        if "error" in reply:
            raise BenchError(f"{self.subject.label}: {reply['error']}")
        return reply

    def request(self, **message) -> dict:
        self.send(**message)
        return self.receive()

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        lines = [ln for ln in self._stderr.read().strip().splitlines() if ln.strip()]
        return f": {lines[-1].strip()}" if lines else ""

    def stop(self) -> None:
        """Ask the worker to quit without waiting for it (:meth:`close` waits)."""
        if self._proc.poll() is None and not self._proc.stdin.closed:
            try:
                self._proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self._proc.stdin.close()
            except BrokenPipeError:
                pass

    def close(self) -> None:
        self.stop()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._stderr.close()


def _summarise(worker: Worker) -> dict:
    median = statistics.median(worker.times)
    info, subject = worker.info, worker.subject
    row = dict(
        label=subject.label,
        precision=info["precision"],
        img_s=info["items"] / median if info["items"] else None,
        step_ms=median * 1e3,
        step_ms_min=min(worker.times) * 1e3,
        gflop_s=info["flops"] / median / 1e9,
        peak_rss_mb=worker.last["peak_rss_mb"],
        memory_mb=worker.memory_mb,
        setup_s=info["setup_s"],
        iters=len(worker.times),
        threads=info["threads"],
        notes=info["notes"],
    )
    if "peak_device_mb" in worker.last:
        row["peak_device_mb"] = worker.last["peak_device_mb"]
    if worker.stages:
        row["stages_ms"] = {name: statistics.median(s[name] for s in worker.stages) * 1e3 for name in worker.stages[0]}
    if info.get("detections") is not None:
        row["detections"] = info["detections"]
    return row


def run_subjects(subjects: list[Subject], *, warmup: int = 2, iters: int = 10, log=None) -> list[dict]:
    """Set up every subject in its own process, warm each up, then time ``iters`` rounds in which
    each subject runs one iteration in turn, then measure one more step's memory in each. Returns one
    summary row per subject: median step time, peak RSS of the process, memory of one step (see
    :func:`vovnet.bench.worker.step_memory_mb`). Where any subject trains memory-efficiently, every
    subject runs with big blocks unmapped on free (as :func:`vovnet.engine.allocator.big_blocks_unmapped` does)."""
    unmap = any(s.grad_checkpointing for s in subjects)
    workers: list[Worker] = []
    try:
        if log:
            log(f"setting up {len(subjects)} subjects in parallel")
        for subject in subjects:  # set up together (imports, model building); timed steps never overlap
            workers.append(Worker(subject, unmap_big_blocks=unmap))
            workers[-1].send(cmd="setup", subject=asdict(subject))
        for worker in workers:
            worker.info = worker.receive()
            if warmup:
                if log:
                    log(f"warming up {worker.subject.label}")
                worker.last = worker.request(cmd="run", iters=warmup)
        for i in range(iters):
            if log:
                log(f"round {i + 1}/{iters}")
            for worker in workers:
                worker.last = worker.request(cmd="run", iters=1)
                worker.times.extend(worker.last["times"])
                worker.stages.extend(worker.last.get("stages", []))
        for worker in workers:
            worker.memory_mb = worker.request(cmd="memory")["memory_mb"]
        return [_summarise(w) for w in workers]
    finally:
        for worker in workers:  # every worker told first, so they exit together
            worker.stop()
        for worker in workers:
            worker.close()


@dataclasses.dataclass(frozen=True)
class BenchRequest:
    """One ``vovnet bench`` invocation."""

    model: str = "vovnet39"
    img_size: int = 224
    img_height: int = 0  # > 0: non-square images, img_height x img_size
    features: bool = False  # the body under a 256-channel FPN (stages 2..5), not the classifier
    batch: int = 8
    mode: str = "infer"
    precision: str = "fp32"
    deploy: bool = False
    runtime: str = "torch"
    grad_checkpointing: bool = False
    compile: bool = False
    vs_timm: bool = False
    device: str = "cpu"
    threads: int = 0
    warmup: int = 2
    iters: int = 10
    matmul_size: int = MATMUL_SIZE

    def validate(self) -> None:
        get_spec(self.model)
        precision_dtype(self.precision)
        for name, value, allowed in (("mode", self.mode, MODES), ("runtime", self.runtime, RUNTIMES)):
            if value not in allowed:
                raise UsageError(f"--{name} must be one of {', '.join(allowed)}, got {value!r}")
        for name, value, low in (("batch", self.batch, 1), ("img-size", self.img_size, 32), ("iters", self.iters, 1),
                                 ("warmup", self.warmup, 0), ("threads", self.threads, 0), ("matmul-size", self.matmul_size, 64)):
            if value < low:
                raise UsageError(f"--{name} must be at least {low}, got {value}")
        if self.runtime == "onnxruntime" and (self.mode != "infer" or self.precision != "fp32" or self.device != "cpu"):
            raise UsageError("--runtime onnxruntime measures fp32 inference on the CPU")
        if self.img_height and self.img_height < 32:
            raise UsageError(f"--img-size height must be at least 32, got {self.img_height}")
        if self.features and (self.deploy or self.compile):
            raise UsageError("--features measures the eager feature extractor (no --deploy or --compile)")
        if self.grad_checkpointing and self.mode != "train":
            raise UsageError("--grad-checkpointing applies to --mode train")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"--device {self.device}: no CUDA device is available")
        if self.vs_timm:
            timm_name(self.model)


def timm_name(model: str) -> str:
    """timm's name for our ``model``; UsageError where timm has none, VoVNetError where timm is missing."""
    name = get_spec(model).timm_name
    if name is None:
        raise UsageError(f"{model} has no timm equivalent; --vs timm works for models with a timm name (vovnet models)")
    try:
        from timm.models.vovnet import model_cfgs
    except ImportError:
        raise VoVNetError("--vs timm needs timm, a development dependency: pip install 'vovnet[dev]' (or pip install timm)") from None
    if name not in model_cfgs:
        raise UsageError(f"this timm version has no {name}")
    return name


def _label(who: str, model: str, precision: str, *features: str) -> str:
    return " ".join([who, model, precision, *(f for f in features if f)])


def plan_subjects(req: BenchRequest) -> list[Subject]:
    """Our subject, timm's (fp32 eager, the baseline of every ratio; where ours differs from that, also
    timm with the same precision and layout, and with its own gradient checkpointing), and the matrix
    multiply at our precision (the peak)."""
    common = dict(mode=req.mode, img_size=req.img_size, img_height=req.img_height, features=req.features, batch=req.batch,
                  device=req.device, threads=req.threads)
    runner = "onnxruntime" if req.runtime == "onnxruntime" else "deploy" if req.deploy else "eager"
    ours_label = _label("ours", req.model, req.precision, runner, "grad-ckpt" if req.grad_checkpointing else "",
                        "compiled" if req.compile else "", "+FPN" if req.features else "")
    subjects = [Subject(label=ours_label, model=req.model, precision=req.precision, deploy=req.deploy, runtime=req.runtime,
                        grad_checkpointing=req.grad_checkpointing, compile=req.compile, **common)]
    if req.vs_timm:
        name = timm_name(req.model)
        timm = dict(source="timm", model=name, **common)
        fpn = "+FPN" if req.features else ""
        subjects.append(Subject(label=_label("timm", name, "fp32", "eager", fpn), **timm))
        if req.deploy or req.precision != "fp32":
            subjects.append(Subject(label=_label("timm", name, req.precision, "channels_last", fpn), precision=req.precision,
                                    channels_last=True, **timm))
        if req.grad_checkpointing:
            subjects.append(Subject(label=_label("timm", name, "fp32", "grad-ckpt", fpn), grad_checkpointing=True, **timm))
    subjects.append(Subject(label=f"matmul {req.matmul_size} {req.precision}", kind="matmul", precision=req.precision,
                            matmul_size=req.matmul_size, device=req.device, threads=req.threads))
    return subjects


def machine_info(device: str = "cpu") -> dict:
    """What the figures were measured on."""
    info = dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
                cpu=cpu_name(), cpu_count=os.cpu_count(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
                native_bf16=bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _ese_note(model: str, timm_model: str) -> str | None:
    ours = get_spec(model).config.ese
    if ours == "every" and timm_model.startswith("ese_"):
        return (f"timm's {timm_model} has eSE only on the last block of each stage; ours has it on every block (official "
                "VoVNetV2), so ours carries more parameters; FLOPs are counted for each network")
    return None


def benchmark(req: BenchRequest, log=None) -> dict:
    """Run one ``vovnet bench`` request; returns the result object (see the CLI's ``--json``)."""
    req.validate()
    rows = run_subjects(plan_subjects(req), warmup=req.warmup, iters=req.iters, log=log)
    ours, peak = rows[0], rows[-1]
    for row in rows[:-1]:
        row["peak_fraction"] = row["gflop_s"] / peak["gflop_s"] if row["precision"] == peak["precision"] else None
    result = dict(
        model=req.model, img_size=req.img_size, img_height=req.img_height or req.img_size, features=req.features,
        batch=req.batch, mode=req.mode, precision=req.precision,
        effective_precision=ours["precision"], deploy=req.deploy, runtime=req.runtime, compile=req.compile,
        grad_checkpointing=req.grad_checkpointing, device=req.device,
        img_s=ours["img_s"], step_ms=ours["step_ms"], gflop_s=ours["gflop_s"], peak_fraction=ours["peak_fraction"],
        peak_rss_mb=ours["peak_rss_mb"], memory_mb=ours["memory_mb"],
        matmul_peak_gflop_s=peak["gflop_s"], notes=sorted({n for row in rows for n in row["notes"]}),
    )
    if req.grad_checkpointing:
        result["notes"].append(
            f"every subject ran with MALLOC_MMAP_THRESHOLD_={BIG_BLOCK_BYTES} (big blocks unmapped on free), "
            "as `vovnet train --grad-checkpointing` sets it; without it glibc's heap keeps freed activations")
    if req.vs_timm:
        timm = rows[1]
        result.update(
            timm_model=timm_name(req.model), timm_img_s=timm["img_s"], ratio=ours["img_s"] / timm["img_s"],
            timm_peak_rss_mb=timm["peak_rss_mb"], timm_memory_mb=timm["memory_mb"],
            memory_ratio=_ratio(ours["memory_mb"], timm["memory_mb"]), peak_rss_ratio=_ratio(ours["peak_rss_mb"], timm["peak_rss_mb"]),
        )
        note = _ese_note(req.model, result["timm_model"])
        if note:
            result["notes"].append(note)
    result.update(rows=rows, machine=machine_info(req.device), threads=ours["threads"])
    return result


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _cell(value, spec: str, width: int) -> str:
    return f"{value:{width}{spec}}" if value is not None else " " * width


def format_result(result: dict) -> str:
    """The human-readable table printed by ``vovnet bench``."""
    head = (f"{'subject':<48} {'prec':>5} {'img/s':>8} {'step ms':>9} {'GFLOP/s':>8} {'of peak':>8} "
            f"{'memory MB':>10} {'peak RSS MB':>11}")
    lines = [head, "-" * len(head)]
    for row in result["rows"]:
        lines.append(f"{row['label']:<48} {row['precision']:>5} {_cell(row['img_s'], '.2f', 8)} {row['step_ms']:9.1f} "
                     f"{row['gflop_s']:8.1f} {_cell(row.get('peak_fraction'), '.1%', 8)} {_cell(row['memory_mb'], '.0f', 10)} "
                     f"{row['peak_rss_mb']:11.0f}")
    ours = result["rows"][0]
    for row in result["rows"][1:-1]:
        memory = _ratio(ours["memory_mb"], row["memory_mb"])
        lines.append(f"ours / {row['label']}: {ours['img_s'] / row['img_s']:.2f}x img/s"
                     + (f", {memory:.2f}x memory" if memory is not None else ""))
    machine = result["machine"]
    lines.append(f"machine: {machine['cpu']}, {result['threads']} threads, {machine['cpu_capability']}, torch {machine['torch']}; "
                 f"median of {ours['iters']} interleaved iterations; memory = one step's peak above the loaded libraries")
    lines.extend(f"note: {n}" for n in result["notes"])
    return "\n".join(lines)
