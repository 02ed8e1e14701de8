"""Export to ONNX (checked by onnxruntime) and TorchScript (checked by reloading), written only when they agree.

Every export is run on random inputs, at the export shape and at the other shapes it claims to accept
(a larger batch with ``dynamic_batch``, a larger, odd size with ``dynamic_size``), and compared with
the PyTorch model: the relative error ``max|exported - torch| / max|torch|`` of every output must not
exceed ``tolerance`` (1e-4), or nothing is written and :class:`ExportError` says by how much it failed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.onnx import symbolic_helper

from ..errors import UsageError, VoVNetError
from ..io import atomic_write_bytes
from ..weights.checkpoint import preprocessing_metadata

EXPORTERS = ("dynamo", "legacy")
FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}
FEATURE_NAMES = ("stem", "stage2", "stage3", "stage4", "stage5")  # out_indices 0..4 (strides 2..32)
TOLERANCE = 1e-4


class ExportError(VoVNetError):
    """An export failed or its check against PyTorch exceeded the tolerance; nothing was written."""


@dataclass
class ExportTarget:
    """A network to export: a module returning a tensor, a list or a dict, the names of its outputs in
    order, its input size ``(C, H, W)``, and metadata to store in the file."""

    module: nn.Module
    output_names: list[str]
    input_size: tuple[int, int, int]
    metadata: dict = field(default_factory=dict)
    cameras: int = 0  # > 0: the input is [batch, cameras, C, H, W], every camera through the same network


class _TupleOutputs(nn.Module):
    """Returns the wrapped module's outputs as a tuple in a fixed order, the shape exporters handle best."""

    def __init__(self, module: nn.Module, names: list[str]):
        super().__init__()
        self.module = module
        self.names = names

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.module(x)
        if isinstance(out, torch.Tensor):
            return (out,)
        if isinstance(out, Mapping):
            return tuple(out[n] for n in self.names)
        return tuple(out)


def vovnet_target(model: nn.Module) -> ExportTarget:
    """The target for a VoVNet: logits, pooled features (``num_classes=0``) or its ``out_indices`` maps."""
    if model.features_only:
        names = [FEATURE_NAMES[i] for i in model.out_indices]
    else:
        names = ["logits" if model.num_classes else "features"]
    meta = dict(model=model.name, preprocessing=preprocessing_metadata(model.preprocessing),
                class_names=model.class_names, outputs=names)
    return ExportTarget(model, names, tuple(model.preprocessing["input_size"]), meta)


def fpn_target(backbone: nn.Module, image_size: int, meta: dict) -> ExportTarget:
    """The target for a detector's FPN backbone (``vovnet.models.backbone.FPNBackbone``): one map per level."""
    names = list(backbone.output_shape())
    info = dict(model=meta.get("model"), arch=meta.get("arch"), outputs=names,
                strides={n: s.stride for n, s in backbone.output_shape().items()})
    return ExportTarget(backbone, names, (3, image_size, image_size), info)


def multicamera_target(backbone: nn.Module, cameras: int, input_size: tuple[int, int, int], meta: dict) -> ExportTarget:
    """The target for a multi-camera feature extractor: an FPN backbone (one map per level) or a features_only VoVNet
    (its ``out_indices`` maps) taking ``[batch, cameras, C, H, W]`` and giving ``[batch, cameras, C', h, w]`` maps."""
    if hasattr(backbone, "output_shape"):
        names = list(backbone.output_shape())
        strides = {n: s.stride for n, s in backbone.output_shape().items()}
    else:
        names = [FEATURE_NAMES[i] for i in backbone.out_indices]
        strides = {n: backbone.feature_info[i]["reduction"] for n, i in zip(names, backbone.out_indices)}
    info = dict(meta, cameras=cameras, outputs=names, strides=strides)
    return ExportTarget(backbone, names, tuple(input_size), info, cameras)


