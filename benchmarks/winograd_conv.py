"""Go / no-go for Winograd 3x3 convolutions in the deployed CenterMask V-39: the oneDNN fused conv + ReLU the
deployed model runs today (:class:`~vovnet.deployment.fuse.OneDNNConvAct`, channels_last) against pure-PyTorch
Winograd F(4x4,3x3) (Lavin & Gray 2016; :class:`vovnet.deployment.winograd.WinogradConv2d`), interleaved in one
process.

    python benchmarks/winograd_conv.py [--threads 2 1] [--iters 9] [--chunk-tiles 128] [--shapes NxCxHxW ...]
    python benchmarks/winograd_conv.py --whole [--threads 2 1] [--iters 9]

Shapes: the FCOS towers' P3, P4 and P5 maps at 608 px and the SAG-Mask head's 100 RoIs (256 channels in and
out, 3x3, stride 1, padding 1, bias, ReLU). Prints the median ms per shape and subject, each Winograd
variant's speed-up over oneDNN and its largest error relative to the largest output of ``F.conv2d`` in
float64.

``--whole`` measures the whole model instead: CenterMask V-39 built as ``vovnet bench`` builds it (608 px,
100 detections, its bench image), eager, ``deploy_detector(model)`` and ``deploy_detector(model,
winograd=True)`` (the heads' wide 3x3 convs as Winograd), each deployed copy's detections compared with
eager's (:func:`~vovnet.deployment.detection.compare_detections`), then the three timed interleaved, one
image per subject each round: median ms and the speed-ups of deploy and deploy+winograd over eager.

The Winograd: filter transform once (float64); per chunk of 128 tiles, the input tiles gathered, the 1-D
transforms along rows then columns as two small matrix products, the alpha^2 channel products as ONE
``torch.bmm`` ``[alpha^2, tiles, C_in] x [alpha^2, C_in, C_out]``, the bias added in the Winograd domain
(tile entry (1, 1), which ``A`` spreads evenly over the output tile), the output transform as two small
products, the ReLU with the copy into the output.

(The F(2x2,3x3) column below comes from an earlier copy of this script that held both tile sizes; the package
keeps F(4x4,3x3) only.)

Figures (AMD EPYC, 2 cores, AVX2 FMA, no AVX-512; torch 2.14.1; another engineer's training using ~1.3
cores meanwhile), ``python benchmarks/winograd_conv.py``, median ms, speed-up over oneDNN, max rel. error:

    threads  shape             oneDNN   F(2,3)              F(4,3)
    2        1x256x76x102      141.2    1410.2 (0.10x)      432.4 (0.33x)
    2        1x256x38x51        38.9     377.1 (0.10x)      180.1 (0.22x)
    2        1x256x19x26        15.9     140.4 (0.11x)       91.6 (0.17x)
    2        100x256x14x14     357.8    3646.1 (0.10x)     1108.2 (0.32x)
    1        1x256x76x102      132.1     132.3 (1.00x)       79.5 (1.66x)
    1        1x256x38x51        28.1      27.9 (1.01x)       20.0 (1.41x)
    1        1x256x19x26         9.0      10.8 (0.83x)        8.1 (1.11x)
    1        100x256x14x14     336.3     345.5 (0.97x)      262.1 (1.28x)
    errors: oneDNN 2e-6, F(2,3) 5e-7, F(4,3) 8e-6 .. 1e-5

Other runs of the same: 1 thread F(4,3) 1.50-1.71x on P3, 1.07-1.29x on the RoIs; 2 threads with
``OMP_WAIT_POLICY=PASSIVE`` (a diagnosis, not a setting to ship) 1.51x on P3, 1.35x on P4, 1.00x on the RoIs.
With two threads on a busy machine every one of Winograd's ~9 operations per chunk waits at libgomp's
barrier for a descheduled thread, where oneDNN's convolution is one parallel region.

Where the time goes (1 thread, F(4,3), ms per call): RoIs 262 = channel products 150 (7.55 GFLOP at ~50
GFLOPS: MKL's sgemm on these shapes runs at 40-55 GFLOPS, the direct oneDNN convolution at ~69) + input
gather and transform 75 + output transform, ReLU, crop 37; P3 90 = 55 + 31 + 4. The 14x14 RoIs also pad to
16x16 (4x4 tiles of 4): 1,600 tiles where 1,225 would cover them, so the products are only 3.1x fewer.

Verdict: no-go. The gate (>= ~1.25x over oneDNN on the P3 map AND the 100 RoIs, two threads) fails: at two
threads Winograd is 3x slower here, and even one thread gives the RoIs 1.07-1.29x, inside the noise of the
1.25x bar. Only the larger tower maps (P3, P4) gain clearly, and only per core. Doing better needs fused
transforms (one pass over the data each way, as oneDNN's or NNPACK's Winograd kernels in C++), which
pure PyTorch cannot express.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from vovnet.deployment.dense_steps import bench_image, build_detector
from vovnet.deployment.detection import compare_detections, deploy_detector
from vovnet.deployment.fuse import OneDNNConvAct
from vovnet.deployment.winograd import CHUNK_TILES, WinogradConv2d

SHAPES = ([1, 256, 76, 102], [1, 256, 38, 51], [1, 256, 19, 26], [100, 256, 14, 14])


def median_ms(fn, x, iters: int) -> float:
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def convolutions(args: argparse.Namespace) -> None:
    """Per shape: oneDNN conv + ReLU against Winograd F(4,3), median ms and max rel. error vs float64."""
    print(torch.__version__, "chunk tiles", args.chunk_tiles)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for text in args.shapes:
            shape = [int(v) for v in text.split("x")]
            conv = nn.Conv2d(shape[1], shape[1], 3, padding=1).eval()
            x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
            subjects = {"onednn": OneDNNConvAct(conv, nn.ReLU()),
                        "F(4,3)": WinogradConv2d(conv, nn.ReLU(), chunk_tiles=args.chunk_tiles)}
            with torch.inference_mode():
                want = F.relu(F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1))
                errors = {k: ((f(x).double() - want).abs().max() / want.abs().max()).item() for k, f in subjects.items()}
                times = {k: [] for k in subjects}
                for _ in range(args.iters):
                    for k, f in subjects.items():
                        times[k].append(median_ms(f, x, 1))
            med = {k: statistics.median(v) for k, v in times.items()}
            line = ", ".join(f"{k} {med[k]:.1f} ms (x{med['onednn'] / med[k]:.2f}, err {errors[k]:.0e})" for k in subjects)
            print(f"{threads} threads {text}: {line}", flush=True)


def whole_detector(args: argparse.Namespace) -> None:
    """CenterMask V-39 as ``vovnet bench`` builds it (608 px, 100 detections, the bench image): eager, deployed,
    and deployed with ``winograd=True``; each deployed copy checked against eager, then the three timed
    interleaved, one image per subject each round."""
    print(torch.__version__, "CenterMask V-39, 608 px, 100 detections")
    model = build_detector("vovnet", "centermask", "vovnet39", 608, 100)
    image = bench_image()
    subjects = {"eager": model, "deploy": deploy_detector(model), "deploy+winograd": deploy_detector(model, winograd=True)}
    for threads in args.threads:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            want = model([image])[0]
            for name in ("deploy", "deploy+winograd"):  # also the warm-up (oneDNN packs its weights on the first call)
                agreement = compare_detections(want, subjects[name]([image])[0])
                print(f"{threads} threads {name} vs eager: {agreement} ({'ok' if agreement.ok() else 'DISAGREES'})", flush=True)
            times = {k: [] for k in subjects}
            for _ in range(args.iters):
                for k, f in subjects.items():
                    times[k].append(median_ms(f, [image], 1))
        med = {k: statistics.median(v) for k, v in times.items()}
        line = ", ".join(f"{k} {med[k]:.0f} ms" for k in subjects)
        print(f"{threads} threads, median of {args.iters}: {line}; deploy/eager x{med['eager'] / med['deploy']:.2f}, "
              f"deploy+winograd/eager x{med['eager'] / med['deploy+winograd']:.2f}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--iters", type=int, default=9)
    p.add_argument("--chunk-tiles", type=int, default=CHUNK_TILES)
    p.add_argument("--shapes", nargs="+", default=["x".join(map(str, s)) for s in SHAPES], help="NxCxHxW")
    p.add_argument("--whole", action="store_true", help="time the whole CenterMask V-39 instead: eager, deploy, deploy+winograd")
    args = p.parse_args()
    torch.manual_seed(0)
    (whole_detector if args.whole else convolutions)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
