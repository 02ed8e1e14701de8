"""``vovnet predict``: the top-k classes of each image, with probabilities."""

from __future__ import annotations

from .options import add_option_flag, task_options


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="predict the classes of image files with a checkpoint")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by `vovnet train`")
    p.add_argument("--task", help="task of the checkpoint (default: read from it, else classify)")
    p.add_argument("--topk", type=int, default=5, help="classes to show per image (default: 5)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run (default: auto)")
    p.add_argument("--deploy", action="store_true", help="run the model as vovnet.deploy makes it (folded, fused, "
                   "channels_last; a detector's wide 3x3 convs as Winograd on the CPU): the same results, faster")
    p.add_argument("--precision", default="fp32", help="with --deploy: fp32 (default), bf16 or fp16, where the device runs "
                   "it natively (otherwise fp32, and it says so)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_option_flag(p)
    p.add_argument("--out", help="write per-image outputs here (detect: each image with its detections drawn; "
                                  "segment: colour overlays and class-index PNGs; plus predictions.json)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.set_defaults(run=run)


def run(args) -> int:
    import sys

    from ..engine.inference import predict_files
    from ..errors import UsageError
    from . import print_json

    if args.precision != "fp32" and not args.deploy:
        raise UsageError("--precision applies with --deploy")
    note = lambda msg: print(f"vovnet predict: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    task, rows = predict_files(args.checkpoint, args.images, task=args.task, topk=args.topk, device=args.device,
                               out=args.out, task_options=task_options(args.option),
                               deploy=args.precision if args.deploy else None, log=note)
    if args.json:
        print_json(rows)
    else:
        print(task.format_predictions(rows))
    return 0