def _sample_shape(target: ExportTarget, input_size: tuple[int, int, int]) -> tuple[int, ...]:
    """One sample's shape: ``(C, H, W)``, or ``(cameras, C, H, W)``."""
    return (target.cameras, *input_size) if target.cameras else tuple(input_size)


def _example(batch: int, input_size: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(seed))


def check_shapes(batch: int, input_size: tuple[int, ...], dynamic_batch: bool, dynamic_size: bool) -> list[tuple[int, ...]]:
    """Input shapes an export is checked at: the export shape, plus the shapes its dynamic axes promise.
    ``input_size``: one sample's shape, ``(C, H, W)`` or ``(cameras, C, H, W)``."""
    *lead, h, w = input_size
    shapes = [(batch, *lead, h, w)]
    if dynamic_batch or dynamic_size:
        shapes.append((batch + 1 if dynamic_batch else batch, *lead, h + 32 if dynamic_size else h, w + 17 if dynamic_size else w))
    return shapes


def relative_error(got, want) -> float:
    """``max |got - want| / max |want|`` over all elements (``want`` all zero: the absolute error)."""
    got, want = torch.as_tensor(got).double(), want.double()
    if got.shape != want.shape:
        return float("inf")
    scale = want.abs().max().item()
    return (got - want).abs().max().item() / (scale if scale > 0 else 1.0)


def _compare(run, net: nn.Module, shapes, names: list[str], tolerance: float, what: str) -> float:
    worst = 0.0
    for i, shape in enumerate(shapes):
        x = _example(shape[0], shape[1:], seed=i)
        with torch.no_grad():
            want = net(x)
        try:
            got = run(x)
        except Exception as e:  # the runtime's own error types; all mean the export is unusable
            raise ExportError(f"{what} failed to run at input {list(shape)}: {str(e).strip().splitlines()[0][:300]}") from None
        for name, g, w in zip(names, got, want):
            err = relative_error(g, w)
            if not err <= tolerance:
                raise ExportError(f"{what} differs from PyTorch on output {name!r} at input {list(shape)}: "
                                  f"relative error {err:.2e} > {tolerance:.0e}; nothing written")
            worst = max(worst, err)
    return worst


@contextlib.contextmanager
def quiet_export():
    """Exporters print progress, warn about tracing details that do not apply here and log the
    symbolic-shape solver's failed attempts (which it recovers from) as warnings."""
    solver_log = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    level = solver_log.level
    solver_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        solver_log.setLevel(level)


def _antialiased_resize_symbolic(g, input, output_size, align_corners, scale_factors):
    """ONNX form of ``aten::_upsample_bilinear2d_aa`` with an output size: one MatMul per axis, output pixel ``i``
    taking input pixel ``j`` with the weight ``max(0, 1 - |j + 0.5 - s (i + 0.5)| / max(s, 1))`` normalised per
    row (``s`` input pixels per output pixel), as PyTorch's kernel (:func:`vovnet.models.segmentation.resize.resize_matrix`)."""
    out_h, out_w = symbolic_helper._unpack_list(output_size)
    shape = g.op("Shape", input)

    def scalar(value):
        return g.op("Constant", value_t=torch.tensor(value, dtype=torch.float32))

    def matrix(axis: int, out):
        size = g.op("Cast", g.op("Gather", shape, g.op("Constant", value_t=torch.tensor(axis)), axis_i=0), to_i=1)
        out = g.op("Cast", out, to_i=1)
        scale = g.op("Div", size, out)
        centres = g.op("Mul", g.op("Add", g.op("Range", scalar(0.0), out, scalar(1.0)), scalar(0.5)), scale)
        pixels = g.op("Add", g.op("Range", scalar(0.0), size, scalar(1.0)), scalar(0.5))
        distance = g.op("Sub", g.op("Unsqueeze", pixels, g.op("Constant", value_t=torch.tensor([0]))),
                        g.op("Unsqueeze", centres, g.op("Constant", value_t=torch.tensor([1]))))
        weights = g.op("Relu", g.op("Sub", scalar(1.0), g.op("Abs", g.op("Div", distance, g.op("Max", scale, scalar(1.0))))))
        return g.op("Div", weights, g.op("ReduceSum", weights, g.op("Constant", value_t=torch.tensor([1])), keepdims_i=1))

    rows = g.op("MatMul", matrix(2, out_h), input)
    return g.op("MatMul", rows, g.op("Transpose", matrix(3, out_w), perm_i=[1, 0]))


