"""``vovnet weights``: the published pretrained weights (tags), as a table or JSON."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("weights", help="list the published pretrained weights (tags), their sources and whether cached",
                       description=__doc__)
    p.add_argument("pattern", nargs="?", help="only tags containing PATTERN (or matching it, with * wildcards)")
    p.add_argument("--json", action="store_true", help="print JSON: tag, model, source, file, urls, sha256, metric, cached, ...")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..weights.hub import cache_dir, is_cached
    from ..weights.pretrained import PRETRAINED, list_pretrained
    from . import print_json

    rows = [dict(PRETRAINED[tag].to_dict(), cached=is_cached(tag)) for tag in list_pretrained(args.pattern)]
    if args.json:
        print_json(rows)
        return 0
    header = f"{'tag':<40} {'source':<8} {'metric':>20}  {'cached':<6}  file"
    print(header)
    print("-" * len(header))
    for r in rows:
        m = r["metric"]
        if m is None:
            metric = "-"
        elif "top1" in m:
            metric = f"top-1 {m['top1']:.2f} @{m['img_size']}"
        else:
            aps = "/".join(f"{m[k]:.1f}" for k in ("mask_ap", "box_ap") if m[k] is not None)  # mask / box, COCO val2017
            pq = f" PQ {m['pq']:.1f}" if m.get("pq") is not None else ""
            metric = f"AP {aps}{pq} @{m['img_size']}"
        print(f"{r['tag']:<40} {r['source']:<8} {metric:>20}  {'yes' if r['cached'] else 'no':<6}  {r['file']}")
    print(f"cache: {cache_dir()}")
    return 0
