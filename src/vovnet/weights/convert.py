"""Key-name converters between the weight layouts in use.

Each layout is a table of key templates, one per kind of unit, over the same canonical
coordinates (stage ``s``, block ``b``, layer ``l``, stem conv ``i``; all 0-based here and
shifted by the layout's own numbering). Parsing a key inverts the template, so one table
serves both directions and every conversion is ``format(target, parse(source, key))``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

import torch

from ..errors import CheckpointError, UsageError
from ..models.specs import BLOG_DIALECT, MODEL_SPECS, VoVNetConfig

# Canonical unit kinds and their template placeholders.
_NUM_FIELDS = ("S", "B", "L", "I")


@dataclass(frozen=True)
class Layout:
    """One state-dict layout: key templates per unit kind, numbering offsets and sub-module names."""

    name: str
    templates: dict[str, str]
    stage_base: int = 0
    block_base: int = 0
    stem_base: int = 0
    # canonical sub-module name -> this layout's name
    subs: dict[str, str] = field(default_factory=lambda: {"conv": "conv", "norm": "norm", "conv_dw": "conv_dw", "conv_pw": "conv_pw"})
    dw_norm: str | None = None  # name of the norm inside a depthwise-separable unit, where it differs

    @cached_property
    def _patterns(self) -> list[tuple[str, re.Pattern]]:
        out = []
        for kind, template in self.templates.items():
            regex, seen = "", set()
            for literal, name in re.findall(r"([^{]*)(?:\{(\w+)\})?", template):
                regex += re.escape(literal)
                if not name:
                    continue
                if name in seen:
                    regex += f"(?P={name})"
                elif name in _NUM_FIELDS:
                    regex += rf"(?P<{name}>\d+)"
                elif name == "sub":
                    regex += r"(?P<sub>[A-Za-z0-9_]+)"
                else:  # param
                    regex += r"(?P<param>[A-Za-z_]+)"
                seen.add(name)
            out.append((kind, re.compile(regex + "$")))
        return out

    @cached_property
    def _sub_back(self) -> dict[str, str]:
        back = {v: k for k, v in self.subs.items()}
        if self.dw_norm:
            back[self.dw_norm] = "norm"
        return back

    def parse(self, key: str) -> tuple | None:
        """``key`` -> canonical ``(kind, s, b, l, i, sub, param)``, or None when no template matches."""
        for kind, pattern in self._patterns:
            m = pattern.match(key)
            if m is None:
                continue
            g = m.groupdict()
            sub = g.get("sub", "fc")
            if "sub" in g:
                sub = self._sub_back.get(sub)
                if sub is None:
                    continue
            return (
                kind,
                int(g["S"]) - self.stage_base if "S" in g else None,
                int(g["B"]) - self.block_base if "B" in g else None,
                int(g["L"]) if "L" in g else None,
                int(g["I"]) - self.stem_base if "I" in g else None,
                sub,
                g["param"],
            )
        return None

    def format(self, unit: tuple, separable: bool) -> str:
        kind, s, b, l, i, sub, param = unit
        if kind not in self.templates:
            raise CheckpointError(f"the {self.name} layout has no place for {kind} weights")
        name = self.dw_norm if (sub == "norm" and separable and self.dw_norm) else self.subs.get(sub, sub)
        values = dict(sub=name, param=param)
        if s is not None:
            values["S"] = s + self.stage_base
        if b is not None:
            values["B"] = b + self.block_base
        if l is not None:
            values["L"] = l
        if i is not None:
            values["I"] = i + self.stem_base
        return self.templates[kind].format(**values)


_BLOCK = "stages.{S}.blocks.{B}"
LAYOUTS: dict[str, Layout] = {
    "vovnet": Layout(
        "vovnet",
        {
            "stem": "stem.{I}.{sub}.{param}",
            "layer": _BLOCK + ".layers.{L}.{sub}.{param}",
            "reduction": _BLOCK + ".reduction.{sub}.{param}",
            "concat": _BLOCK + ".concat.{sub}.{param}",
            "ese": _BLOCK + ".ese.fc.{param}",
            "shortcut": _BLOCK + ".shortcut.{sub}.{param}",
            "head": "head.fc.{param}",
        },
    ),
    "timm": Layout(
        "timm",
        {
            "stem": "stem.{I}.{sub}.{param}",
            "layer": _BLOCK + ".conv_mid.{L}.{sub}.{param}",
            "reduction": _BLOCK + ".conv_reduction.{sub}.{param}",
            "concat": _BLOCK + ".conv_concat.{sub}.{param}",
            "ese": _BLOCK + ".attn.fc.{param}",
            "head": "head.fc.{param}",
        },
        subs={"conv": "conv", "norm": "bn", "conv_dw": "conv_dw", "conv_pw": "conv_pw"},
    ),
    "official": Layout(
        "official",
        {
            "stem": "stem.stem_{I}/{sub}.{param}",
            "layer": "stage{S}.OSA{S}_{B}.layers.{L}.OSA{S}_{B}_{L}/{sub}.{param}",
            "reduction": "stage{S}.OSA{S}_{B}.conv_reduction.OSA{S}_{B}_reduction_0/{sub}.{param}",
            "concat": "stage{S}.OSA{S}_{B}.concat.OSA{S}_{B}_concat/{sub}.{param}",
            "ese": "stage{S}.OSA{S}_{B}.ese.fc.{param}",
            "head": "classifier.{param}",
        },
        stage_base=2,
        block_base=1,
        stem_base=1,
        subs={"conv": "conv", "norm": "norm", "conv_dw": "dw_conv3x3", "conv_pw": "pw_conv1x1"},
        dw_norm="pw_norm",
    ),
    "blog": Layout(
        "blog",
        {
            "stem": "stage1.{I}.{sub}.{param}",
            "layer": "stage{S}.{B}._layers.{L}.{sub}.{param}",
            "concat": "stage{S}.{B}.conv1x1.{sub}.{param}",
            "ese": "stage{S}.{B}.ese.excitation.0.{param}",
            "shortcut": "stage{S}.{B}.pass_conv1x1.{sub}.{param}",
            "head": "linear.{param}",
        },
        stage_base=2,
        block_base=1,  # index 0 of each blog stage is its max-pool
        subs={"conv": "0", "norm": "1"},
    ),
}
SOURCES = ("official", "timm", "blog")

# Wrappers around the state dict in the files people have, tried in this order: detectron2 and DD3D
# ({"model": ...}), mmcv / mmdet3d and most training scripts ({"state_dict": ...}), others.
WRAPPERS = ("model", "state_dict", "model_state", "model_state_dict", "net")
# Prefixes in front of a body's keys, alone or chained (``module.backbone.``): detectron2 detectors (DD3D,
# centermask2, GeMap's flat copy: ``backbone.bottom_up.``), mmdet3d detectors (DETR3D, PETR, BEVFormer:
# ``img_backbone.``), a detectron2 FPN saved alone (``bottom_up.``), DataParallel (``module.``), mmdet
# (``backbone.``), Lightning-style wrappers (``model.``).
PREFIXES = ("backbone.bottom_up.", "img_backbone.", "bottom_up.", "module.", "backbone.", "model.")
_MAX_CHAIN = 3  # prefixes chained in front of a body at most


@dataclass(frozen=True)
class Body:
    """The VoVNet body found in a loaded file, and where it was.

    ``tensors``: its keys with ``prefix`` removed, in ``layout``; ``wrapper``: the container keys it sat under
    (``("model",)``; empty for a flat file); ``ignored``: the file's other keys (an FPN, heads), counted per
    group (``{"backbone.fpn_lateral*": 8, "fcos2d_head.*": 30}``).
    """

    tensors: dict[str, torch.Tensor]
    layout: str
    wrapper: tuple[str, ...] = ()
    prefix: str = ""
    ignored: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: the layout, what was unwrapped and stripped, what was left out."""
        parts = [f"{self.layout} layout", f"{len(self.tensors)} tensors"]
        if self.wrapper:
            parts.append("inside " + "/".join(repr(w) for w in self.wrapper))
        if self.prefix:
            parts.append(f"prefix {self.prefix} stripped")
        if self.ignored:
            total = sum(self.ignored.values())
            groups = ", ".join(f"{g} ({n})" for g, n in sorted(self.ignored.items(), key=lambda item: -item[1]))
            parts.append(f"ignored {total} keys outside the body: {groups}")
        return ", ".join(parts)


