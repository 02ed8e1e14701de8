"""Memory-efficient OSA training: the backward that keeps convolution outputs only.

``VoVNet.set_grad_checkpointing(True)`` (timm's switch) runs the forward inside
:func:`recompute_cheap_activations`. Its saved-tensor hooks let autograd keep a *recipe* instead of
each activation that is a cheap function of a tensor kept anyway (batch norm + activation outputs,
cheap convs, the OSA concatenation, eSE products, shortcut sums, max-pool inputs), and the OSA block's
1x1 aggregation is summed piece by piece (:class:`PointwiseAggregation`) so the concatenation is never
built. Backward replays the recipes bit-identically; no convolution runs twice (the memory-efficient
DenseNet technique, applied to one-shot aggregation).

The layers (:mod:`vovnet.models.layers`) call :func:`conv_forward`, :func:`norm_act`, :func:`gate_channels`,
:func:`max_pool` and :class:`PointwiseAggregation`; outside the context each is the plain operation.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class _Recipe:
    """How to recompute one activation: ``fn`` over stored tensors or other recipes, under the forward's autocast."""

    __slots__ = ("autocast", "fn", "inputs")

    def __init__(self, fn: Callable[..., torch.Tensor], inputs: list, like: torch.Tensor):
        self.fn = fn
        self.inputs = inputs
        device_type = like.device.type
        self.autocast = (device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))

    def _mode(self):
        device_type, enabled, dtype = self.autocast
        return torch.no_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled)

    def materialize(self) -> torch.Tensor:
        no_grad, autocast = self._mode()
        with no_grad, autocast:
            return self.fn(*[_materialize(t) for t in self.inputs])


class _ConcatRecipe(_Recipe):
    """A channel concatenation refilled piece by piece: one recomputed piece at a time besides the result."""

    __slots__ = ("dtype", "size", "stride")

    def __init__(self, inputs: list, like: torch.Tensor):
        super().__init__(None, inputs, like)
        self.size, self.stride, self.dtype = like.shape, like.stride(), like.dtype

    def materialize(self) -> torch.Tensor:
        no_grad, autocast = self._mode()
        with no_grad, autocast:
            out = torch.empty_strided(self.size, self.stride, dtype=self.dtype, device=self.autocast[0])
            offset = 0
            for t in self.inputs:
                piece = _materialize(t)
                out.narrow(1, offset, piece.shape[1]).copy_(piece)
                offset += piece.shape[1]
        return out


def _materialize(saved) -> torch.Tensor:
    return saved.materialize() if isinstance(saved, _Recipe) else saved


