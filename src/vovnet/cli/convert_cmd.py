"""``vovnet convert``: official / timm / blog weights, bare or inside a whole detector's file (DD3D, DETR3D,
PETR, BEVFormer), -> our safetensors checkpoint; a whole centermask2 detector (``--from official``) -> our
detector checkpoint; ``--to official|detectron2|mmdet3d|timm|blog``: any of them -> the file that code reads."""

from __future__ import annotations

from ..weights.convert import SOURCES, TARGETS


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert official, timm or blog backbone weights, or a centermask2 detector, "
                       "to a vovnet checkpoint", description=__doc__)
    p.add_argument("--from", dest="source", default="auto", choices=("auto", *SOURCES),
                   help="layout of SRC (default: read off its keys)")
    p.add_argument("--to", dest="target", default="vovnet", choices=("vovnet", *TARGETS),
                   help="what to write: our checkpoint (default); official keys (flat); detectron2 ({model: "
                        "backbone.bottom_up.*}); mmdet3d ({state_dict: img_backbone.*}, for load_from); timm; blog")
    p.add_argument("--model", help="variant name (default: read off the tensor shapes)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--backbone-only", action="store_true", help="of a centermask2 detector, convert the backbone alone (a classification checkpoint)"
    )
    p.add_argument("src", help="source file (.pth via torch.load(weights_only=True), or .safetensors)")
    p.add_argument("dst", help="output file, written atomically: .safetensors for vovnet, a torch.save .pth otherwise")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..models.registry import get_spec
    from ..weights.checkpoint import convert_file, write_target
    from ..weights.official_detectors import convert_official_file
    from . import print_json

    if args.model is not None:
        get_spec(args.model)  # an unknown name is a usage error, before any file is read
    if args.target != "vovnet":
        info = write_target(args.src, args.dst, args.target, args.source, args.model)
    elif args.source == "official":  # a whole centermask2 detector converts as one
        info = convert_official_file(args.src, args.dst, backbone_only=args.backbone_only, model_name=args.model)
    else:
        info = convert_file(args.src, args.dst, args.source, args.model)
    if args.json:
        print_json(info)
    elif args.target != "vovnet":
        print(f"{info['dst']}: {info['model']} as {info['target']} weights, {info['keys']} tensors; read {info['found']}")
    elif info["source"] == "centermask2":
        kind = "CenterMask-Lite" if info["lite"] else "CenterMask"
        print(f"{info['dst']}: {kind} on {info['model']} from centermask2, {info['keys']} tensors, {info['num_classes']} classes")
    else:
        print(f"{info['dst']}: {info['model']}, {info['num_classes']} classes; read {info['found']}")
    return 0
