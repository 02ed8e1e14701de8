"""VoVNetV2-99 on one six-camera sample: peak activation memory and step time of the backbone's forward and
backward (no optimizer), alone and with an FPN (256 channels on stages 2..5, as DETR3D's neck), at the
resolutions camera-3D detectors train at (PETR 800x320 and 1600x640, full nuScenes 1600x900).

Three ways to train it: ``plain``; ``ours`` (``set_grad_checkpointing(True)``: the memory-efficient OSA backward,
which keeps convolution outputs only and recomputes no convolution); ``torch_ckpt`` (``torch.utils.checkpoint``,
non-reentrant, around every OSA block: each block's forward runs twice).

Each measurement runs in its own process, on the CPU under ``RLIMIT_AS`` (``--cap-gib``, default 20 GiB of address
space, of which the loaded libraries take about 3.5): a run that does not fit fails there (on a GPU: out of its
memory), not on the machine, and the table says so, then gives the most cameras that fit at that size. On the CPU the memory is the peak resident
memory of one step above the process after a first step on a small input (weights and gradients live, activations freed), with
freed blocks returned to the system at once (``vovnet.bench.worker.step_memory_mb``); the time is that of the
first step at the size, with glibc's default heap. On a GPU (``--device cuda``) the memory is the allocator's peak above the
memory allocated before the step.

    .venv/bin/python benchmarks/multicamera_memory.py --sizes 800x320 --json runs/mc800.json
    .venv/bin/python benchmarks/multicamera_memory.py --device cuda --sizes 800x320 1600x640 1600x900
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SUBJECTS = ("plain", "ours", "torch_ckpt")
CAMERAS = 6


def build(subject: str, fpn: bool):
    """The V2-99 body (maps of stages 2..5) or body + FPN, set up to train as ``subject``."""
    from vovnet.models.backbone import BackboneConfig, feature_body, fpn_backbone

    cfg = BackboneConfig("vovnet99")
    if fpn:
        model = fpn_backbone(cfg, extra="maxpool")
    else:
        model = feature_body(cfg, (2, 3, 4, 5))[0]
    body = model.body if fpn else model
    if subject == "ours":
        body.set_grad_checkpointing(True)
    elif subject == "torch_ckpt":
        from torch.utils.checkpoint import checkpoint

        for stage in body.stages:
            for block in stage.blocks:
                block.forward = (lambda f: lambda x: checkpoint(f, x, use_reentrant=False))(block.forward)
    return model.train()


def measure(subject: str, fpn: bool, cameras: int, height: int, width: int, device: str, threads: int) -> dict:
    import torch

    from vovnet.bench.worker import rss_now_mb, step_memory_mb

    torch.set_num_threads(threads)
    model = build(subject, fpn)
    dev = torch.device(device)
    model = model.to(dev)
    x = torch.randn(1, cameras, 3, height, width, device=dev)

    def step():
        for p in model.parameters():
            p.grad = None if p.grad is None else p.grad.zero_()
        out = model(x.flatten(0, 1))
        maps = list(out.values()) if isinstance(out, dict) else out
        sum(m.float().mean() for m in maps).backward()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    warm = x
    x = torch.randn(1, 1, 3, 64, 128, device=dev)
    step()  # on a small input: the gradients exist before anything is measured
    x = warm
    sync()
    started = time.perf_counter()
    step()
    sync()
    seconds = time.perf_counter() - started
    if dev.type == "cuda":
        before = torch.cuda.memory_allocated(dev) / 2**20
        peak = step_memory_mb(step, dev, None) - before
    else:
        peak = step_memory_mb(step, dev, rss_now_mb())
    return dict(seconds=round(seconds, 2), peak_mb=round(peak) if peak is not None else None)


def run_child(args, subject: str, fpn: bool, cameras: int, height: int, width: int) -> dict:
    command = [sys.executable, __file__, "--child", subject, str(int(fpn)), str(cameras), str(height), str(width),
               "--device", args.device, "--threads", str(args.threads), "--cap-gib", str(args.cap_gib)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["killed"])[-1]
        return dict(fits=False, reason=tail[:160])
    return dict(fits=True, **json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["800x320", "1600x640", "1600x900"], help="WIDTHxHEIGHT per camera")
    parser.add_argument("--subjects", nargs="+", default=list(SUBJECTS), choices=SUBJECTS)
    parser.add_argument("--fpn", choices=("both", "with", "without"), default="both")
    parser.add_argument("--cameras", type=int, default=CAMERAS, help="images per sample (default 6)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cap-gib", type=float, default=20.0, help="address-space limit of each measuring process")
    parser.add_argument("--json", help="append each row to this file (JSON lines)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.device == "cpu":  # a CUDA context maps far more address space than it uses; the GPU bounds itself
            cap = int(args.cap_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        subject, fpn, cameras, height, width = args.child
        print(json.dumps(measure(subject, fpn == "1", int(cameras), int(height), int(width), args.device, args.threads)))
        return
    env_note = dict(device=args.device, threads=args.threads, cap_gib=args.cap_gib)
    fpns = {"both": (False, True), "with": (True,), "without": (False,)}[args.fpn]
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        for fpn in fpns:
            for subject in args.subjects:
                row = dict(size=size, fpn=fpn, subject=subject, cameras=args.cameras, **env_note)
                row.update(run_child(args, subject, fpn, args.cameras, height, width))
                if not row["fits"]:  # the finding; then the most cameras that do fit at this size
                    for cameras in (c for c in (3, 2, 1) if c < args.cameras):
                        smaller = run_child(args, subject, fpn, cameras, height, width)
                        if smaller["fits"]:
                            row["largest_fitting"] = dict(cameras=cameras, **smaller)
                            break
                print(json.dumps(row), flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
