"""``vovnet make-shapes``: write the embedded shapes dataset to disk in COCO format."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("make-shapes", help="write the synthetic shapes dataset as COCO-format images + annotations",
                       description=__doc__)
    p.add_argument("out", help="output folder (gets train/, val/ and annotations/{train,val}.json)")
    p.add_argument("--n", type=int, default=200, help="training images (default 200)")
    p.add_argument("--val-n", type=int, default=None, help="validation images (default n/10, at least 1; 0 = none)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0, the seed `--data shapes` uses)")
    p.add_argument("--image-size", type=int, default=None, help="image side in pixels (default 160)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..data.shapes import ShapesConfig, export_shapes
    from ..errors import UsageError
    from . import print_json

    val_n = max(args.n // 10, 1) if args.val_n is None else args.val_n
    if args.n < 1 or val_n < 0:
        raise UsageError("--n must be at least 1 and --val-n at least 0")
    config = ShapesConfig() if args.image_size is None else ShapesConfig(image_size=args.image_size)
    if config.image_size < 32:
        raise UsageError("--image-size must be at least 32")
    sizes = {"train": args.n, **({"val": val_n} if val_n else {})}
    print_json(export_shapes(args.out, sizes, seed=args.seed, config=config))
    return 0
