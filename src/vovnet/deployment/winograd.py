"""Winograd F(4x4, 3x3) convolutions (Lavin & Gray 2016) in pure PyTorch, for a detector's wide 3x3 layers.

A 3x3, stride 1, padding 1 convolution computed on 6x6 input tiles that give 4x4 output tiles: the 36
per-tile channel products replace 144 multiplies of the direct convolution, so the channel products are
4x fewer (3.1x fewer on 14x14 RoIs, which pad to 16x16). The transforms around them are extra passes over
the data that a C++ kernel would fuse, so it pays only on wide layers (>= 160 channels) and maps of at least
``MIN_TILES`` tiles (VoVNet's stages 3-5 at detection sizes, the FPN outputs and FCOS towers on P3-P5, the
SAG-Mask head's 100 RoIs); smaller maps (P6, P7) take the direct convolution.
``benchmarks/winograd_conv.py`` measures it against the oneDNN convolution the deployed model runs.

The output differs from the direct convolution by float rounding of the transforms: about 1e-5 of the
largest output in fp32 (the filter transform is done once in float64).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .fuse import OneDNNConvAct

TILE = 4  # m: output tile side
ALPHA = TILE + 2  # input tile side
# F(4x4, 3x3): Y = A^T [(G g G^T) * (B^T d B)] A.
BT = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
      [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
     [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
AT = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
# Column 1 of A^T is all ones: a value at tile entry (1, 1) of the product reaches every output of the tile.
BIAS_ENTRY = 1
CHUNK_TILES = 256  # tiles transformed and multiplied at a time: [36, 256, 256] fp32 is 9.4 MB
MIN_TILES = 24  # fewer output tiles in a call (a 10x13 map has 12) and the direct convolution is faster
MIN_CHANNELS = 160  # narrower layers: ~1.1x on large maps at 128 channels, a loss on 14x14 RoIs
# (kernel, padding, stride, dilation, groups) of the convolutions computed here.
GEOMETRY = ((3, 3), (1, 1), (1, 1), (1, 1), 1)
POST_OPS = {"none": False, "relu": True}  # OneDNNConvAct post-op -> fused ReLU


def _geometry(conv: nn.Module) -> tuple | None:
    """(kernel, padding, stride, dilation, groups) of a plain ``Conv2d`` with zero padding or an
    :class:`OneDNNConvAct`; None for anything else."""
    if type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
        return tuple(conv.kernel_size), tuple(conv.padding), tuple(conv.stride), tuple(conv.dilation), conv.groups
    if type(conv) is OneDNNConvAct:
        padding, stride, dilation, groups = conv.geometry
        return tuple(conv.weight.shape[2:]), tuple(padding), tuple(stride), tuple(dilation), groups
    return None


def _fused_relu(conv: nn.Module, act: nn.Module | None) -> bool | None:
    """Whether ``act(conv(x))`` ends in a ReLU (an :class:`OneDNNConvAct`'s own post-op counts; ``act`` is
    then None); None where the activation is anything but a ReLU or none."""
    if isinstance(conv, OneDNNConvAct):
        return POST_OPS.get(conv.post_op[0]) if act is None else None
    if act is None or type(act) is nn.Identity:
        return False
    return True if type(act) is nn.ReLU else None


def winograd_eligible(conv: nn.Module, act: nn.Module | None = None, min_channels: int = 1) -> bool:
    """Whether :class:`WinogradConv2d` can compute ``act(conv(x))``: a CPU fp32 ``Conv2d`` or
    :class:`OneDNNConvAct`, 3x3, stride 1, dilation 1, groups 1, zero padding 1, with a ReLU or no
    activation, and at least ``min_channels`` channels in and out."""
    return (_geometry(conv) == GEOMETRY and _fused_relu(conv, act) is not None
            and conv.weight.device.type == "cpu" and conv.weight.dtype == torch.float32
            and min(conv.weight.shape[:2]) >= min_channels)


class WinogradConv2d(nn.Module):
    """``act(conv(x))`` for a 3x3, stride 1, padding 1 convolution and a ReLU or no activation, computed as
    Winograd F(4x4, 3x3). CPU fp32 inference.

    ``[N, C_in, H, W] -> [N, C_out, H, W]`` for any ``N >= 0``, ``H, W >= 1`` (the map is padded to whole
    4x4 tiles and the output cropped); the output is channels_last when the input is (as in a deployed
    model), contiguous otherwise. Calls with fewer than ``min_tiles`` output tiles in all run the direct
    convolution (the module given, kept as ``direct``).

    The filter transform ``G g G^T`` is done once here, in float64. Per chunk of ``chunk_tiles`` tiles:
    the 6x6 input tiles gathered, ``B^T d B`` as two small matrix products, the 36 channel products as ONE
    ``torch.bmm`` ``[36, tiles, C_in] x [36, C_in, C_out]``, the bias added in the Winograd domain (tile
    entry (1, 1), which ``A`` spreads evenly over the output tile), ``A^T . A`` as two small products, the
    ReLU with the copy into the output.

    Args:
        conv: a ``Conv2d`` or an :class:`OneDNNConvAct` (its post-op, ReLU or none, is the activation;
            ``act`` must then be None); see :func:`winograd_eligible`.
        act: ``nn.ReLU``, ``nn.Identity`` or None.
        chunk_tiles: tiles transformed and multiplied at a time.
        min_tiles: the fewest output tiles (``N * ceil(H / 4) * ceil(W / 4)``) computed as Winograd.
    """

    def __init__(self, conv: nn.Conv2d | OneDNNConvAct, act: nn.Module | None = None, *, chunk_tiles: int = CHUNK_TILES,
                 min_tiles: int = MIN_TILES):
        super().__init__()
        if not winograd_eligible(conv, act):
            raise ValueError(f"Winograd F(4x4, 3x3) computes CPU fp32 3x3 stride-1 padding-1 convolutions with a ReLU or "
                             f"no activation, got {conv} and {act}")
        self.relu = _fused_relu(conv, act)
        self.chunk_tiles = chunk_tiles
        self.min_tiles = min_tiles
        self.direct = conv
        g = torch.tensor(G, dtype=torch.float64)
        weight = conv.weight.detach()
        u = torch.einsum("pa,qb,ocab->pqco", g, g, weight.double())  # G g G^T per (C_out, C_in) pair
        self.register_buffer("u", u.reshape(ALPHA * ALPHA, weight.shape[1], weight.shape[0]).float().contiguous())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float().clone())
        self.register_buffer("bt", torch.tensor(BT, dtype=torch.float32))
        self.register_buffer("at", torch.tensor(AT, dtype=torch.float32))

    @property
    def in_channels(self) -> int:
        return self.u.shape[1]

    @property
    def out_channels(self) -> int:
        return self.u.shape[2]

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        m, a = TILE, ALPHA
        th, tw = -(-h // m), -(-w // m)
        if 0 < n * th * tw < self.min_tiles:
            y = self.direct(x)
            return torch.relu(y) if self.relu and not isinstance(self.direct, OneDNNConvAct) else y
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
                prod = torch.bmm(v.view(a * a, -1, c), self.u)  # [a^2, tiles, C_out]
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
        return (f"{self.in_channels}, {self.out_channels}, relu={self.relu}, bias={self.bias is not None}, "
                f"min_tiles={self.min_tiles}")


def winograd_convolutions_(model: nn.Module, min_channels: int = MIN_CHANNELS, min_tiles: int = MIN_TILES) -> int:
    """Replace every eligible convolution of ``model`` by :class:`WinogradConv2d`, in place: plain ``Conv2d``
    and :class:`OneDNNConvAct` (ReLU or no post-op) that are 3x3, stride 1, dilation 1, groups 1, zero
    padding 1, CPU fp32, with at least ``min_channels`` channels in and out (at 128 channels Winograd gains
    ~1.1x on large maps and loses on 14x14 RoIs: ``benchmarks/winograd_conv.py``); each computes calls of
    fewer than ``min_tiles`` output tiles directly. A plain ``Conv2d``'s activation, if any, stays where it is.
    Returns the number replaced."""
    found = [(parent, name, child) for parent in model.modules() if not isinstance(parent, WinogradConv2d)
             for name, child in parent.named_children() if winograd_eligible(child, None, min_channels)]
    for parent, name, conv in found:
        setattr(parent, name, WinogradConv2d(conv, min_tiles=min_tiles))
    return len(found)