def unwrap_tensors(obj) -> tuple[dict, tuple[str, ...]]:
    """The innermost tensor dict of a loaded file and the wrapper keys around it."""
    wrapper: list[str] = []
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        key = next((k for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        wrapper.append(key)
        obj = obj[key]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        found = f"a dict with keys {', '.join(map(str, list(obj)[:5]))}" if isinstance(obj, dict) and obj else type(obj).__name__
        raise CheckpointError(f"file holds no state dict (expected a dict of tensors, found {found})")
    return tensors, tuple(wrapper)


def _prefix_chains(keys: list[str]) -> list[str]:
    """Every chain of known prefixes (``""`` included) that some key starts with."""
    chains, frontier = [""], [""]
    for _ in range(_MAX_CHAIN):
        frontier = [c + p for c in frontier for p in PREFIXES if any(k.startswith(c + p) for k in keys)]
        chains += frontier
    return list(dict.fromkeys(chains))


def _group(key: str, prefix: str) -> str:
    """The group an ignored key is reported under: its names down to the first one past ``prefix``'s own,
    trailing digits folded (``backbone.fpn_lateral3.weight`` -> ``backbone.fpn_lateral*``)."""
    names, shared = key.split("."), prefix.split(".")[:-1]
    depth = 0
    while depth < min(len(names) - 1, len(shared)) and names[depth] == shared[depth]:
        depth += 1
    head = names[: depth + 1]
    return ".".join(head[:-1] + [head[-1].rstrip("0123456789") + "*"])


def find_body(obj, source: str = "auto") -> Body:
    """The VoVNet body inside a loaded file (a state dict, wrapped or not, of a backbone or a whole detector).

    Wrappers (:data:`WRAPPERS`) are unwrapped; the chain of :data:`PREFIXES` under which the most keys fit
    ``source``'s templates (any layout's when ``"auto"``) is the body's; keys outside it are reported in
    ``ignored``. CheckpointError when no key fits (naming the top-level names found) or when keys under the
    body's prefix fit no template (naming them).
    """
    tensors, wrapper = unwrap_tensors(obj)
    keys = list(tensors)
    layouts = list(LAYOUTS) if source == "auto" else [source]
    best = (0, 0, "", layouts[0])
    for prefix in _prefix_chains(keys):
        under = [k[len(prefix):] for k in keys if k.startswith(prefix)]
        for name in layouts:
            count = sum(LAYOUTS[name].parse(k) is not None for k in under)
            best = max(best, (count, len(prefix), prefix, name), key=lambda b: b[:2])
    count, _, prefix, layout = best
    src = LAYOUTS[layout]
    example = src.templates["layer"].format(S=src.stage_base, B=src.block_base, L=0, sub=src.subs["conv"], param="weight")
    if count == 0:
        tops = sorted({k.split(".")[0] + "." for k in keys})
        where = "any known layout" if source == "auto" else f"the {source} layout"
        raise CheckpointError(
            f"{len(keys)} key(s) do not fit {where}, first: {', '.join(keys[:3])} (top-level names found: "
            f"{', '.join(tops[:8])}{', ...' if len(tops) > 8 else ''}; expected keys like {example}, bare or under "
            f"{', '.join(PREFIXES)})"
        )
    body, bad, ignored = {}, [], {}
    for key, value in tensors.items():
        if not key.startswith(prefix):
            group = _group(key, prefix)
            ignored[group] = ignored.get(group, 0) + 1
        elif src.parse(key[len(prefix):]) is None:
            bad.append(key)
        else:
            body[key[len(prefix):]] = value
    if bad:
        raise CheckpointError(
            f"{len(bad)} key(s) do not fit the {layout} layout, first: {', '.join(bad[:3])} (expected keys like {prefix}{example})"
        )
    return Body(body, layout, wrapper, prefix, ignored)


def unwrap_state_dict(obj) -> dict[str, torch.Tensor]:
    """The body's tensors inside a loaded file (:func:`find_body`): wrappers and prefixes removed, a whole
    detector's other keys (FPN, heads) left out."""
    return find_body(obj).tensors


def detect_layout(keys) -> str:
    """The layout whose templates explain the most keys (ties: vovnet, timm, official, blog)."""
    keys = list(keys)
    best, best_count = None, 0
    for name, layout in LAYOUTS.items():
        count = sum(layout.parse(k) is not None for k in keys)
        if count > best_count:
            best, best_count = name, count
    if best is None:
        raise CheckpointError(f"keys match no known layout (first keys: {', '.join(keys[:3])})")
    return best


def _separable_units(units: list[tuple]) -> set[tuple]:
    return {u[:5] for u in units if u[5] == "conv_dw"}


def convert_state_dict(state_dict: dict[str, torch.Tensor], source: str, target: str = "vovnet") -> dict[str, torch.Tensor]:
    """Rename every key of ``state_dict`` from layout ``source`` to layout ``target``.

    Layouts: ``vovnet`` (ours), ``official`` (vovnet-detectron2 / centermask2 / DD3D / VoVNetCP, plain or
    wrapped), ``timm``, ``blog``; ``source="auto"`` detects it. A wrapped or prefixed file's body is found
    first (:func:`find_body`; its other keys are left out). Tensors are not copied. Raises CheckpointError
    naming the first keys that fit no template.
    """
    for name in (source, target):
        if name != "auto" and name not in LAYOUTS:
            raise UsageError(f"unknown layout {name!r}; choose from {', '.join(LAYOUTS)}")
    body = find_body(state_dict, source)
    src, dst = LAYOUTS[body.layout], LAYOUTS[target]
    units = {src.parse(k): v for k, v in body.tensors.items()}
    separable = _separable_units(list(units))
    return {dst.format(u, u[:5] in separable): v for u, v in units.items()}


def infer_config(state_dict: dict[str, torch.Tensor], source: str = "vovnet") -> tuple[VoVNetConfig, int, int]:
    """Architecture, ``num_classes`` and ``in_chans`` read off the tensor shapes of a state dict in OUR layout.

    ``source`` names the layout the weights came from, for what shapes cannot tell: the blog's
    dialect options, timm's last-block eSE placement. A network without any eSE is V1 (no shortcut).
    """
    units = {LAYOUTS["vovnet"].parse(k): v for k, v in state_dict.items()}
    units.pop(None, None)

    def weight(kind, s=None, b=None, l=None, i=None, subs=("conv", "conv_pw")):
        for sub in subs:
            t = units.get((kind, s, b, l, i, sub, "weight"))
            if t is not None:
                return t
        raise CheckpointError(f"state dict lacks the {kind} weights (stage {s}, block {b}, layer {l}, stem {i})")

    try:
        stem_chs = tuple(weight("stem", i=i).shape[0] for i in range(3))
        in_chans = weight("stem", i=0).shape[1]
        blocks = [sorted({u[2] for u in units if u[0] == "concat" and u[1] == s}) for s in range(4)]
        blocks_per_stage = tuple(len(b) for b in blocks)
        if 0 in blocks_per_stage:
            raise CheckpointError(f"state dict has blocks per stage {blocks_per_stage}: a stage is missing")
        layers = {u[3] for u in units if u[0] == "layer" and u[1] == 0 and u[2] == 0}
        conv_chs = tuple(weight("layer", s, 0, 0).shape[0] for s in range(4))
        out_chs = tuple(weight("concat", s, 0).shape[0] for s in range(4))
    except (CheckpointError, IndexError) as e:
        raise CheckpointError(f"cannot read the architecture from the {source} weights: {e}") from None
    ese_blocks = {(u[1], u[2]) for u in units if u[0] == "ese"}
    all_blocks = {(s, b) for s in range(4) for b in blocks[s]}
    last_blocks = {(s, blocks[s][-1]) for s in range(4)}
    if not ese_blocks:
        ese, shortcut = "none", "none"
    else:
        if ese_blocks not in (all_blocks, last_blocks):
            raise CheckpointError(f"eSE weights sit on blocks {sorted(ese_blocks)}: neither every block nor the last of each stage")
        # with one block per stage, "last" and "every" are the same network; call it "every"
        ese = "every" if ese_blocks == all_blocks else "last"
        shortcut = "identity"
    if any(u[0] == "shortcut" for u in units):
        shortcut = "projection"
    config = VoVNetConfig(
        stem_chs=stem_chs,
        stage_conv_chs=conv_chs,
        stage_out_chs=out_chs,
        layers_per_block=len(layers),
        blocks_per_stage=blocks_per_stage,
        depthwise=any(u[5] == "conv_dw" for u in units),
        ese=ese,
        shortcut=shortcut,
        **({k: v for k, v in BLOG_DIALECT.items() if k not in ("ese", "shortcut")} if source == "blog" else {}),
    )
    head = units.get(("head", None, None, None, None, "fc", "weight"))
    return config, (head.shape[0] if head is not None else 0), in_chans


def match_model_name(config: VoVNetConfig) -> str | None:
    """The registered variant with the same tensor shapes as ``config`` (dialect options aside)."""
    shape_fields = ("stem_chs", "stage_conv_chs", "stage_out_chs", "layers_per_block", "blocks_per_stage", "depthwise")

    def shapes(c: VoVNetConfig) -> tuple:
        return tuple(getattr(c, f) for f in shape_fields) + ((c.ese == "none"),)

    for name, spec in MODEL_SPECS.items():
        if shapes(spec.config) == shapes(config):
            return name
    return None


def config_difference(a: VoVNetConfig, b: VoVNetConfig, fields=None) -> str:
    """``field: a != b`` for each differing field (all fields unless ``fields`` is given)."""
    da, db = a.to_dict(), b.to_dict()
    names = fields or list(da)
    return ", ".join(f"{k}: {da[k]} != {db[k]}" for k in names if da[k] != db[k])


# The files other code reads, as (layout, wrapper key, key prefix): what ``vovnet convert --to`` writes.
TARGETS: dict[str, tuple[str, str | None, str]] = {
    "official": ("official", None, ""),  # vovnet-detectron2's ImageNet backbones; VoVNetCP's init_cfg checkpoint
    "detectron2": ("official", "model", "backbone.bottom_up."),  # DD3D, centermask2: cfg.MODEL.WEIGHTS
    "mmdet3d": ("official", "state_dict", "img_backbone."),  # DETR3D, PETR, BEVFormer: load_from
    "timm": ("timm", None, ""),
    "blog": ("blog", None, ""),
}
# The options each foreign layout's network fixes (allowed values); eSE placement and shortcuts are checked
# in ``_inexpressible``. Group norm has no running statistics for a batch-norm reader to load.
_STAT_NORMS = ("batch", "frozen_batch", "sync_batch")
_LAYOUT_OPTIONS = {
    "official": dict(gate=("hard_sigmoid",), act=("relu",), stem_strides=((2, 1, 2),), pool=("ceil",), norm=_STAT_NORMS),
    "timm": dict(gate=("hard_sigmoid",), act=("relu",), stem_strides=((2, 1, 2),), pool=("ceil",), norm=_STAT_NORMS),
    "blog": {**{k: (v,) for k, v in BLOG_DIALECT.items()}, "norm": _STAT_NORMS},
}
# An eSE gate that passes its input through unchanged: fc weight 0 and bias 3, since hard-sigmoid(3) = 1.
IDENTITY_GATE_BIAS = 3.0


def _blocks(config: VoVNetConfig) -> list[tuple[int, int]]:
    return [(s, b) for s, n in enumerate(config.blocks_per_stage) for b in range(n)]


def _is_identity_gate(state_dict: dict[str, torch.Tensor], s: int, b: int) -> bool:
    weight, bias = (state_dict.get(f"{_BLOCK.format(S=s, B=b)}.ese.fc.{p}") for p in ("weight", "bias"))
    return weight is not None and bias is not None and not weight.any() and bool((bias == IDENTITY_GATE_BIAS).all())


def _inexpressible(state_dict: dict[str, torch.Tensor], config: VoVNetConfig, layout: str) -> list[str]:
    """What keeps a network with ``config`` (weights ``state_dict``) from being written in ``layout`` unchanged."""
    problems = [f"{k}={getattr(config, k)!r}" for k, allowed in _LAYOUT_OPTIONS[layout].items() if getattr(config, k) not in allowed]
    if layout == "timm" and config.ese == "every":  # timm gates the last block of a stage only
        gated = [(s, b) for s, b in _blocks(config) if b < config.blocks_per_stage[s] - 1 and not _is_identity_gate(state_dict, s, b)]
        if gated:
            problems.append(f"eSE on every block (timm's sits on the last of each stage; stage {gated[0][0] + 2} block {gated[0][1] + 1} is gated)")
    if layout in ("official", "timm"):
        v2 = config.ese != "none"
        # official V1 (VoVNet.pytorch) adds identity shortcuts that the keys cannot show; timm's V1 has none
        allowed = ("identity",) if v2 else ("identity", "none") if layout == "official" else ("none",)
        if config.shortcut not in allowed:
            problems.append(f"shortcut={config.shortcut!r} with{'' if v2 else 'out'} eSE")
    return problems


def to_target(state_dict: dict[str, torch.Tensor], config: VoVNetConfig, target: str) -> dict:
    """Our-layout weights of a network with ``config``, as the file ``target`` (a key of :data:`TARGETS`) holds them:
    renamed, prefixed and wrapped, ready for ``torch.save``. Tensors are not copied.

    Written into the official layout, timm's weights (eSE on the last block of each stage) get an identity gate on
    every other block, so the network computes exactly the same; written into timm's, such identity gates are
    dropped again. A detector's targets (``detectron2``, ``mmdet3d``) hold the body only, without a classifier.
    CheckpointError, naming what, when ``target``'s network cannot express ``config``.
    """
    if target not in TARGETS:
        raise UsageError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    layout, wrapper, prefix = TARGETS[target]
    problems = _inexpressible(state_dict, config, layout)
    if problems:
        raise CheckpointError(f"the {target} layout cannot express this network: {'; '.join(problems)}")
    state_dict = dict(state_dict)
    for s, b in _blocks(config):
        key = f"{_BLOCK.format(S=s, B=b)}.ese.fc"
        last = b == config.blocks_per_stage[s] - 1
        if layout == "official" and config.ese == "last" and not last:
            concat = state_dict[f"{_BLOCK.format(S=s, B=b)}.concat.conv.weight"]
            width = concat.shape[0]
            state_dict[f"{key}.weight"] = concat.new_zeros(width, width, 1, 1)
            state_dict[f"{key}.bias"] = concat.new_full((width,), IDENTITY_GATE_BIAS)
        elif layout == "timm" and config.ese == "every" and not last:
            state_dict.pop(f"{key}.weight", None)
            state_dict.pop(f"{key}.bias", None)
    if wrapper is not None:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
    out = {prefix + k: v for k, v in convert_state_dict(state_dict, "vovnet", layout).items()}
    return {wrapper: out} if wrapper is not None else out