class CheapActivationRecompute:
    """Keeps recipes instead of activations that are cheap functions of tensors autograd stores anyway.

    In an OSA block autograd would store, per 3x3 layer, the conv output (for the norm's backward), the
    activation (for the ReLU's and the next conv's backward) and a copy of every activation inside the
    concatenation (for the 1x1 aggregation's backward). The activations and the concatenation are a
    batch norm, a ReLU and a memory copy away from the conv outputs, so with this object's saved-tensor
    hooks only the conv outputs are stored and the rest is recomputed, bit-identically, in backward
    (the memory-efficient DenseNet technique, applied to one-shot aggregation). No convolution is run twice.
    """

    def __init__(self):
        self._recipes: dict[int, tuple[weakref.ref, _Recipe]] = {}

    def _recipe_of(self, t):
        entry = self._recipes.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else None

    def _register(self, out: torch.Tensor, recipe: _Recipe) -> None:
        key, recipes = id(out), self._recipes
        recipes[key] = (weakref.ref(out, lambda _, key=key: recipes.pop(key, None)), recipe)

    def register(self, out: torch.Tensor, fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> None:
        """Declare ``out == fn(*inputs)`` (pure, cheap): autograd will keep the recipe instead of ``out``."""
        self._register(out, _Recipe(fn, [self._recipe_of(t) or t for t in inputs], out))

    def register_concat(self, out: torch.Tensor, inputs: Sequence[torch.Tensor]) -> None:
        """Declare ``out == torch.cat(inputs, dim=1)``."""
        self._register(out, _ConcatRecipe([self._recipe_of(t) or t for t in inputs], out))

    def register_elementwise(self, out: torch.Tensor, op: str, a: torch.Tensor, b: torch.Tensor) -> None:
        """Declare ``out == torch.<op>(a, b)`` (``"add"``, ``"mul"``); where ``a`` is itself a recipe, its
        replay is a fresh tensor, so ``out`` is replayed in place on it."""
        inplace = self._recipe_of(a) is not None
        self.register(out, getattr(torch.Tensor, f"{op}_") if inplace else getattr(torch, op), a, b)

    def pack(self, t: torch.Tensor):
        return self._recipe_of(t) or t

    unpack = staticmethod(_materialize)


_ACTIVE = threading.local()


def active_recompute() -> CheapActivationRecompute | None:
    """The recompute context entered by :func:`recompute_cheap_activations` in this thread, if any, while
    autograd records (under ``torch.no_grad`` nothing is kept for backward, so there is nothing to save)."""
    return getattr(_ACTIVE, "context", None) if torch.is_grad_enabled() else None


@contextmanager
def recompute_cheap_activations() -> Iterator[CheapActivationRecompute]:
    """Forward passes inside store conv outputs only; see :class:`CheapActivationRecompute`. Re-entrant."""
    outer = getattr(_ACTIVE, "context", None)
    if outer is not None:
        yield outer
        return
    context = CheapActivationRecompute()
    _ACTIVE.context = context
    try:
        with torch.autograd.graph.saved_tensors_hooks(context.pack, context.unpack):
            yield context
    finally:
        _ACTIVE.context = None


def cat_channels(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(tensors, dim=1)``; inside :func:`recompute_cheap_activations` backward refills it instead of storing it."""
    out = torch.cat(tensors, dim=1)
    context = active_recompute()
    if context is not None:
        context.register_concat(out, tensors)
    return out


def _rows(t: torch.Tensor) -> torch.Tensor | None:
    """A channels_last ``[N, C, H, W]`` tensor as its ``[N*H*W, C]`` matrix (a view), else None."""
    rows = t.permute(0, 2, 3, 1)
    return rows.view(-1, t.shape[1]) if rows.is_contiguous() else None


def _accumulate_pointwise_(acc: torch.Tensor | None, piece: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``acc += conv1x1(piece, weight)`` in place (one matrix multiply-add on channels_last tensors);
    a new tensor when ``acc`` is None."""
    if acc is None:
        return F.conv2d(piece, weight)
    acc_rows, piece_rows = _rows(acc), _rows(piece)
    if acc_rows is not None and piece_rows is not None:
        acc_rows.addmm_(piece_rows, weight.flatten(1).t())
    else:
        acc.add_(F.conv2d(piece, weight))
    return acc


class _AggregationPiece(torch.autograd.Function):
    """Piece ``k`` of an OSA block's 1x1 aggregation ``y = conv1x1(cat(pieces), weight)``, added into the
    running sum ``acc`` in place: forward never builds the concatenation; backward passes ``dL/dy`` on and
    returns piece ``k``'s input and weight gradients, refilling the piece from its recipe.

    One node per piece, created just after the piece itself, puts each piece's gradient in autograd's
    order between the layers that made it, so only one piece's gradient (not all of them) is alive at a
    time in backward.
    """

    @staticmethod
    def forward(ctx, acc: torch.Tensor | None, piece: torch.Tensor, weight_part: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(piece, weight_part)  # through the recompute hooks: a recipe where there is one
        if acc is not None:
            ctx.mark_dirty(acc)
        return _accumulate_pointwise_(acc, piece, weight_part)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        piece, weight_part = ctx.saved_tensors
        mask = (ctx.needs_input_grad[1], ctx.needs_input_grad[2], False)
        grad_piece, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad_y, piece, weight_part, None, (1, 1), (0, 0), (1, 1), False, (0, 0), 1, mask)
        return grad_y if ctx.needs_input_grad[0] else None, grad_piece, grad_weight


class PointwiseAggregation:
    """``unit(torch.cat(pieces, dim=1))`` for an OSA block's 1x1 conv-norm-act ``unit``, built piece by piece.

    Under :func:`recompute_cheap_activations` (for a bias-free 1x1 conv, without autocast) the conv's
    output is summed piece by piece as the pieces are made, without the concatenation, and backward
    refills and differentiates one piece at a time, each just before the layers that made it: the widest
    transient of an OSA block is one piece and its gradient. Elsewhere it is the plain concatenation and
    ``unit``. Call :meth:`add` with each piece as soon as it exists, then :meth:`result`.
    """

    def __init__(self, unit: nn.Module, like: torch.Tensor):
        self.unit = unit
        self.pieces: list[torch.Tensor] = []
        self.offset = 0
        self.sum: torch.Tensor | None = None
        conv = getattr(unit, "conv", None)  # a conv-norm-act unit (layers.ConvNormAct) has conv, norm and act
        self.chained = (
            active_recompute() is not None and isinstance(conv, nn.Conv2d) and hasattr(unit, "norm") and hasattr(unit, "act")
            and conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.bias is None and conv.groups == 1
            and not torch.is_autocast_enabled(like.device.type)
        )

    def add(self, piece: torch.Tensor) -> None:
        if not self.chained:
            self.pieces.append(piece)
            return
        part = self.unit.conv.weight.narrow(1, self.offset, piece.shape[1])
        self.sum = _AggregationPiece.apply(self.sum, piece, part)
        self.offset += piece.shape[1]

    def result(self) -> torch.Tensor:
        if not self.chained:
            return self.unit(cat_channels(self.pieces))
        return norm_act(self.sum, self.unit.norm, self.unit.act)


class _MaxPoolRecomputed(torch.autograd.Function):
    """Max pooling that keeps its input (a recipe, under :func:`recompute_cheap_activations`) and no int64
    indices: backward finds the maxima again."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.args = (pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
        return F.max_pool2d(x, *ctx.args)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        args = [_pair(a) for a in ctx.args[:4]] + [ctx.args[4]]
        _, indices = torch.ops.aten.max_pool2d_with_indices(x, *args)
        return torch.ops.aten.max_pool2d_with_indices_backward(grad_out, x, *args, indices), None


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def max_pool(x: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:
    """``pool(x)``; inside :func:`recompute_cheap_activations` it keeps no indices and lets ``x`` be a recipe."""
    if active_recompute() is None or pool.return_indices:
        return pool(x)
    return _MaxPoolRecomputed.apply(x, pool)


def _side_effect_free(norm: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``norm``'s forward without its running-statistics update (None where that cannot be had locally)."""
    if isinstance(norm, nn.SyncBatchNorm):
        return None  # its batch statistics need the other processes
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        batch_stats = norm.training or norm.running_mean is None
        mean, var = (None, None) if batch_stats else (norm.running_mean, norm.running_var)
        return lambda t: F.batch_norm(t, mean, var, norm.weight, norm.bias, batch_stats, 0.0, norm.eps)
    return norm


# A convolution with at most this many multiply-adds per output (a 3-channel stem conv, a depthwise conv)
# is cheaper to run again in backward than to keep.
CHEAP_CONV_MACS = 32


def conv_forward(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``; inside :func:`recompute_cheap_activations` a cheap conv's output is kept as a recipe."""
    out = conv(x)
    context = active_recompute()
    if context is not None and conv.in_channels // conv.groups * math.prod(conv.kernel_size) <= CHEAP_CONV_MACS:
        context.register(out, conv._conv_forward, x, conv.weight, conv.bias)
    return out


def norm_act(x: torch.Tensor, norm: nn.Module, act: nn.Module) -> torch.Tensor:
    """``act(norm(x))``; inside :func:`recompute_cheap_activations` autograd keeps ``x`` instead of the result."""
    context = active_recompute()
    replay = _side_effect_free(norm) if context is not None else None
    if replay is None:
        return act(norm(x))
    normed = norm(x)
    # Register before the activation runs: it saves its tensor for backward as it runs. An in-place
    # activation turns ``normed`` itself into the result.
    inplace = getattr(act, "inplace", False)
    context.register(normed, (lambda t: act(replay(t))) if inplace else replay, x)
    y = act(normed)
    if not inplace:
        context.register(y, lambda t: act(replay(t)), x)
    return y


class _ChannelGate(torch.autograd.Function):
    """``x * z`` for a map ``x [N, C, H, W]`` and per-channel gates ``z [N, C, 1, 1]`` whose backward takes the
    gates' gradient one sample at a time instead of through a full-size product."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, z)  # x: a recipe under recompute_cheap_activations
        return x * z

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, z = ctx.saved_tensors
        grad_x = grad_out * z if ctx.needs_input_grad[0] else None
        grad_z = None
        if ctx.needs_input_grad[1]:
            grad_z = torch.stack([(g * xs).sum((1, 2)) for g, xs in zip(grad_out, x)]).view_as(z).to(z.dtype)
        return grad_x, grad_z


def gate_channels(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``x * z`` for a map ``x [N, C, H, W]`` and per-channel gates ``z [N, C, 1, 1]`` (eSE); inside
    :func:`recompute_cheap_activations` the gated map is kept as a recipe, a product away from what is kept anyway."""
    context = active_recompute()
    if context is None:
        return x * z
    out = _ChannelGate.apply(x, z)
    context.register_elementwise(out, "mul", x, z)
    return out
