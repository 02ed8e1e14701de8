"""Our checkpoint format: safetensors weights plus one JSON metadata entry that rebuilds the network.

Nothing here unpickles: our files are safetensors; foreign ``.pth`` files go through
``torch.load(weights_only=True)``. Every reader first looks at a file's first bytes (:func:`file_kind`), so a
JPEG, a text file or an empty file given as a checkpoint is named as such in one line.
"""

from __future__ import annotations

import json
import os
import re
import struct
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import CheckpointError, UsageError
from ..io import atomic_open, atomic_write_bytes
from ..models.registry import build_model, get_spec
from ..models.specs import VoVNetConfig
from ..models.vovnet import VoVNet
from .convert import (
    LAYOUTS,
    TARGETS,
    Body,
    config_difference,
    convert_state_dict,
    find_body,
    infer_config,
    match_model_name,
    to_target,
)
from .pretrained import DETECTRON2_INPUT

FORMAT = "vovnet-checkpoint/1"
META_KEY = "vovnet"


class IgnoredWeightsWarning(UserWarning):
    """A foreign file held keys outside the backbone body (a detector's FPN and heads) that were not loaded."""


def checkpoint_metadata(model: VoVNet, class_names: Sequence[str] | None = None, **extra: Any) -> dict:
    """What a checkpoint records besides the weights."""
    names = list(class_names) if class_names is not None else model.class_names
    return {
        "format": FORMAT,
        "model": model.name,
        "config": model.config.to_dict(),
        "num_classes": model.num_classes,
        "in_chans": model.in_chans,
        "drop_rate": model.drop_rate,
        "class_names": names,
        "preprocessing": preprocessing_metadata(model.preprocessing),
        **extra,
    }


def preprocessing_metadata(preprocessing: dict) -> dict:
    """``model.preprocessing`` as JSON values (tuples become lists; channel order, scale, crop and
    interpolation stay as they are)."""
    return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in preprocessing.items()}


def preprocessing_from_metadata(record: dict) -> dict:
    """The inverse of :func:`preprocessing_metadata`: lists back to tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}


def write_checkpoint(path: str | os.PathLike, model: torch.nn.Module, meta: dict) -> Path:
    """The one checkpoint writer of every task: ``model``'s state dict as safetensors with ``meta`` (JSON)
    under the ``vovnet`` metadata key, written atomically (a reader never sees half a file)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    return atomic_write_bytes(path, st_save(tensors, metadata={META_KEY: json.dumps(meta)}))


