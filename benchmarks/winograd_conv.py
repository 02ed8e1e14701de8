"""Winograd 3x3 convolutions against the direct ones in the deployed CenterMask V-39: the oneDNN fused conv + ReLU
(:class:`~vovnet.deployment.fuse.OneDNNConvAct`, channels_last) against pure-PyTorch Winograd F(4x4,3x3) (Lavin &
Gray 2016; :class:`vovnet.deployment.winograd.WinogradConv2d`), interleaved in one process.

    python benchmarks/winograd_conv.py [--threads 2 1] [--iters 9] [--chunk-tiles 256] [--shapes NxCxHxW ...]
    python benchmarks/winograd_conv.py --layers [--threads 2] [--iters 7]
    python benchmarks/winograd_conv.py --whole [--threads 2 1] [--iters 9]

Shapes: CenterMask V-39's 3x3 stride-1 layers at 608 px (a 640x480 image: 152x208 at stride 4): VoVNet stage 2
(128 channels, left to the direct convolution), stages 3-5 (160, 192, 224), the FPN outputs and FCOS towers on P3-P7
(256), and the SAG-Mask head's 100 RoIs (256 channels, 14x14); input channels = output channels, bias, ReLU.
Prints the median ms per shape and subject, Winograd's speed-up over oneDNN and its largest error relative to the
largest output of ``F.conv2d`` in float64. Winograd is timed at every map size here (``min_tiles=0``); in a deployed
model maps of fewer than ``MIN_TILES`` tiles (P6, P7) take the direct convolution.

``--layers`` times every layer Winograd could take in the deployed model (3x3, stride 1, >= 128 channels) on
its own input, captured from one forward pass on the bench image (the FCOS towers once per pyramid level).

``--whole`` measures the whole model instead: CenterMask V-39 built as ``vovnet bench`` builds it (608 px,
100 detections, its bench image), eager, ``deploy_detector(model, winograd=False)`` and ``deploy_detector(model)``
(Winograd, the default on the CPU in fp32), each deployed copy's detections compared with eager's
(:func:`~vovnet.deployment.detection.compare_detections`), then the three timed interleaved, one image per
subject each round: median ms and the speed-ups of both deployed copies over eager.

The Winograd: filter transform once (float64); per chunk of 256 tiles, the input tiles gathered, the 1-D
transforms along rows then columns as two small matrix products, the alpha^2 channel products as ONE
``torch.bmm`` ``[alpha^2, tiles, C_in] x [alpha^2, C_in, C_out]``, the bias added in the Winograd domain
(tile entry (1, 1), which ``A`` spreads evenly over the output tile), the output transform as two small
products, the ReLU with the copy into the output.

Figures (AMD EPYC, 2 cores, AVX2 FMA, no AVX-512; torch 2.14.1; idle machine; 2026-11-29),
``python benchmarks/winograd_conv.py --layers --threads 2 --iters 7``, median ms:

    layer                      input                 direct      Winograd
    stage 2 (x5)               1x128x152x208         62-78       53-63     1.09-1.22x (0.93-1.05x in another
                                                                           run: left direct, MIN_CHANNELS 160)
    stage 3 (x5)               1x{256,160}x76x104    25-42       18-31     1.20-1.35x
    stage 4 (x10)              1x{512,768,192}x38x52 8-32        5-20      1.35-1.70x
    stage 5 (x10)              1x{768,1024,224}x19x26 3-14       3-10      1.04-1.42x
    FPN outputs P3, P4, P5     1x256x...             54.2, 16.1, 3.7   34.8, 9.7, 3.2
    FCOS towers P3 (x8)        1x256x76x104          55-83       35-46     1.53-1.78x
    FCOS towers P4 (x8)        1x256x38x52           14-23       9-13      1.47-1.89x
    FCOS towers P5 (x8)        1x256x19x26           4-6         4-5       1.02-1.32x
    FCOS towers P6, P7 (x8)    1x256x{10x13,5x7}     0.6-2.1     1.4-2.5   0.39-0.88x (left direct, MIN_TILES 24)
    SAG-Mask (x4)              100x256x14x14         156-170     127-140   1.14-1.33x
    errors (``--shapes`` mode): oneDNN 1e-6 .. 2e-6, F(4,3) 7e-6 .. 1e-5

Wider layers and larger maps gain most: the channel products are 4x fewer but the transforms are extra passes
over the data (a C++ kernel would fuse them), and MKL's batched sgemm on ``[256 tiles, C] x [C, C]`` runs at 35-55
GMAC/s where oneDNN's direct 3x3 convolution reaches ~67 (84.5 is the machine's fp32 peak). An earlier,
loaded run of this script (another engineer's training using ~1.3 cores) measured Winograd 3x slower than
oneDNN at two threads: each of its ~9 operations per chunk waits at libgomp's barrier for a descheduled thread,
where oneDNN's convolution is one parallel region. On a busy machine ``winograd=False`` may be the faster one;
``vovnet bench --task detect --deploy --no-winograd`` measures it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from vovnet.bench.dense_steps import bench_image, build_detector
from vovnet.deployment.detection import compare_detections
from vovnet.deployment.fuse import OneDNNConvAct
from vovnet.deployment.optimize import deploy_detector
from vovnet.deployment.winograd import CHUNK_TILES, WinogradConv2d, winograd_eligible

SHAPES = ([1, 128, 152, 208], [1, 160, 76, 104], [1, 192, 38, 52], [1, 224, 19, 26], [1, 256, 76, 104], [1, 256, 38, 52],
          [1, 256, 19, 26], [1, 256, 10, 13], [1, 256, 5, 7], [100, 256, 14, 14])


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
                        "F(4,3)": WinogradConv2d(conv, nn.ReLU(), chunk_tiles=args.chunk_tiles, min_tiles=0)}
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


def layers(args: argparse.Namespace) -> None:
    """Every 3x3 stride-1 layer of >= 128 channels of the deployed CenterMask V-39 on its own captured input: the
    direct oneDNN call against Winograd at any map size, interleaved."""
    torch.set_num_threads(args.threads[0])
    deployed = deploy_detector(build_detector("vovnet", "centermask", "vovnet39", 608, 100), winograd=False)
    calls = []
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: calls.append((name, m, i[0].clone())))
             for name, m in deployed.model.named_modules() if winograd_eligible(m, None, 128)]
    deployed([bench_image()])
    for hook in hooks:
        hook.remove()
    with torch.inference_mode():
        for name, direct, x in calls:
            winograd = WinogradConv2d(direct, chunk_tiles=args.chunk_tiles, min_tiles=0)
            times = {"direct": [], "winograd": []}
            for f in (direct, winograd):
                f(x)
            for _ in range(args.iters):
                for k, f in (("direct", direct), ("winograd", winograd)):
                    times[k].append(median_ms(f, x, 1))
            d, w = statistics.median(times["direct"]), statistics.median(times["winograd"])
            print(f"{name:42s} {'x'.join(map(str, x.shape)):15s} direct {d:6.1f} ms  winograd {w:6.1f} ms  x{d / w:.2f}", flush=True)


def whole_detector(args: argparse.Namespace) -> None:
    """CenterMask V-39 as ``vovnet bench`` builds it (608 px, 100 detections, the bench image): eager, deployed,
    and deployed with ``winograd=True``; each deployed copy checked against eager, then the three timed
    interleaved, one image per subject each round."""
    print(torch.__version__, "CenterMask V-39, 608 px, 100 detections")
    model = build_detector("vovnet", "centermask", "vovnet39", 608, 100)
    image = bench_image()
    subjects = {"eager": model, "deploy-direct": deploy_detector(model, winograd=False), "deploy": deploy_detector(model)}
    for threads in args.threads:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            want = model([image])[0]
            for name in ("deploy-direct", "deploy"):  # also the warm-up (oneDNN packs its weights on the first call)
                agreement = compare_detections(want, subjects[name]([image])[0])
                print(f"{threads} threads {name} vs eager: {agreement} ({'ok' if agreement.ok() else 'DISAGREES'})", flush=True)
            times = {k: [] for k in subjects}
            for _ in range(args.iters):
                for k, f in subjects.items():
                    times[k].append(median_ms(f, [image], 1))
        med = {k: statistics.median(v) for k, v in times.items()}
        line = ", ".join(f"{k} {med[k]:.0f} ms" for k in subjects)
        print(f"{threads} threads, median of {args.iters}: {line}; deploy-direct/eager x{med['eager'] / med['deploy-direct']:.2f}, "
              f"deploy/eager x{med['eager'] / med['deploy']:.2f}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--iters", type=int, default=9)
    p.add_argument("--chunk-tiles", type=int, default=CHUNK_TILES)
    p.add_argument("--shapes", nargs="+", default=["x".join(map(str, s)) for s in SHAPES], help="NxCxHxW")
    p.add_argument("--layers", action="store_true", help="time each layer of the deployed CenterMask V-39 on its own input")
    p.add_argument("--whole", action="store_true", help="time the whole CenterMask V-39 instead: eager, deploy-direct, deploy (Winograd)")
    args = p.parse_args()
    torch.manual_seed(0)
    (whole_detector if args.whole else layers if args.layers else convolutions)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
