"""The package's structure as a user and a maintainer rely on it: light import, imports pointing down,
stateless tasks, one checkpoint path."""

import ast
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import vovnet
from vovnet import create_detector, create_segmenter, load_detector, load_segmenter, save_detector, save_segmenter
from vovnet.engine.task import task_config
from vovnet.errors import CheckpointError, UsageError
from vovnet.tasks.classification import ClassificationTask
from vovnet.tasks.detection import DetectionTask
from vovnet.tasks.segmentation import SegmentationTask

SRC = Path(vovnet.__file__).parent
# Each layer may import only the layers before it (and the package's leaf modules: errors, io, records).
LAYERS = ["models", "weights", "factory", "data", "engine", "tasks", "deployment", "bench", "cli"]
LEAVES = {"errors", "io", "records"}
# Imports the layer order would allow but the design does not: deploy and export transform a network and call
# its own stages, so they need neither the training glue nor the benchmark harness.
FORBIDDEN = {"deployment": {"tasks", "bench", "engine"}}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(top-level vovnet package imported, inside a function?)`` for each vovnet import of ``path``."""
    tree = ast.parse(path.read_text())
    package = path.relative_to(SRC).parts[:-1]
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    nested = {id(n) for f in functions for n in ast.walk(f) if isinstance(n, ast.ImportFrom)}
    result = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 0:
            parts = (node.module or "").split(".")
            if parts[0] == "vovnet" and len(parts) > 1:
                result.append((parts[1], id(node) in nested))
            continue
        target = list(package[: len(package) - (node.level - 1)]) + (node.module.split(".") if node.module else [])
        result.append((target[0] if target else node.names[0].name, id(node) in nested))
    return result


def test_every_import_points_down_and_none_hides_in_a_function():
    checked = 0
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).parts
        own = parts[0].removesuffix(".py")
        if own not in LAYERS:
            continue
        for target, inside in _imports(path):
            checked += 1
            if target == own or target in LEAVES:
                continue
            assert target in LAYERS, (path, target)
            assert LAYERS.index(target) < LAYERS.index(own), f"{path.relative_to(SRC)} imports {target}: an upward import"
            assert not inside or own == "cli", f"{path.relative_to(SRC)} imports {target} inside a function"
            assert target not in FORBIDDEN.get(own, ()), f"{path.relative_to(SRC)} imports {target}"
    assert checked > 100


def test_networks_live_in_models_and_build_without_files():
    """Every network (an nn.Module subclass with a forward) of the package is defined under models/, beside nothing
    that reads files or weights (the layer rule keeps weights, data, engine and tasks out of models/)."""
    outside = []
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).parts
        # deployment's modules are transformed layers of a network; data's, batch augmentations (as torchvision's transforms)
        if parts[0] in ("models", "deployment", "data"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            module = isinstance(node, ast.ClassDef) and any(ast.unparse(b).endswith("Module") for b in node.bases)
            if module and any(isinstance(item, ast.FunctionDef) and item.name == "forward" for item in node.body):
                outside.append(f"{path.relative_to(SRC)}:{node.name}")
    assert outside == []


def _private_members(root: Path) -> set[str]:
    """Names of the private methods and attributes that classes under ``root`` define."""
    names = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name.startswith("_") and not item.name.startswith("__"):
                        names.add(item.name)
    return names


def test_no_module_outside_the_networks_calls_their_private_members():
    private = _private_members(SRC / "models")
    assert {"_decode", "_mask_losses"} <= private  # the check sees the detectors' internals
    calls = []
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).parts[0] == "models":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in private and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                calls.append(f"{path.relative_to(SRC)}:{node.lineno} .{node.attr}")
    assert calls == []


@pytest.mark.slow  # a fresh interpreter
def test_import_vovnet_loads_no_task_data_or_engine_module():
    code = "import sys, vovnet; print(sorted(m for m in sys.modules if m.startswith('vovnet')))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.replace("'", '"'))
    assert "vovnet.models" in loaded and "vovnet.weights" in loaded and "vovnet.deployment" in loaded
    heavy = [m for m in loaded if m.split(".")[1:2] and m.split(".")[1] in ("tasks", "data", "engine", "cli")]
    assert heavy == []
    # task-level names still resolve, on first use
    assert vovnet.SAGMaskHead.__module__ == "vovnet.models.detection.sag_mask"


def _state(task) -> dict:
    return copy.deepcopy({k: v for k, v in vars(task).items() if k != "config"}), copy.deepcopy(task.config)


@pytest.mark.parametrize("name", ["classify", "segment", "detect"])
def test_tasks_hold_no_state_that_calls_change(name, tmp_path):
    task_cls = {"classify": ClassificationTask, "segment": SegmentationTask, "detect": DetectionTask}[name]
    task = task_cls(task_config(task=name))
    if name == "classify":
        path = vovnet.save_checkpoint(vovnet.create_model("vovnet19_slim_dw", num_classes=3), tmp_path / "c.safetensors",
                                      eval_input=dict(img_size=40, crop_pct=1.0))
    elif name == "segment":
        model = create_segmenter("fpn_semantic", "vovnet19_slim_dw", ["bg", "a"], fpn_channels=16, head_channels=16)
        path = save_segmenter(model, tmp_path / "s.safetensors", dice_weight=0.25)
    else:
        path = save_detector(create_detector("fcos", "vovnet19_slim_dw", ["a"], image_size=64), tmp_path / "d.safetensors")
    before = _state(task)
    model, meta = task.load_weights(path)
    assert not model.training
    assert _state(task)[0].keys() == before[0].keys()
    assert repr(_state(task)) == repr(before)


def test_training_losses_return_per_sample_losses_instead_of_setting_them():
    task = ClassificationTask(task_config(task="classify"))
    model = vovnet.create_model("vovnet19_slim_dw", num_classes=4)
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 3])
    step = task.training_losses(model, (images, labels), epoch=0)
    assert step.count == 3 and step.per_sample.shape == (3,)
    assert step.losses["loss"].item() == pytest.approx(step.per_sample.mean().item(), rel=1e-6)
    assert not hasattr(task, "sample_losses")


def test_segmentation_defaults_are_one_set():
    task = SegmentationTask(task_config(task="segment"))
    model = create_segmenter("fpn_semantic", "vovnet19_slim_dw", ["bg", "a"])
    for key in ("fpn_channels", "fpn_p2_conv", "head_channels", "deeplab_stride"):
        assert task.options[key] == getattr(model.config, key), key


def test_the_segmentation_checkpoint_options_apply_unless_given(tmp_path):
    from vovnet.engine.inference import _task_for

    model = create_segmenter("fpn_semantic", "vovnet19_slim_dw", ["bg", "a"], fpn_channels=16, head_channels=16)
    path = save_segmenter(model, tmp_path / "s.safetensors", dice_weight=0.25)
    assert _task_for(path, None, data=None).options["dice_weight"] == 0.25
    assert _task_for(path, None, data=None, task_options={"dice_weight": 2.0}).options["dice_weight"] == 2.0


def _rewrite_metadata(path: Path, change) -> Path:
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["vovnet"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(meta, tensors)
    out = path.with_name("changed.safetensors")
    save_file(tensors, str(out), metadata={"vovnet": json.dumps(meta)})
    return out


def test_unknown_config_fields_are_refused_by_name_in_every_record(tmp_path):
    seg = save_segmenter(create_segmenter("fpn_semantic", "vovnet19_slim_dw", ["bg", "a"], fpn_channels=16, head_channels=16),
                         tmp_path / "s.safetensors")
    with pytest.raises(CheckpointError, match="unknown segmenter field.*: shiny"):
        load_segmenter(_rewrite_metadata(seg, lambda m, t: m["segmenter"].update(shiny=1)))
    det = save_detector(create_detector("fcos", "vovnet19_slim_dw", ["a"], image_size=64), tmp_path / "d.safetensors")
    with pytest.raises(CheckpointError, match="unknown detector field.*: shiny"):
        load_detector(_rewrite_metadata(det, lambda m, t: m["detector"].update(shiny=1)))
    with pytest.raises(ValueError, match="unknown architecture field.*: shiny"):
        vovnet.VoVNetConfig.from_dict({**vovnet.create_model("vovnet19_slim_dw").config.to_dict(), "shiny": 1})
    from vovnet.engine.config import TrainConfig

    with pytest.raises(UsageError, match="unknown training setting.*: shiny"):
        TrainConfig.from_dict({"shiny": 1})


def test_the_exact_loader_names_missing_unexpected_and_misshaped_keys_for_every_task(tmp_path):
    seg = save_segmenter(create_segmenter("fpn_semantic", "vovnet19_slim_dw", ["bg", "a"], fpn_channels=16, head_channels=16),
                         tmp_path / "s.safetensors")

    def damage(meta, tensors):
        key = next(k for k in tensors if k.endswith("weight") and tensors[k].dim() == 4)
        tensors[key] = tensors[key][:1]
        tensors["extra.weight"] = torch.zeros(1)
        del tensors[next(k for k in tensors if k.endswith("running_var"))]

    with pytest.raises(CheckpointError) as info:
        load_segmenter(_rewrite_metadata(seg, damage))
    message = str(info.value)
    assert "1 missing" in message and "1 unexpected (first: extra.weight)" in message and "1 mis-shaped" in message
    assert "\n" not in message
    det = save_detector(create_detector("fcos", "vovnet19_slim_dw", ["a"], image_size=64), tmp_path / "d.safetensors")
    with pytest.raises(CheckpointError, match="1 missing.*1 unexpected.*1 mis-shaped"):
        load_detector(_rewrite_metadata(det, damage))
