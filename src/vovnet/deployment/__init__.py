"""Deployment: the optimised inference copy, exports checked against PyTorch, and benchmarks against timm.

``vovnet.deploy(model, precision=...)`` (:func:`deploy`, also exported at the top level) folds batch
norm, picks the memory layout and precision the machine runs fastest, fuses convolutions with their
activations and optionally compiles; ``export_onnx`` / ``export_torchscript`` write files only after
onnxruntime (or a TorchScript reload) agrees with PyTorch; :mod:`vovnet.bench.bench` measures ours
against timm in one interleaved run. Optional imports (onnx, onnxruntime, timm) happen only when used.
"""

import importlib

from .export import ExportError, ExportTarget, export_file, export_onnx, export_torchscript, vovnet_target
from .fuse import OneDNNConvAct, fold_batch_norm_, fuse_ese_, fuse_onednn_
from .optimize import DeployedModel, DeployWarning, deploy, is_detector
from .precision import PRECISIONS, resolve_precision, unsupported_reason

__all__ = [
    "ExportError", "ExportTarget", "export_file", "export_onnx", "export_torchscript", "target_from_checkpoint", "vovnet_target",
    "OneDNNConvAct", "fold_batch_norm_", "fuse_ese_", "fuse_onednn_", "DeployedModel", "DeployWarning", "deploy", "is_detector",
    "PRECISIONS", "resolve_precision", "unsupported_reason", "DeployedDetector", "compare_detections", "deploy_detector",
    "export_detector", "export_checkpoint",
]

# Whole detectors and segmenters build on the task modules: loaded on first use, so `import vovnet` stays light.
_LAZY = {
    **{name: "vovnet.deployment.detection" for name in ("DeployedDetector", "compare_detections", "deploy_detector", "export_detector")},
    **{name: "vovnet.deployment.checkpoint_export" for name in ("export_checkpoint", "target_from_checkpoint")},
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vovnet.deployment' has no attribute {name!r}")

