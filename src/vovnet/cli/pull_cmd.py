"""``vovnet pull``: download, verify and convert pretrained weights ahead of time (for machines that train offline)."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("pull", help="download, verify and convert pretrained weights into the cache", description=__doc__)
    p.add_argument("tags", nargs="+", metavar="TAG", help="tags from `vovnet weights`")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..weights.hub import pull
    from ..weights.official_detectors import pull_detector
    from ..weights.pretrained import get_pretrained

    records = [get_pretrained(tag) for tag in args.tags]  # every tag is checked before anything is downloaded
    for record in records:
        pull_tag = pull_detector if record.task == "detect" else pull  # a whole detector converts as one
        print(f"{record.tag}: {pull_tag(record.tag, progress=not args.quiet)}")
    return 0
