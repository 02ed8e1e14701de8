"""Deployment: the optimised inference copy, exports checked against PyTorch, and benchmarks against timm.

``deploy(model, precision=...)`` folds batch norm, picks the memory layout and precision the machine runs
fastest and optionally compiles; ``export_onnx`` / ``export_torchscript`` write files only after
onnxruntime (or a TorchScript reload) agrees with PyTorch; ``benchmark`` measures ours against timm in
one interleaved run. Heavy optional imports (onnx, onnxruntime, timm) happen only when used.
"""

from .export import ExportError, ExportTarget, export_file, export_onnx, export_torchscript, target_from_checkpoint, vovnet_target
from .fuse import fold_batch_norm_
from .optimize import DeployedModel, DeployWarning, deploy
from .precision import PRECISIONS, resolve_precision, unsupported_reason

__all__ = [
    "ExportError", "ExportTarget", "export_file", "export_onnx", "export_torchscript", "target_from_checkpoint", "vovnet_target",
    "fold_batch_norm_", "DeployedModel", "DeployWarning", "deploy", "PRECISIONS", "resolve_precision", "unsupported_reason",
]