def load_exact(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], *, source: str, what: str,
               optional: Callable[[str], bool] = lambda key: False) -> None:
    """The one exact loader: every key of ``model`` from ``state_dict`` and nothing else, shapes equal.

    Batch-norm counters may be absent on either side (FrozenBatchNorm2d keeps none); ``optional(key)``
    marks model keys that may be missing (a classifier left fresh). Otherwise CheckpointError names the
    first missing, unexpected and mis-shaped keys, with their counts.
    """
    own = model.state_dict()
    usable = {k: v for k, v in state_dict.items() if not (k.endswith("num_batches_tracked") and k not in own)}
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked") and not optional(k)]
    unexpected = [k for k in usable if k not in own]
    misshaped = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in usable.items() if k in own and own[k].shape != v.shape]
    problems = [
        f"{len(keys)} {label} (first: {', '.join(keys[:3])})"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{source} does not fit {what}: {'; '.join(problems)}. Expected the vovnet layout, e.g. {next(iter(own))}")
    model.load_state_dict(usable, strict=False)


def save_checkpoint(model: VoVNet, path: str | os.PathLike, *, class_names: Sequence[str] | None = None, **extra: Any) -> Path:
    """Write ``model``'s weights and metadata to ``path`` (safetensors), atomically.

    ``extra`` keys (JSON-serialisable) are stored in the metadata too.
    """
    return write_checkpoint(path, model, checkpoint_metadata(model, class_names, **extra))


# First bytes of the files a checkpoint can be: a zip (torch.save since 1.6), a pickle (protocol 2+, older
# torch.save), a safetensors header (8-byte little-endian length, then '{').
_ZIP, _PICKLE = b"PK\x03\x04", b"\x80"
HEAD_SIZE = 64  # bytes file_kind needs to look at
# First bytes of files that end up where a checkpoint belongs, and what to call them.
_SIGNATURES = (
    (b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip file"),
    (b"BZh", "a bzip2 file"), (b"\xfd7zXZ\x00", "an xz file"), (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x7fELF", "an executable"), (b"\x93NUMPY", "a NumPy array (.npy)"), (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"\x08", "an ONNX model (or another protobuf file)"),
)
_TEXT_BYTES = bytes(range(32, 127)) + b"\t\n\r\f" + bytes(range(128, 256))


def _is_safetensors(head: bytes) -> bool:
    return len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] > 1


def file_kind(head: bytes) -> str | None:
    """What a file whose first bytes are ``head`` (``HEAD_SIZE`` of them, or all of a shorter file) is when it
    cannot be a checkpoint: ``"a JPEG image"``, ``"a text file"``, ``"an empty file"``, ...; None when it starts
    like one (safetensors, a torch.save zip or a pickle)."""
    if _is_safetensors(head) or head.startswith((_ZIP, _PICKLE)):
        return None
    if not head:
        return "an empty file"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "a WebP image"
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    if not head.translate(None, _TEXT_BYTES):  # printable ASCII, whitespace or UTF-8 bytes only
        text = head.lstrip().lower()
        if text.startswith((b"<!doctype html", b"<html")) or b"<html" in text:
            return "a web page (HTML)"
        if text.startswith((b"{", b"[")):
            return "a JSON file"
        return "a text file"
    return f"a file of unknown kind (it starts with {head[:8].hex(' ')})"


def read_head(path: str | os.PathLike) -> bytes:
    """The first ``HEAD_SIZE`` bytes of ``path``; CheckpointError (naming the file) when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(HEAD_SIZE)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None


def check_file_kind(path: str | os.PathLike, what: str = "checkpoint") -> None:
    """CheckpointError ``"{path}: a JPEG image, not a checkpoint"`` (``what``) when the file's first bytes show
    it cannot be one (:func:`file_kind`)."""
    kind = file_kind(read_head(path))
    if kind is not None:
        raise CheckpointError(f"{path}: {kind}, not a {what}")


def torch_load_weights(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` after :func:`check_file_kind`; CheckpointError,
    one line naming the file, for whatever torch refuses (a TorchScript export, pickled Python objects)."""
    check_file_kind(path)
    try:
        with warnings.catch_warnings():  # torch's notes (a TorchScript archive, a pickle protocol) become the one line below
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for non-checkpoints; all mean the same to a user
        text = str(e).strip()
        if "TorchScript archive" in text:
            raise CheckpointError(f"{path}: a TorchScript model, not a checkpoint") from None
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if refused:
            reason = f"it pickles Python objects ({refused.group(1)}) that weights-only loading refuses to run"
        elif "WeightsUnpickler error:" in text:  # torch's paragraph; its one specific line follows this marker
            detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
            reason = f"weights-only loading refuses it ({detail[:200]})"
        else:
            first = re.sub(r"^\[enforce fail at [^\]]*\]\W*", "", text.splitlines()[0]) if text else ""  # c10's prefix
            reason = first[:200] or type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (safetensors or weights-only .pth): {reason}") from None


def _read_file(path: str | os.PathLike) -> tuple[Any, dict | None]:
    """``(contents, metadata)``: our checkpoint's tensors and metadata, or a foreign file's loaded object (a
    tensor dict, wrapped or not) and None."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    if _is_safetensors(data[:9]):
        try:
            header_len = struct.unpack("<Q", data[:8])[0]
            header = json.loads(data[8 : 8 + header_len])
            tensors = st_load(data)
        except (SafetensorError, ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({str(e).splitlines()[0]})") from None
        meta_json = (header.get("__metadata__") or {}).get(META_KEY)
        meta = json.loads(meta_json) if meta_json else None
        return tensors, meta
    return torch_load_weights(path), None


def find_file_body(path: str | os.PathLike, obj: Any, source: str = "auto") -> Body:
    """:func:`~vovnet.weights.convert.find_body` of a foreign file's contents, its errors naming the file."""
    try:
        return find_body(obj, source)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None]:
    """``(state_dict, metadata)`` of any supported file; metadata is None for foreign files, whose state dict is
    the VoVNet body found in them (:func:`~vovnet.weights.convert.find_body`: wrappers and prefixes removed, a
    detector's other keys left out).

    Raises CheckpointError (one line, naming the file) for a missing, truncated or foreign-format file, saying
    what a file that cannot be a checkpoint seems to be (:func:`torch_load_weights`).
    """
    obj, meta = _read_file(path)
    if meta is not None:
        return obj, meta
    return find_file_body(path, obj).tensors, None


def model_from_metadata(meta: dict, **kwargs) -> VoVNet:
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"unsupported checkpoint format {meta.get('format')!r} (this version reads {FORMAT})")
    options = dict(num_classes=meta["num_classes"], in_chans=meta["in_chans"], drop_rate=meta.get("drop_rate", 0.0))
    options.update(kwargs)
    if options.get("features_only"):
        options.pop("num_classes")
    model = build_model(meta["model"], VoVNetConfig.from_dict(meta["config"]), **options)
    if meta.get("class_names") and model.num_classes == meta["num_classes"]:
        model.class_names = list(meta["class_names"])
    if meta.get("preprocessing"):
        model.preprocessing = preprocessing_from_metadata(meta["preprocessing"])
    return model


