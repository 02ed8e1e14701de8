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

# Wrappers around a state dict in the files people have: detectron2 ({"model": ...}),
# training scripts ({"state_dict": ...}), DataParallel ("module." prefixes).
_CONTAINER_KEYS = ("model", "state_dict", "model_state", "model_state_dict", "net")
_PREFIXES = ("backbone.bottom_up.", "module.", "model.", "backbone.")


def unwrap_state_dict(obj) -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded file: container keys and known prefixes removed.

    For a detectron2 checkpoint only the bottom-up backbone is kept (FPN and heads are dropped).
    """
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError("file holds no state dict (expected a dict of tensors)")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in tensors):
            if prefix == "backbone.bottom_up.":
                tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            elif all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


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

    Layouts: ``vovnet`` (ours), ``official`` (vovnet-detectron2 / centermask2 / VoVNetCP, plain or
    detectron2-wrapped), ``timm``, ``blog``; ``source="auto"`` detects it. Tensors are not copied.
    Raises CheckpointError naming the first keys that fit no template.
    """
    for name in (source, target):
        if name != "auto" and name not in LAYOUTS:
            raise UsageError(f"unknown layout {name!r}; choose from {', '.join(LAYOUTS)}")
    state_dict = unwrap_state_dict(state_dict)
    if source == "auto":
        source = detect_layout(state_dict)
    src, dst = LAYOUTS[source], LAYOUTS[target]
    units, bad = {}, []
    for key, value in state_dict.items():
        unit = src.parse(key)
        if unit is None:
            bad.append(key)
        else:
            units[unit] = value
    if bad:
        raise CheckpointError(
            f"{len(bad)} key(s) do not fit the {source} layout, first: {', '.join(bad[:3])} "
            f"(expected keys like {src.templates['layer'].format(S=src.stage_base, B=src.block_base, L=0, sub=src.subs['conv'], param='weight')})"
        )
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
