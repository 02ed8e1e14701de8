"""``vovnet bench``: images per second, GFLOP/s, fraction of the matmul peak and peak memory, optionally against timm;
with ``--task detect|segment`` a whole detector or segmenter on a 640x480 image, optionally against torchvision's."""

from __future__ import annotations

import argparse
import sys

from ..bench.worker import MODES, RUNTIMES
from ..deployment.precision import PRECISIONS


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure speed and memory (optionally against timm or torchvision in the same run)",
                       description=__doc__)
    p.add_argument("--task", help="classify (default): the backbone on a batch of square images; "
                   "detect or segment: a whole --arch model (or --checkpoint's) on one 640x480 image")
    p.add_argument("--arch", help="detect: fcos, retinanet, faster_rcnn, mask_rcnn_sag, centermask; "
                   "segment: fpn_semantic, deeplabv3, deeplabv3plus")
    p.add_argument("--model", help="registered model name (default vovnet39)")
    p.add_argument("--checkpoint", metavar="FILE", help="detect/segment: ours is this detector or segmenter checkpoint "
                   "(trained or converted), with its own task, arch, model and input size")
    p.add_argument("--img-size", type=_img_size, help="classify: square input size (default 224), or WIDTHxHEIGHT "
                   "(1600x640); detect/segment: the short side the 640x480 image is resized to (default 608, or the checkpoint's)")
    p.add_argument("--features", action="store_true", help="classify: the feature extractor under a 256-channel FPN "
                   "(stages 2..5), as a camera-3D detector's image backbone, instead of the classifier; "
                   "--batch-size 6 --img-size 1600x640 is one six-camera nuScenes sample at PETR's size")
    p.add_argument("--detections", type=int, default=100, help="detect: detections per image, on ours and torchvision's "
                   "alike (every candidate kept: score threshold 0; default 100)")
    p.add_argument("--batch", "--batch-size", dest="batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--mode", default="infer", help=f"{' or '.join(MODES)}: inference, or a training step (forward, backward, SGD)")
    p.add_argument("--precision", default="fp32", help=f"{', '.join(PRECISIONS)} (default fp32); "
                   "without native support on the device it falls back to fp32 and says so")
    p.add_argument("--deploy", action="store_true", help="our fast path: vovnet.deploy for inference (folded batch norm, "
                   "channels_last, precision), channels_last for training")
    p.add_argument("--winograd", action=argparse.BooleanOptionalAction, help="detect, with --deploy: the wide 3x3 "
                   "convolutions as Winograd F(4x4, 3x3) (fewer multiplications, ~1e-5 relative error; by default on "
                   "the CPU in fp32); --no-winograd: the direct convolutions")
    p.add_argument("--runtime", default="torch", help=f"{' or '.join(RUNTIMES)}: run ours in torch or, exported to ONNX, in onnxruntime")
    p.add_argument("--grad-checkpointing", action="store_true", help="training with memory-efficient OSA blocks "
                   "(timm is then also measured with its own gradient checkpointing)")
    p.add_argument("--compile", action="store_true", help="torch.compile ours (compiling takes minutes on a small CPU)")
    p.add_argument("--vs", metavar="timm|torchvision", help="also measure timm's equivalent (classify) or torchvision's "
                   "maskrcnn_resnet50_fpn / deeplabv3_resnet50 (detect / segment), interleaved, and print the ratio")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--threads", type=int, default=0, help="torch threads per measured process (default: torch's choice)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations per subject (default 2)")
    p.add_argument("--iters", type=int, default=10, help="timed iterations per subject; the median is reported (default 10)")
    p.add_argument("--matmul-size", type=int, default=4096, help="n of the n x n matmul that measures the peak (default 4096)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..bench.bench import BenchRequest, benchmark, format_result
    from ..errors import UsageError
    from . import print_json

    log = lambda msg: print(f"vovnet bench: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    if args.task not in (None, "classify") or args.checkpoint:
        return _run_dense(args, log)
    if args.vs not in (None, "timm"):
        raise UsageError(f"--vs takes timm, got {args.vs!r}")
    if args.arch is not None:
        raise UsageError("--arch applies to --task detect and segment")
    if args.winograd is not None:
        flag = "--winograd" if args.winograd else "--no-winograd"
        raise UsageError(f"{flag} applies to a deployed detector (--task detect --deploy)")
    width, height = args.img_size or (224, 0)
    req = BenchRequest(
        model=args.model or "vovnet39", img_size=width, img_height=height, features=args.features, batch=args.batch, mode=args.mode, precision=args.precision,
        deploy=args.deploy, runtime=args.runtime, grad_checkpointing=args.grad_checkpointing, compile=args.compile,
        vs_timm=args.vs == "timm", device=args.device, threads=args.threads, warmup=args.warmup, iters=args.iters,
        matmul_size=args.matmul_size,
    )
    result = benchmark(req, log=log)
    if args.json:
        print_json(result)
    else:
        print(format_result(result))
    return 0


def _run_dense(args, log) -> int:
    from ..bench.dense_bench import DenseBenchRequest, dense_benchmark, format_dense_result
    from ..errors import UsageError
    from . import print_json

    task = args.task or "detect|segment"
    if args.features:
        raise UsageError("--features measures the classification backbone's feature extractor (no --task)")
    if args.img_size is not None and args.img_size[1]:
        raise UsageError(f"--task {task} takes one --img-size (the short side), not WIDTHxHEIGHT")
    if args.vs not in (None, "torchvision"):
        raise UsageError(f"--vs takes torchvision with --task {task}, got {args.vs!r}")
    if args.arch is None and not args.checkpoint:
        raise UsageError(f"--task {task} needs --arch (or --checkpoint)")
    if args.grad_checkpointing or args.compile or args.mode != "infer":
        raise UsageError(f"--task {task} measures inference (no --mode train, --grad-checkpointing or --compile)")
    req = DenseBenchRequest(
        task=args.task or "", arch=args.arch or "", model=args.model or "", img_size=args.img_size[0] if args.img_size else 0,
        checkpoint=args.checkpoint or "", deploy=args.deploy, winograd=args.winograd,
        runtime=args.runtime, vs_torchvision=args.vs == "torchvision", detections=args.detections, precision=args.precision,
        device=args.device, threads=args.threads, warmup=args.warmup, iters=args.iters,
    )
    result = dense_benchmark(req, log=log)
    if args.json:
        print_json(result)
    else:
        print(format_dense_result(result))
    return 0


def _img_size(text: str) -> tuple[int, int]:
    """``224`` -> ``(224, 0)`` (square); ``1600x640`` -> ``(1600, 640)`` (width, height)."""
    try:
        width, _, height = text.lower().partition("x")
        return int(width), int(height) if height else 0
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size (224) or WIDTHxHEIGHT (1600x640), got {text!r}") from None
