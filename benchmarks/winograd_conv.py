"""Go / no-go for Winograd 3x3 convolutions in the deployed CenterMask V-39: the oneDNN fused conv + ReLU the
deployed model runs today (:class:`~vovnet.deployment.fuse.OneDNNConvAct`, channels_last) against pure-PyTorch
Winograd F(2x2,3x3) and F(4x4,3x3) (Lavin & Gray 2016), interleaved in one process.

    python benchmarks/winograd_conv.py [--threads 2 1] [--iters 9] [--chunk-tiles 128] [--shapes NxCxHxW ...]

Shapes: the FCOS towers' P3, P4 and P5 maps at 608 px and the SAG-Mask head's 100 RoIs (256 channels in and
out, 3x3, stride 1, padding 1, bias, ReLU). Prints the median ms per shape and subject, each Winograd
variant's speed-up over oneDNN and its largest error relative to the largest output of ``F.conv2d`` in
float64.

The Winograd here: filter transform once (float64); per chunk of 128 tiles, the input tiles gathered, the
1-D transforms along rows then columns as two small matrix products, the alpha^2 channel products as ONE
``torch.bmm`` ``[alpha^2, tiles, C_in] x [alpha^2, C_in, C_out]``, the bias added in the Winograd domain
(tile entry (1, 1), which ``A`` spreads evenly over the output tile), the output transform as two small
products, the ReLU with the copy into the output.

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
from torch import Tensor, nn

from vovnet.deployment.fuse import OneDNNConvAct

SHAPES = ([1, 256, 76, 102], [1, 256, 38, 51], [1, 256, 19, 26], [100, 256, 14, 14])

# Lavin & Gray 2016, the transform matrices of F(m x m, 3 x 3), keyed by m.
TRANSFORMS: dict[int, dict[str, list[list[float]]]] = {
    2: dict(
        BT=[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        G=[[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        AT=[[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: dict(
        BT=[[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        G=[[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
           [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        AT=[[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}
# In both, column 1 of A^T is all ones: a value at tile entry (1, 1) of the product reaches every output of the tile.
BIAS_ENTRY = 1
CHUNK_TILES = 128  # tiles transformed and multiplied at a time: [36, 128, 256] fp32 is 4.7 MB


class WinogradConv2d(nn.Module):
    """A 3x3, stride 1, padding 1 convolution (+ optional ReLU) computed as Winograd F(m x m, 3 x 3).

    ``[N, C_in, H, W] -> [N, C_out, H, W]`` for any ``H, W >= 1`` (the map is padded to whole tiles); the
    output is channels_last when the input is, contiguous otherwise. CPU fp32 inference only.

    Args:
        weight: ``[C_out, C_in, 3, 3]``; bias: ``[C_out]`` or None.
        relu: apply a ReLU to the output.
        tile: ``m``, 2 or 4.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, *, relu: bool = False, tile: int = 4,
                 chunk_tiles: int = CHUNK_TILES):
        super().__init__()
        if tuple(weight.shape[2:]) != (3, 3):
            raise ValueError(f"Winograd F(m, 3) needs a 3x3 kernel, got {tuple(weight.shape[2:])}")
        t = {k: torch.tensor(v, dtype=torch.float64) for k, v in TRANSFORMS[tile].items()}
        self.tile, self.relu, self.chunk_tiles = tile, relu, chunk_tiles
        alpha = tile + 2
        u = torch.einsum("pa,qb,ocab->pqco", t["G"], t["G"], weight.detach().double())
        self.register_buffer("u", u.reshape(alpha * alpha, weight.shape[1], weight.shape[0]).float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.register_buffer("bt", t["BT"].float())
        self.register_buffer("at", t["AT"].float())

    @property
    def in_channels(self) -> int:
        return self.u.shape[1]

    @property
    def out_channels(self) -> int:
        return self.u.shape[2]

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        m = self.tile
        a = m + 2
        th, tw = -(-h // m), -(-w // m)
        xp = x.new_empty(n, th * m + 2, tw * m + 2, c)  # NHWC, padded by 1 and to whole tiles
        xp[:, 1:h + 1, 1:w + 1] = x.permute(0, 2, 3, 1)
        for border in (xp[:, :1], xp[:, h + 1:], xp[:, :, :1], xp[:, :, w + 1:]):
            border.zero_()
        hp, wp = xp.shape[1], xp.shape[2]
        tiles = xp.as_strided((n, th, tw, a, a, c), (hp * wp * c, m * wp * c, m * c, wp * c, c, 1))
        out = x.new_empty(n, th * m, tw * m, self.out_channels)
        rows = max(1, min(th, self.chunk_tiles // tw))  # tile rows per chunk, and whole images where they are small
        images = max(1, self.chunk_tiles // (th * tw)) if rows == th else 1
        for n0 in range(0, n, images):
            for r0 in range(0, th, rows):
                part = tiles[n0:n0 + images, r0:r0 + rows]
                nb, rb = part.shape[:2]
                d = part.permute(3, 4, 0, 1, 2, 5).reshape(a, -1)  # [a rows, a cols * tiles * C]
                v = torch.matmul(self.bt, torch.mm(self.bt, d).view(a, a, -1))  # B^T d B, [a, a, tiles * C]
                prod = torch.bmm(v.view(a * a, -1, c), self.u)  # [alpha^2, tiles, C_out]
                if self.bias is not None:
                    prod[BIAS_ENTRY * a + BIAS_ENTRY] += self.bias
                y = torch.mm(self.at, torch.matmul(self.at, prod.view(a, a, -1)).view(a, -1))  # A^T . A, [m, m * tiles * C_out]
                block = out[n0:n0 + nb, r0 * m:(r0 + rb) * m].view(nb, rb, m, tw, m, -1)
                tile_major = y.view(m, m, nb, rb, tw, -1).permute(2, 3, 0, 4, 1, 5)
                if self.relu:
                    torch.clamp_min(tile_major, 0, out=block)
                else:
                    block.copy_(tile_major)
        out = out[:, :h, :w].permute(0, 3, 1, 2)
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return out.contiguous(memory_format=layout)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, tile={self.tile}, relu={self.relu}, bias={self.bias is not None}"

def median_ms(fn, x, iters: int) -> float:
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--iters", type=int, default=9)
    p.add_argument("--chunk-tiles", type=int, default=CHUNK_TILES)
    p.add_argument("--shapes", nargs="+", default=["x".join(map(str, s)) for s in SHAPES], help="NxCxHxW")
    args = p.parse_args()
    torch.manual_seed(0)
    print(torch.__version__, "chunk tiles", args.chunk_tiles)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for text in args.shapes:
            shape = [int(v) for v in text.split("x")]
            conv = nn.Conv2d(shape[1], shape[1], 3, padding=1).eval()
            x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
            subjects = {"onednn": OneDNNConvAct(conv, nn.ReLU())}
            subjects.update({f"F({m},3)": WinogradConv2d(conv.weight, conv.bias, relu=True, tile=m, chunk_tiles=args.chunk_tiles) for m in (2, 4)})
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
