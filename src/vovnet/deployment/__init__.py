"""Deploy and export: the optimised inference copy and exports checked against PyTorch.

``vovnet.deploy(model, precision=...)`` (:func:`deploy`, also exported at the top level) folds batch
norm, picks the memory layout and precision the machine runs fastest, fuses convolutions with their
activations and optionally compiles, and runs the model's own forward (a detector's inference stages) on
that copy; ``export_onnx`` / ``export_torchscript`` / ``export_detector`` / ``export_segmenter`` trace the
same forward and write files only after onnxruntime (or a TorchScript reload) agrees with PyTorch.
Benchmarks live beside this package (:mod:`vovnet.bench`). Optional imports (onnx, onnxruntime) happen only
when used.
"""

import importlib

from .export import ExportError, ExportTarget, export_file, export_onnx, export_torchscript, vovnet_target
from .fuse import OneDNNConvAct, fold_batch_norm_, fuse_ese_, fuse_onednn_
from .optimize import DeployedDetector, DeployedModel, DeployWarning, deploy, deploy_detector, is_detector
from .precision import PRECISIONS, resolve_precision, unsupported_reason

__all__ = [
    "ExportError", "ExportTarget", "export_file", "export_onnx", "export_torchscript", "target_from_checkpoint", "vovnet_target",
    "OneDNNConvAct", "fold_batch_norm_", "fuse_ese_", "fuse_onednn_", "DeployedModel", "DeployWarning", "deploy", "is_detector",
    "PRECISIONS", "resolve_precision", "unsupported_reason", "DeployedDetector", "compare_detections", "deploy_detector",
    "export_detector", "export_checkpoint",
]

# Whole-model exports check on generated scenes (the data layer): loaded on first use, so `import vovnet` stays light.
_LAZY = {
    **{name: "vovnet.deployment.detection" for name in ("compare_detections", "export_detector")},
    **{name: "vovnet.deployment.checkpoint_export" for name in ("export_checkpoint", "target_from_checkpoint")},
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vovnet.deployment' has no attribute {name!r}")

