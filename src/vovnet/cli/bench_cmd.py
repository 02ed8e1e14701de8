"""``vovnet bench``: images per second, GFLOP/s, fraction of the matmul peak and peak memory, optionally against timm."""

from __future__ import annotations

import sys

from ..deployment.precision import PRECISIONS
from ..deployment.worker import MODES, RUNTIMES


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure speed and memory (optionally against timm in the same run)")
    p.add_argument("--model", default="vovnet39", help="registered model name (default vovnet39)")
    p.add_argument("--img-size", type=int, default=224, help="square input size (default 224)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--mode", default="infer", help=f"{' or '.join(MODES)}: inference, or a training step (forward, backward, SGD)")
    p.add_argument("--precision", default="fp32", help=f"{', '.join(PRECISIONS)} (default fp32); "
                   "without native support on the device it falls back to fp32 and says so")
    p.add_argument("--deploy", action="store_true", help="our fast path: vovnet.deploy for inference (folded batch norm, "
                   "channels_last, precision), channels_last for training")
    p.add_argument("--runtime", default="torch", help=f"{' or '.join(RUNTIMES)}: run ours in torch or, exported to ONNX, in onnxruntime")
    p.add_argument("--grad-checkpointing", action="store_true", help="training with memory-efficient OSA blocks "
                   "(timm is then also measured with its own gradient checkpointing)")
    p.add_argument("--compile", action="store_true", help="torch.compile ours (compiling takes minutes on a small CPU)")
    p.add_argument("--vs", metavar="timm", help="also measure timm's equivalent, interleaved, and print the ratio")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--threads", type=int, default=0, help="torch threads per measured process (default: torch's choice)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations per subject (default 2)")
    p.add_argument("--iters", type=int, default=10, help="timed iterations per subject; the median is reported (default 10)")
    p.add_argument("--matmul-size", type=int, default=4096, help="n of the n x n matmul that measures the peak (default 4096)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..deployment.bench import BenchRequest, benchmark, format_result
    from ..errors import UsageError
    from . import print_json

    if args.vs not in (None, "timm"):
        raise UsageError(f"--vs takes timm, got {args.vs!r}")
    req = BenchRequest(
        model=args.model, img_size=args.img_size, batch=args.batch, mode=args.mode, precision=args.precision,
        deploy=args.deploy, runtime=args.runtime, grad_checkpointing=args.grad_checkpointing, compile=args.compile,
        vs_timm=args.vs == "timm", device=args.device, threads=args.threads, warmup=args.warmup, iters=args.iters,
        matmul_size=args.matmul_size,
    )
    result = benchmark(req, log=lambda msg: print(f"vovnet bench: {msg}", file=sys.stderr, flush=True))
    if args.json:
        print_json(result)
    else:
        print(format_result(result))
    return 0
