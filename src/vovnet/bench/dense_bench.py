"""``vovnet bench --task detect|segment``: a whole detector or semantic segmenter on one real-sized image,
against our eager model and torchvision's own in one interleaved run.

Each subject runs in its own worker process (:mod:`vovnet.bench.worker`, the steps built by
:mod:`vovnet.bench.dense_steps`); the parent interleaves single timed images, so the ratios hold even
when a busy machine moves the absolute figures. Besides images per second, each torch subject reports its
median time per stage (backbone + FPN, heads, masks, post-processing) and its peak resident memory. Ours is a
random-weight model by name, or a checkpoint (trained or converted), which then decides the task, arch, backbone
and input size (:meth:`DenseBenchRequest.resolved`).
"""

from __future__ import annotations

import dataclasses

import torch

from ..deployment.precision import precision_dtype
from ..errors import UsageError
from ..models.detection.builders import ARCHS as DETECTOR_ARCHS
from ..models.registry import get_spec
from ..models.segmentation.model import ARCHS as SEGMENTER_ARCHS
from .bench import machine_info, run_subjects
from .dense_steps import BASELINES, IMAGE_HW, checkpoint_facts
from .worker import RUNTIMES, Subject

TASK_ARCHS = {"detect": DETECTOR_ARCHS, "segment": SEGMENTER_ARCHS}
DEFAULT_MODEL = "vovnet39"
DEFAULT_IMG_SIZE = 608


@dataclasses.dataclass(frozen=True)
class DenseBenchRequest:
    """One ``vovnet bench --task detect|segment`` invocation. An empty ``model`` is vovnet39, an ``img_size`` of 0
    is 608; with a ``checkpoint`` an empty ``task``, ``arch`` or ``model`` and an ``img_size`` of 0 are its own."""

    task: str = ""
    arch: str = ""
    model: str = ""
    img_size: int = 0
    checkpoint: str = ""
    deploy: bool = False
    winograd: bool | None = None  # None: deploy's default (Winograd on the CPU in fp32)
    runtime: str = "torch"
    vs_torchvision: bool = False
    detections: int = 100
    precision: str = "fp32"
    device: str = "cpu"
    threads: int = 0
    warmup: int = 1
    iters: int = 5

    def resolved(self) -> DenseBenchRequest:
        """This request with what its checkpoint decides filled in: the task, arch and model (UsageError where a
        given one disagrees) and the short side: the one given, or the checkpoint's (480, the bench image's own,
        for a checkpoint that takes images at their own size)."""
        if not self.checkpoint:
            return dataclasses.replace(self, model=self.model or DEFAULT_MODEL, img_size=self.img_size or DEFAULT_IMG_SIZE)
        facts = checkpoint_facts(self.checkpoint)
        for name, given, own in (("task", self.task, facts.task), ("arch", self.arch, facts.arch), ("model", self.model, facts.model)):
            if given and given != own:
                raise UsageError(f"--{name} {given}: {self.checkpoint} is a {facts.task} checkpoint of {facts.arch} {facts.model}")
        return dataclasses.replace(self, task=facts.task, arch=facts.arch, model=facts.model,
                                   img_size=self.img_size or facts.img_size or IMAGE_HW[0])

    def validate(self) -> None:
        if self.task not in TASK_ARCHS:
            raise UsageError(f"--task must be one of classify, {', '.join(TASK_ARCHS)}, got {self.task!r}")
        if self.arch not in TASK_ARCHS[self.task]:
            raise UsageError(f"--arch for --task {self.task} must be one of {', '.join(TASK_ARCHS[self.task])}, got {self.arch!r}")
        if not self.checkpoint:  # a checkpoint's backbone is its own
            get_spec(self.model)
        precision_dtype(self.precision)
        if self.runtime not in RUNTIMES:
            raise UsageError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        for name, value, low in (("img-size", self.img_size, 64), ("detections", self.detections, 1), ("iters", self.iters, 1),
                                 ("warmup", self.warmup, 0), ("threads", self.threads, 0)):
            if value < low:
                raise UsageError(f"--{name} must be at least {low}, got {value}")
        if self.runtime == "onnxruntime" and (self.deploy or self.precision != "fp32" or self.device != "cpu"):
            raise UsageError("--runtime onnxruntime measures the exported fp32 model on the CPU (without --deploy)")
        if self.winograd is not None and not (self.deploy and self.task == "detect"):
            flag = "--winograd" if self.winograd else "--no-winograd"
            raise UsageError(f"{flag} applies to a deployed detector (--task detect --deploy)")
        if self.precision != "fp32" and not self.deploy:
            raise UsageError("--precision applies with --deploy")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"--device {self.device}: no CUDA device is available")

    @property
    def runner(self) -> str:
        if self.runtime == "onnxruntime":
            return "onnxruntime"
        return {None: "deploy", True: "deploy+winograd", False: "deploy-direct"}[self.winograd] if self.deploy else "eager"


