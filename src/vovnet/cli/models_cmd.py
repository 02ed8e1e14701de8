"""``vovnet models``: the registered VoVNet / VoVNetV2 backbone variants, as a table or JSON: parameters, GMACs at
--img-size and the channels of the feature maps (strides 2, 4, 8, 16, 32)."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the registered backbone variants with params, GMACs and feature channels",
                       description=__doc__)
    p.add_argument("--img-size", type=int, default=224, help="input size for the GMACs column (default 224)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..models.summary import model_table
    from . import print_json

    rows = model_table(args.img_size)
    if args.json:
        print_json(rows)
        return 0
    header = f"{'name':<18} {'version':<7} {'official':<22} {'params':>12} {'GMACs@' + str(args.img_size):>10}  feature channels (strides 2,4,8,16,32)"
    print(header)
    print("-" * len(header))
    for r in rows:
        chans = ",".join(str(c) for c in r["feature_channels"])
        print(f"{r['name']:<18} {r['version']:<7} {r['official_name']:<22} {r['params']:>12,} {r['gmacs']:>10.2f}  {chans}")
    return 0
