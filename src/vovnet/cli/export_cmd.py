"""``vovnet export``: a checkpoint -> ONNX (checked by onnxruntime) or TorchScript, written only if it matches PyTorch.

A classifier exports as is (or its feature maps with ``--features``); a detector or segmenter checkpoint exports
the whole model to ONNX (or its backbone with ``--features``)."""

from __future__ import annotations

from ..deployment.export import EXPORTERS, FORMATS


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX or TorchScript, checked against PyTorch", description=__doc__)
    p.add_argument("checkpoint", help="a vovnet checkpoint: a classifier; a detector (exported whole: one image [3, H, W] "
                   "of any size in, boxes, labels, scores[, masks[, mask_scores]] out) or a segmenter (images [N, 3, H, W] in, "
                   "logits out), each checked in onnxruntime at two image sizes")
    p.add_argument("out", help=f"output file; its suffix picks the format ({', '.join(f'{k} {v}' for k, v in FORMATS.items())})")
    p.add_argument("--features", action="store_true", help="export the feature extractor (one output per --out-indices map); "
                   "for a detector or segmenter checkpoint, its backbone's maps")
    p.add_argument("--out-indices", type=int, nargs="+", default=[1, 2, 3, 4], metavar="I",
                   help="feature maps for --features: 0 = stem (stride 2), 1..4 = stages 2..5 (default 1 2 3 4)")
    p.add_argument("--img-size", type=int, nargs="+", metavar="N", help="input H [W] (default: the checkpoint's preprocessing)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the exported graph (default 1)")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: symbolic batch size")
    p.add_argument("--dynamic-size", action="store_true", help="ONNX: symbolic height and width")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--exporter", choices=EXPORTERS, help="ONNX exporter: dynamo (default, torch.export based) or legacy (faster, deprecated)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..deployment.checkpoint_export import export_checkpoint
    from ..errors import UsageError
    from . import print_json

    if args.img_size is not None and len(args.img_size) not in (1, 2):
        raise UsageError("--img-size takes H or H W")
    if args.batch < 1:
        raise UsageError(f"--batch must be at least 1, got {args.batch}")
    input_size = None
    if args.img_size:
        h, w = (args.img_size * 2)[:2]
        input_size = (3, h, w)
    options = dict(dynamic_batch=args.dynamic_batch, dynamic_size=args.dynamic_size, opset=args.opset, exporter=args.exporter)
    report = export_checkpoint(args.checkpoint, args.out, features=args.features, out_indices=args.out_indices,
                               input_size=input_size, batch=args.batch, **{k: v for k, v in options.items() if v})
    if args.json:
        print_json(report)
    elif "checks" in report:
        checks = "; ".join(_check_line(c) for c in report["checks"])
        print(f"{report['path']}: onnx, {report['bytes'] / 2**20:.1f} MiB; outputs {', '.join(report['outputs'])}; "
              f"onnxruntime vs PyTorch: {checks}")
    else:
        err = report["max_relative_error"]
        outputs = ", ".join(f"{k} {v}" for k, v in report["outputs"].items()) if isinstance(report["outputs"], dict) else ", ".join(report["outputs"])
        print(f"{report['path']}: {report['format']}, {report['bytes'] / 2**20:.1f} MiB; outputs {outputs}; "
              f"max relative error vs PyTorch {err:.1e}")
    return 0


def _check_line(check: dict) -> str:
    size = f"{check['image'][-2]}x{check['image'][-1]}"
    if "count" not in check:  # a segmenter
        return f"{size}: relative error {check['relative_error']:.1e}"
    iou = f", mask IoU {check['mask_iou']:.4f}" if check["mask_iou"] is not None else ""
    mask_scores = f", mask score error {check['mask_score_error']:.1e}" if check.get("mask_score_error") is not None else ""
    return (f"{size}: {check['count']} detections, box error {check['box_error']:.1e}, "
            f"score error {check['score_error']:.1e}{iou}{mask_scores}")
