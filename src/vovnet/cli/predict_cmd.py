"""``vovnet predict``: a checkpoint's predictions for image files: a classifier's top-k classes with probabilities, a
detector's detections scoring at least --score-thresh (class, score, box; masks as COCO RLE), a segmenter's share
of each class and each class's pixels as COCO RLE; with --out, drawings and predictions.json. A detector's
--format coco writes every detection as a COCO results file (DIR/coco_results.json) for pycocotools or
faster-coco-eval."""

from __future__ import annotations

from .options import add_deploy_flags, add_option_flag, deployer, task_options


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="predict with a checkpoint on image files: classes, detections or class maps",
                       description=__doc__)
    p.add_argument("--checkpoint", required=True, help="a vovnet checkpoint (written by `vovnet train`, `convert` or `pull`)")
    p.add_argument("--task", help="task of the checkpoint (default: read from it, else classify)")
    p.add_argument("--topk", type=int, default=5, help="classify: classes to show per image (default: 5)")
    p.add_argument("--score-thresh", type=float, metavar="S", help="detect: list and draw the detections scoring at "
                   "least S (default: 0.5)")
    p.add_argument("--format", dest="output_format", default="json", choices=("json", "coco"),
                   help="json (default): per-image records, printed and, with --out, in predictions.json; coco (detect, with "
                   "--out DIR): every detection the model returns in DIR/coco_results.json, with the COCO image ids "
                   "the file names are (000000000139.jpg)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run (default: auto)")
    add_deploy_flags(p, "predict with")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_option_flag(p)
    p.add_argument("--out", metavar="DIR", help="write per-image outputs here (detect: each image with its detections "
                   "drawn; segment: colour overlays and class-index PNGs; plus predictions.json), or with --format "
                   "coco the COCO results file")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..engine.inference import predict_files
    from . import print_json

    task, rows = predict_files(args.checkpoint, args.images, task=args.task, topk=args.topk, score_thresh=args.score_thresh,
                               output_format=args.output_format, device=args.device, out=args.out,
                               task_options=task_options(args.option), deployer=deployer(args, "predict"))
    if args.json:
        print_json(rows)
    else:
        print(task.format_predictions(rows))
    return 0
