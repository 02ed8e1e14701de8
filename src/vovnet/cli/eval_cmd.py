"""``vovnet eval``: a checkpoint's metrics on a dataset's evaluation split: top-1, top-5 and per-class accuracy for a
classifier, COCO box (and mask) AP, AP50, AP75 and per-class AP for a detector, mIoU, pixel accuracy and per-class IoU
for a segmenter."""

from __future__ import annotations

from .options import add_deploy_flags, add_option_flag, deployer, task_options


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="score a checkpoint on a dataset: accuracy, box / mask AP or mIoU", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="a vovnet checkpoint (written by `vovnet train`, `convert` or `pull`)")
    p.add_argument("--data", help="digits, a torchvision name, an image folder, shapes, coco:ANN:IMAGES or masks:IMAGES:MASKS "
                   "(default: the checkpoint task's own: digits for classify, shapes for detect and segment)")
    p.add_argument("--task", help="task of the checkpoint (default: read from it, else classify)")
    p.add_argument("--data-root", default="data", help="where torchvision datasets live (default: data)")
    p.add_argument("--download", action="store_true", help="fetch a torchvision dataset if missing")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share when one folder is split (default: 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of that split (default: 0)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    p.add_argument("--workers", type=int, help="data loader processes (default: 0 for in-memory data, else up to 8)")
    p.add_argument("--strict", action="store_true", help="fail on unreadable images instead of skipping them")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run (default: auto)")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="mixed precision (default: none)")
    add_deploy_flags(p, "score")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_option_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..engine.inference import evaluate_checkpoint
    from . import print_json

    task, result = evaluate_checkpoint(
        args.checkpoint, args.data, task=args.task, data_root=args.data_root, download=args.download,
        val_fraction=args.val_fraction, seed=args.seed, batch_size=args.batch_size, workers=args.workers,
        strict=args.strict, device=args.device, amp=args.amp, task_options=task_options(args.option),
        deployer=deployer(args, "eval"),
    )
    if args.json:
        print_json({"metrics": result.metrics, **result.details})
    else:
        print(task.format_eval(result))
    return 0