@contextlib.contextmanager
def antialiased_resize_exportable(opset: int):
    """Within it, the TorchScript-based exporter writes PyTorch's antialiased bilinear resize (to a given size)
    as two MatMuls with PyTorch's own weights (onnxruntime's antialiased ``Resize`` differs from PyTorch's by
    up to 4 % of the value range)."""
    torch.onnx.register_custom_op_symbolic("aten::_upsample_bilinear2d_aa", _antialiased_resize_symbolic, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::_upsample_bilinear2d_aa", opset)



def _dynamic_input_axes(dynamic_batch: bool, dynamic_size: bool, rank: int = 4) -> dict[int, str]:
    axes = {0: "batch"} if dynamic_batch else {}
    if dynamic_size:
        axes.update({rank - 2: "height", rank - 1: "width"})
    return axes


def _export_dynamo(net, x, names, axes: dict[int, str], opset):
    kwargs = {}
    if axes:
        # Named Dims make torch.export solve the ceil-mode pooling constraints symbolically, which it
        # cannot; DYNAMIC dims accept any size and fail loudly where the graph would specialise.
        kwargs["dynamic_shapes"] = ({axis: torch.export.Dim.DYNAMIC for axis in axes},)
    program = torch.onnx.export(net, (x,), dynamo=True, input_names=["input"], output_names=names, opset_version=opset, **kwargs)
    proto = program.model_proto
    _rename_dims(proto, {proto.graph.input[0].type.tensor_type.shape.dim[a].dim_param: n for a, n in axes.items()})
    return proto


def _rename_dims(proto, mapping: dict[str, str]) -> None:
    """Give torch.export's symbolic dims (``s77``) the names users expect (``batch``)."""
    graph = proto.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in mapping:
                dim.dim_param = mapping[dim.dim_param]


def _export_legacy(net, x, names, axes: dict[int, str], opset):
    import onnx

    output_axes = {0: "batch"} if 0 in axes else {}
    dynamic_axes = {"input": axes, **{n: output_axes for n in names}} if axes else None
    buffer = io.BytesIO()
    torch.onnx.export(net, (x,), buffer, dynamo=False, input_names=["input"], output_names=names,
                      dynamic_axes=dynamic_axes, opset_version=opset or 17)
    return onnx.load_from_string(buffer.getvalue())


_ONNX_EXPORTERS = {"dynamo": _export_dynamo, "legacy": _export_legacy}


def _prepare(target: ExportTarget, input_size):
    input_size = tuple(input_size or target.input_size)
    if len(input_size) != 3 or min(input_size) < 1:
        raise UsageError(f"input size must be (C, H, W), got {input_size}")
    # The wrapper itself must be in eval mode too: exporters restore the mode they found, recursively.
    net = _TupleOutputs(copy.deepcopy(target.module).float().cpu(), target.output_names).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, input_size


def export_onnx(
    target: ExportTarget,
    path: str | os.PathLike,
    *,
    input_size: tuple[int, int, int] | None = None,
    batch: int = 1,
    dynamic_batch: bool = False,
    dynamic_size: bool = False,
    opset: int | None = None,
    exporter: str = "dynamo",
    check: bool = True,
    tolerance: float = TOLERANCE,
) -> dict:
    """Export ``target`` to ONNX at ``path`` (atomically, only after onnxruntime agrees with PyTorch).

    The graph takes ``input`` ``[batch, C, H, W]`` (``batch``/``height``/``width`` symbolic where
    asked) and returns ``target.output_names``. ``exporter``: ``"dynamo"`` (torch.export based, the
    maintained one) or ``"legacy"`` (TorchScript based, deprecated by PyTorch but far faster).
    Returns a report: path, exporter, opset, outputs with their shapes, the worst relative error.
    """
    if exporter not in _ONNX_EXPORTERS:
        raise UsageError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    import onnx

    net, input_size = _prepare(target, input_size)
    sample = _sample_shape(target, input_size)
    x = _example(batch, sample)
    axes = _dynamic_input_axes(dynamic_batch, dynamic_size, 1 + len(sample))
    try:
        with quiet_export():
            proto = _ONNX_EXPORTERS[exporter](net, x, list(target.output_names), axes, opset)
    except Exception as e:  # exporter internals raise many types; the message is what a user needs
        raise ExportError(f"ONNX export ({exporter}) failed: {str(e).strip().splitlines()[0][:300]}") from None
    onnx.helper.set_model_props(proto, {"vovnet": json.dumps(target.metadata, default=str)})
    data = proto.SerializeToString()
    worst = None
    if check:
        import onnxruntime as ort

        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        worst = _compare(lambda t: session.run(None, {"input": t.numpy()}), net,
                         check_shapes(batch, sample, dynamic_batch, dynamic_size), target.output_names, tolerance, "onnxruntime")
    atomic_write_bytes(path, data)
    with torch.no_grad():
        shapes = [list(o.shape) for o in net(x)]
    return dict(path=str(path), format="onnx", exporter=exporter, opset=proto.opset_import[0].version,
                input=["batch" if 0 in axes else batch, *sample[:-2], *(["height", "width"] if dynamic_size else sample[-2:])],
                outputs=dict(zip(target.output_names, shapes)), max_relative_error=worst, bytes=len(data))


def export_torchscript(
    target: ExportTarget,
    path: str | os.PathLike,
    *,
    input_size: tuple[int, int, int] | None = None,
    batch: int = 1,
    check: bool = True,
    tolerance: float = TOLERANCE,
) -> dict:
    """Trace and freeze ``target`` to a TorchScript file at ``path`` (atomically, after a reload check).

    A traced VoVNet accepts other batch sizes and image sizes; the check runs one of each. The file's
    ``vovnet.json`` extra file holds the metadata (``torch.jit.load(path, _extra_files=...)``).
    """
    net, input_size = _prepare(target, input_size)
    sample = _sample_shape(target, input_size)
    x = _example(batch, sample)
    try:
        buffer = io.BytesIO()
        with quiet_export(), torch.no_grad():
            scripted = torch.jit.freeze(torch.jit.trace(net, x))
            torch.jit.save(scripted, buffer, _extra_files={"vovnet.json": json.dumps(target.metadata, default=str)})
    except Exception as e:  # tracer internals raise many types
        raise ExportError(f"TorchScript export failed: {str(e).strip().splitlines()[0][:300]}") from None
    data = buffer.getvalue()
    worst = None
    if check:
        with quiet_export():
            reloaded = torch.jit.load(io.BytesIO(data))
        with torch.no_grad():
            worst = _compare(reloaded, net, check_shapes(batch, sample, True, True), target.output_names, tolerance, "TorchScript")
    atomic_write_bytes(path, data)
    return dict(path=str(path), format="torchscript", outputs=list(target.output_names), max_relative_error=worst, bytes=len(data))


def export_file(target: ExportTarget, path: str | os.PathLike, **options) -> dict:
    """Export by ``path``'s suffix: ``.onnx`` -> :func:`export_onnx`, ``.pt``/``.ts`` -> :func:`export_torchscript`."""
    options = {k: v for k, v in options.items() if v is not None}
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(f"{path}: unknown output format; use one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        return export_onnx(target, path, **options)
    onnx_only = sorted(k for k in ("dynamic_batch", "dynamic_size", "opset", "exporter") if options.pop(k, False))
    if onnx_only:
        raise UsageError(f"{', '.join(onnx_only)}: ONNX-only options (a TorchScript export accepts any batch and size)")
    return export_torchscript(target, path, **options)