def load_checkpoint(path: str | os.PathLike, *, features_only: bool = False, out_indices: Sequence[int] = (1, 2, 3, 4)) -> VoVNet:
    """Rebuild the exact network stored in one of our checkpoints and load its weights (eval mode)."""
    state_dict, meta = read_checkpoint(path)
    if meta is None:
        raise CheckpointError(f"{path}: no vovnet metadata; convert it first with `vovnet convert --from official|timm|blog`")
    model = model_from_metadata(meta, features_only=features_only, out_indices=out_indices)
    load_weights(model, state_dict, source=str(path))
    return model.eval()


def load_weights(model: VoVNet, state_dict: dict[str, torch.Tensor], *, source: str = "state dict", allow_new_head: bool = False) -> None:
    """Load our-layout ``state_dict`` into ``model``, exactly.

    Keys of parts the model does not build (the head and later stages of a features_only model) are
    ignored; with ``allow_new_head`` a missing or differently sized classifier keeps the model's own.
    Otherwise CheckpointError names the first missing, unexpected or mis-shaped keys.
    """
    own = model.state_dict()
    built_stages = len(model.stages)
    usable = {}
    for k, v in state_dict.items():
        unit = LAYOUTS["vovnet"].parse(k)
        if unit is not None and unit[0] == "head" and (model.head is None or allow_new_head):
            if model.head is None or k not in own or own[k].shape != v.shape:
                continue
        if unit is not None and unit[1] is not None and unit[1] >= built_stages and model.features_only:
            continue
        usable[k] = v
    load_exact(model, usable, source=source, what=model.name, optional=lambda k: allow_new_head and k.startswith("head."))


def load_pretrained(model: VoVNet, path: str | os.PathLike) -> str:
    """Load backbone weights from any supported file into ``model``; a classifier of another size is left fresh.

    A foreign file's body is found in any layout, wrapper and prefix (:func:`find_file_body`); a whole detector's
    other keys are left out with an :class:`IgnoredWeightsWarning` naming them. Every weight of the body must
    load (CheckpointError naming the missing ones otherwise). Returns one line saying what was loaded.
    """
    obj, meta = _read_file(path)
    if meta is None:
        body = find_file_body(path, obj)
        state_dict = convert_state_dict(body.tensors, body.layout, "vovnet")
        try:
            config, _, _ = infer_config(state_dict, body.layout)
        except CheckpointError:  # an incomplete body: load_weights names what is missing
            config = model.config
        diff = config_difference(config, model.config, ["ese", "shortcut", "act", "gate", "stem_strides", "pool"])
        if diff:
            raise CheckpointError(f"{path} ({body.layout} layout) was trained with other options than {model.name}: {diff}")
        found = body.summary()
    else:
        state_dict, found = obj, f"vovnet checkpoint, {len(obj)} tensors"
    load_weights(model, state_dict, source=str(path), allow_new_head=True)
    if meta and meta.get("class_names") and meta.get("num_classes") == model.num_classes:
        model.class_names = list(meta["class_names"])
    if meta and meta.get("preprocessing"):  # the input the weights were trained on follows them
        model.preprocessing = preprocessing_from_metadata(meta["preprocessing"])
    line = f"{path}: {model.name} loaded from {found}"
    if meta is None and body.ignored:
        warnings.warn(line, IgnoredWeightsWarning, stacklevel=2)
    return line


