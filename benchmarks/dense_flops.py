"""Where a whole detector's arithmetic is, and how fast each stage runs it: multiply-accumulates per stage of
our detector as `vovnet bench --task detect` builds it (one 640x480 image resized to --img-size, every candidate
kept, the best --detections), and, given that bench's JSON, each stage's GMAC/s for our deployed and eager rows.

    vovnet bench --task detect --arch centermask --model vovnet39 --deploy --json > v39.json
    python benchmarks/dense_flops.py --arch centermask --model vovnet39 --bench v39.json [--peak-gflops 169]

MACs are counted by torch's FlopCounterMode on the eager model (convolutions, matrix multiplies and RoIAlign-free
arithmetic it knows; half its FLOPs). The deployed model computes the same convolutions, except the mask
predictor, which it runs for each detection's own class only. With ``--peak-gflops`` (the fp32 matrix-multiply
peak `vovnet bench` prints for the classifier) each rate is also given as a fraction of it.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from vovnet.bench.dense_steps import bench_image, build_detector

# Stage -> the detector's submodules whose arithmetic it holds (as the bench's stage clock splits the time).
STAGE_MODULES = {"backbone": ("backbone",), "heads": ("head",), "masks": ("mask_head", "maskiou_head")}


def stage_macs(arch: str, model: str, img_size: int, detections: int) -> dict[str, float]:
    """GMACs per stage (and in total) of one image through our eager detector."""
    torch.manual_seed(0)
    net = build_detector("vovnet", arch, model, img_size, detections)
    name = type(net).__name__
    with torch.no_grad(), FlopCounterMode(display=False, depth=None) as counter:
        net([bench_image()])
    counts = {module: sum(ops.values()) / 2e9 for module, ops in counter.get_flop_counts().items()}
    macs = {stage: sum(counts.get(f"{name}.{m}", 0.0) for m in modules) for stage, modules in STAGE_MODULES.items()}
    macs["total"] = counts[name]
    return macs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="centermask")
    p.add_argument("--model", default="vovnet39")
    p.add_argument("--img-size", type=int, default=608)
    p.add_argument("--detections", type=int, default=100)
    p.add_argument("--bench", help="a `vovnet bench --task detect --json` result for the same arch, model and size")
    p.add_argument("--peak-gflops", type=float, help="the machine's fp32 matmul peak, GFLOP/s")
    args = p.parse_args()
    macs = stage_macs(args.arch, args.model, args.img_size, args.detections)
    print(f"{args.arch} {args.model} at {args.img_size} px, {args.detections} detections: GMACs per stage")
    print(" | ".join(f"{stage} {value:.1f}" for stage, value in macs.items()))
    if not args.bench:
        return 0
    with open(args.bench) as f:
        result = json.load(f)
    rows = {"ours": (result["stages"], result["step_ms"])}
    if result.get("eager_stages"):
        rows["our eager"] = (result["eager_stages"], 1e3 / result["eager_img_s"])
    print("| row | " + " | ".join(f"{s} ms (GMAC/s)" for s in STAGE_MODULES) + " | whole ms (GMAC/s) |")
    print("|---|" + "---|" * (len(STAGE_MODULES) + 1))
    for label, (stages, image_ms) in rows.items():
        cells = []
        for stage in (*STAGE_MODULES, "total"):
            ms = image_ms if stage == "total" else stages[stage]  # whole: the median image, not a sum of medians
            rate = macs[stage] / (ms / 1e3)
            peak = f", {2 * rate / args.peak_gflops:.0%}" if args.peak_gflops else ""
            cells.append(f"{ms:.0f} ({rate:.1f}{peak})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