def plan_dense_subjects(req: DenseBenchRequest) -> list[Subject]:
    """Ours as asked; ours eager where that is not it (the model a deployment replaces); torchvision's with
    ``vs_torchvision``."""
    common = dict(task=req.task, img_size=req.img_size, detections=req.detections, device=req.device, threads=req.threads)
    ours = dict(source="vovnet", arch=req.arch, model=req.model, checkpoint=req.checkpoint, **common)
    subjects = [Subject(label=f"ours {req.arch} {req.model} {req.precision} {req.runner}", precision=req.precision,
                        deploy=req.deploy, winograd=req.winograd, runtime=req.runtime, **ours)]
    if req.runner != "eager":
        subjects.append(Subject(label=f"ours {req.arch} {req.model} fp32 eager", **ours))
    if req.vs_torchvision:
        name = BASELINES[req.task]
        subjects.append(Subject(label=f"torchvision {name} fp32 eager", source="torchvision", arch=name, model=name, **common))
    return subjects


def ran_winograd(req: DenseBenchRequest, effective_precision: str) -> bool:
    """Whether ours ran with Winograd convolutions: asked for, or deploy's default, where they compute."""
    computes = req.deploy and req.task == "detect" and req.device == "cpu" and effective_precision == "fp32"
    return computes and req.winograd is not False


def dense_benchmark(req: DenseBenchRequest, log=None) -> dict:
    """Run one request; returns the result object (the CLI's ``--json``): ``img_s``, ``stages`` (median ms per
    stage), ``peak_rss_mb``, and with an eager baseline ``eager_img_s``/``vs_eager``, with torchvision
    ``torchvision_img_s``/``ratio``; ``rows`` has every subject; ``checkpoint`` the file ours came from ("": none);
    ``winograd`` whether ours ran its wide 3x3 convolutions as Winograd (deploy's default: on the CPU in fp32)."""
    req = req.resolved()
    req.validate()
    rows = run_subjects(plan_dense_subjects(req), warmup=req.warmup, iters=req.iters, log=log)
    ours = rows[0]
    result = dict(
        task=req.task, arch=req.arch, model=req.model, checkpoint=req.checkpoint, img_size=req.img_size, input_hw=list(IMAGE_HW), deploy=req.deploy, winograd=ran_winograd(req, ours["precision"]),
        runtime=req.runtime, precision=req.precision, effective_precision=ours["precision"], device=req.device,
        img_s=ours["img_s"], step_ms=ours["step_ms"], stages=ours.get("stages_ms"), detections=ours.get("detections"),
        peak_rss_mb=ours["peak_rss_mb"], memory_mb=ours["memory_mb"], notes=sorted({n for row in rows for n in row["notes"]}),
    )
    by_label = {row["label"]: row for row in rows[1:]}
    eager = by_label.get(f"ours {req.arch} {req.model} fp32 eager")
    if eager is not None:
        result.update(eager_img_s=eager["img_s"], vs_eager=ours["img_s"] / eager["img_s"], eager_stages=eager.get("stages_ms"))
    if req.vs_torchvision:
        tv = rows[-1]
        result.update(torchvision_model=BASELINES[req.task], torchvision_img_s=tv["img_s"], ratio=ours["img_s"] / tv["img_s"],
                      torchvision_stages=tv.get("stages_ms"), torchvision_detections=tv.get("detections"),
                      torchvision_peak_rss_mb=tv["peak_rss_mb"])
    result.update(rows=rows, machine=machine_info(req.device), threads=ours["threads"], iters=ours["iters"])
    return result


def format_dense_result(result: dict) -> str:
    """The human-readable table printed by ``vovnet bench --task detect|segment``."""
    stage_names = list(next((r["stages_ms"] for r in result["rows"] if r.get("stages_ms")), {}))
    head = f"{'subject':<52} {'img/s':>7} {'ms':>8} " + " ".join(f"{n[:12]:>12}" for n in stage_names) + f" {'dets':>5} {'peak RSS MB':>11}"
    lines = [head, "-" * len(head)]
    for row in result["rows"]:
        stages = row.get("stages_ms") or {}
        cells = " ".join(f"{stages[n]:12.0f}" if n in stages else " " * 12 for n in stage_names)
        dets = row.get("detections")
        lines.append(f"{row['label']:<52} {row['img_s']:7.2f} {row['step_ms']:8.0f} {cells} "
                     f"{dets if dets is not None else '':>5} {row['peak_rss_mb']:11.0f}")
    ours = result["rows"][0]
    for row in result["rows"][1:]:
        lines.append(f"ours / {row['label']}: {ours['img_s'] / row['img_s']:.2f}x img/s")
    machine = result["machine"]
    h, w = result["input_hw"]
    lines.append(f"input: one {w}x{h} image resized to {result['img_size']} px; stages in ms (median); "
                 f"machine: {machine['cpu']}, {result['threads']} threads, torch {machine['torch']}; "
                 f"median of {result['iters']} interleaved iterations")
    if result["checkpoint"]:
        lines.append(f"ours: {result['checkpoint']}")
    lines.extend(f"note: {n}" for n in result["notes"])
    return "\n".join(lines)