def _foreign_model(src: str | os.PathLike, source: str, model_name: str | None, options: dict | None = None
                   ) -> tuple[VoVNet, Body]:
    """The network a foreign file's body describes, its weights loaded exactly, and the body found."""
    obj, meta = _read_file(src)
    if meta is not None:
        raise CheckpointError(f"{src} is already a vovnet checkpoint")
    body = find_file_body(src, obj, source)
    ours = convert_state_dict(body.tensors, body.layout, "vovnet")
    try:
        config, num_classes, in_chans = infer_config(ours, body.layout)
    except CheckpointError as e:
        raise CheckpointError(f"{src}: {e}") from None
    if model_name is not None:
        spec = get_spec(model_name)
        shape_fields = ["stem_chs", "stage_conv_chs", "stage_out_chs", "layers_per_block", "blocks_per_stage", "depthwise"]
        diff = config_difference(config, spec.config, shape_fields)
        if diff:
            raise CheckpointError(f"{src} does not hold a {model_name}: {diff}")
        name = model_name
    else:
        name = match_model_name(config)
        if name is None:
            raise CheckpointError(f"{src}: shapes match no registered model; pass --model NAME")
    if options:
        try:
            config = config.replace(**options)
        except (TypeError, ValueError) as e:
            raise UsageError(f"dialect options {options}: {e}") from None
    model = build_model(name, config, num_classes=num_classes, in_chans=in_chans)
    load_weights(model, ours, source=str(src))
    return model, body


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, source: str = "auto", model_name: str | None = None, *,
                 options: dict | None = None, preprocessing: dict | None = None, **extra: Any) -> dict:
    """Convert a foreign checkpoint to ours at ``dst`` (atomically). Returns a summary dict; its ``found`` is one
    line saying where the body was (layout, wrapper, prefix) and which of the file's keys were left out.

    ``source``: the layout (``"auto"``: read off the keys); a whole detector's body is found under its prefix
    (:func:`find_file_body`). ``model_name`` is checked against the shapes; when left out it is read off them.
    ``options``: dialect options the shapes cannot show (VoVNet.pytorch's V1 identity shortcuts), applied to the
    config read off them. ``preprocessing``: the input the weights expect (default: detectron2's for the
    official layout, the model's default otherwise). ``extra`` keys go into the metadata.
    """
    model, body = _foreign_model(src, source, model_name, options)
    if preprocessing is not None:
        model.preprocessing = dict(preprocessing)
    elif body.layout == "official":
        model.preprocessing = DETECTRON2_INPUT.replace(input_size=(model.in_chans, 224, 224)).to_dict()
    save_checkpoint(model, dst, converted_from=body.layout, **extra)
    return dict(model=model.name, source=body.layout, num_classes=model.num_classes, config=model.config.to_dict(),
                keys=len(body.tensors), dst=str(dst), found=body.summary())


def write_target(src: str | os.PathLike, dst: str | os.PathLike, target: str, source: str = "auto",
                 model_name: str | None = None) -> dict:
    """Write the weights of ``src`` (our checkpoint, or any foreign file :func:`convert_file` reads) as the file
    ``target`` reads (a key of :data:`~vovnet.weights.convert.TARGETS`: ``official``, ``detectron2``, ``mmdet3d``,
    ``timm``, ``blog``; ``vovnet`` is :func:`convert_file`) at ``dst``, a ``.pth`` written atomically with
    ``torch.save``. Returns a summary dict. CheckpointError, before anything is written, when ``target`` cannot
    express the network (:func:`~vovnet.weights.convert.to_target`)."""
    if target == "vovnet":
        return convert_file(src, dst, source, model_name)
    if target not in TARGETS:
        raise UsageError(f"unknown target {target!r}; choose from vovnet, {', '.join(TARGETS)}")
    obj, meta = _read_file(src)
    if meta is not None:
        if source not in ("auto", "vovnet"):
            raise CheckpointError(f"{src} is a vovnet checkpoint, not {source} weights")
        model = model_from_metadata(meta)
        load_weights(model, obj, source=str(src))
        found = f"vovnet checkpoint, {len(obj)} tensors"
    else:
        model, body = _foreign_model(src, source, model_name)
        found = body.summary()
    out = to_target(model.state_dict(), model.config, target)
    with atomic_open(dst) as f:
        torch.save(out, f)
    layout, wrapper, prefix = TARGETS[target]
    return dict(model=model.name, target=target, layout=layout, wrapper=wrapper, prefix=prefix,
                keys=len(out[wrapper] if wrapper else out), dst=str(dst), found=found)
