"""``vovnet predict``: a checkpoint's predictions for image files: a classifier's top-k classes with probabilities, a
detector's detections (class, score, box, mask area), a segmenter's share of each class; with --out, drawings and
predictions.json."""

from __future__ import annotations

from .options import add_deploy_flags, add_option_flag, deployer, task_options


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="predict with a checkpoint on image files: classes, detections or class maps",
                       description=__doc__)
    p.add_argument("--checkpoint", required=True, help="a vovnet checkpoint (written by `vovnet train`, `convert` or `pull`)")
    p.add_argument("--task", help="task of the checkpoint (default: read from it, else classify)")
    p.add_argument("--topk", type=int, default=5, help="classify: classes to show per image (default: 5)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run (default: auto)")
    add_deploy_flags(p, "predict with")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_option_flag(p)
    p.add_argument("--out", help="write per-image outputs here (detect: each image with its detections drawn; "
                                  "segment: colour overlays and class-index PNGs; plus predictions.json)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..engine.inference import predict_files
    from . import print_json

    task, rows = predict_files(args.checkpoint, args.images, task=args.task, topk=args.topk, device=args.device,
                               out=args.out, task_options=task_options(args.option),
                               deployer=deployer(args, "predict"))
    if args.json:
        print_json(rows)
    else:
        print(task.format_predictions(rows))
    return 0
