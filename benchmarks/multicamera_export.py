"""The six-camera VoVNetV2-99 feature extractor with its FPN (256 channels on stages 2..5, as DETR3D's neck) exported
to ONNX with a dynamic batch, checked by onnxruntime at batch 1 and 2 before it is written, then timed: PyTorch
eager against onnxruntime on the CPU, one six-camera sample, the median of ``--iters`` runs after one warm-up.

The check's tolerance is ``--tolerance`` (default 5e-3, not ``export_onnx``'s 1e-4): with random weights V2-99's maps
grow to about 7000, and PyTorch's own fp32 forward differs from its fp64 one by 2.3e-4 of that (relative to the
largest magnitude, as the check measures), so two fp32 runtimes cannot agree to 1e-4 there; the report gives the
error measured.

    .venv/bin/python benchmarks/multicamera_export.py --size 800x320 --out runs/v99_six_cameras.onnx
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    import onnxruntime as ort
    import torch

    from vovnet.deployment.export import export_onnx, multicamera_target
    from vovnet.models.backbone import BackboneConfig, fpn_backbone

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="800x320", help="WIDTHxHEIGHT per camera")
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--out", default="runs/v99_six_cameras.onnx")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=5e-3, help="onnxruntime vs PyTorch, relative to the largest magnitude")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    torch.set_num_threads(args.threads)
    fpn = fpn_backbone(BackboneConfig("vovnet99"), extra="maxpool").eval()
    target = multicamera_target(fpn, args.cameras, (3, height, width), dict(model="vovnet99"))
    started = time.perf_counter()
    report = export_onnx(target, args.out, dynamic_batch=True, tolerance=args.tolerance)
    report["export_and_check_s"] = round(time.perf_counter() - started, 1)

    x = torch.randn(1, args.cameras, 3, height, width)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(args.out, options, providers=["CPUExecutionProvider"])

    def median_seconds(run) -> float:
        run()
        times = []
        for _ in range(args.iters):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        return round(statistics.median(times), 3)

    with torch.no_grad():
        report["torch_s_per_sample"] = median_seconds(lambda: fpn(x))
    report["onnxruntime_s_per_sample"] = median_seconds(lambda: session.run(None, {"input": x.numpy()}))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
