"""``vovnet train``: the one training loop for every task (classify by default, on the embedded digits).

Every flag maps to a :class:`vovnet.engine.TrainConfig` field. Flags left out take the task's default
(``Task.config_defaults``, e.g. 128-px images for detect) or else the field's,
or, with ``--resume DIR``, the value stored in DIR; a stored value that a flag would change is refused.
Several processes: ``torchrun --nproc_per_node N -m vovnet train ...``.
"""

from __future__ import annotations

import argparse
import os

from ..engine.config import LR_SCHEDULES, TrainConfig
from ..engine.task import task_config
from .options import add_option_flag, task_options

_DEFAULTS = TrainConfig()

# (flag, argparse options); the TrainConfig field is the flag's name with dashes as underscores.
OPTIONS: list[tuple[str, dict]] = [
    ("--task", dict(help="what to train: classify, detect or segment")),
    ("--data", dict(help="digits (embedded), cifar10, cifar100, mnist, fashion-mnist, or an image folder "
                         "(train/ + val/ sub-folders, or one folder per class split with --val-fraction)")),
    ("--data-root", dict(help="where torchvision datasets live")),
    ("--download", dict(action=argparse.BooleanOptionalAction, help="fetch a torchvision dataset if missing (needs internet)")),
    ("--val-fraction", dict(type=float, help="validation share when one folder is split")),
    ("--limit-train", dict(type=int, help="train on a fixed random subset of N samples (0 = all)")),
    ("--limit-val", dict(type=int, help="evaluate on a fixed random subset of N samples (0 = all)")),
    ("--strict", dict(action=argparse.BooleanOptionalAction, help="fail on unreadable images instead of skipping them")),
    ("--model", dict(help="registered variant (see `vovnet models`)")),
    ("--arch", dict(help="network on the backbone for dense tasks: faster_rcnn, mask_rcnn_sag, fcos, retinanet or "
                         "centermask for detect; fpn_semantic, deeplabv3 or deeplabv3plus for segment (default: the task's own)")),
    ("--pretrained", dict(help="fine-tune from this checkpoint (ours, official, timm or blog layout); a new head is made")),
    ("--drop-rate", dict(type=float, help="dropout before the classifier")),
    ("--drop-path-rate", dict(type=float, help="stochastic depth on residual blocks")),
    ("--img-size", dict(type=int, help="input size in pixels")),
    ("--epochs", dict(type=int, help="training epochs")),
    ("--batch-size", dict(type=int, help="batch size per process")),
    ("--workers", dict(type=int, help="data loader processes (default: 0 for in-memory data, else up to 8)")),
    ("--opt", dict(choices=("adamw", "sgd"), help="optimizer (sgd uses --momentum)")),
    ("--lr", dict(type=float, help="peak learning rate")),
    ("--momentum", dict(type=float, help="SGD momentum")),
    ("--weight-decay", dict(type=float, help="weight decay (never on norm and bias parameters)")),
    ("--warmup-epochs", dict(type=float, help="linear warm-up length before the decay")),
    ("--lr-schedule", dict(choices=LR_SCHEDULES, help="after warm-up: cosine decay, wsd (the peak held, then a linear decay) "
                                                      "or step (multiplied by --lr-gamma at each of --lr-steps)")),
    ("--decay-fraction", dict(type=float, help="wsd: the last fraction of the steps after warm-up spent decaying")),
    ("--lr-steps", dict(type=float, nargs="+", metavar="FRACTION", help="step: where the rate drops, as fractions of all steps")),
    ("--lr-gamma", dict(type=float, help="step: the factor of each drop")),
    ("--min-lr-ratio", dict(type=float, help="final learning rate as a fraction of --lr")),
    ("--label-smoothing", dict(type=float, help="label smoothing of the training loss")),
    ("--clip-grad", dict(type=float, help="clip the gradient norm to this value (0 = off)")),
    ("--ema-decay", dict(type=float, help="keep an EMA of the weights with this decay, evaluated and saved (0 = off)")),
    ("--hard-sampling", dict(type=float, help="fraction of each epoch after the first drawn in proportion to each sample's last loss (0 = uniform)")),
    ("--amp", dict(choices=("none", "bf16", "fp16"), help="mixed precision: bf16 (CPU or CUDA), fp16 (CUDA)")),
    ("--channels-last", dict(action=argparse.BooleanOptionalAction, help="channels-last memory format")),
    ("--grad-checkpointing", dict(action=argparse.BooleanOptionalAction, help="recompute OSA blocks in backward to save memory")),
    ("--freeze-at", dict(type=int, help="freeze the stem (1) and stages 2..k (k), as detectron2's FREEZE_AT")),
    ("--sync-bn", dict(action=argparse.BooleanOptionalAction, help="SyncBatchNorm across processes (torchrun)")),
    ("--seed", dict(type=int, help="random seed")),
    ("--deterministic", dict(action=argparse.BooleanOptionalAction, help="deterministic algorithms (bit-exact resume on CPU)")),
    ("--device", dict(choices=("auto", "cpu", "cuda"), help="where to train")),
    ("--out", dict(help="output folder (default: runs/<date>-<time>-<model>)")),
    ("--quiet", dict(action=argparse.BooleanOptionalAction, help="no progress bars, one line per epoch (for logs)")),
]


def _field(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model (default: classify the embedded digits)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, options in OPTIONS:
        options = dict(options)
        default = getattr(_DEFAULTS, _field(flag))
        if default is not None:
            options["help"] += f" (default: {default})"
        p.add_argument(flag, **{"default": None, **options})
    add_option_flag(p)
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last completed epoch")
    p.add_argument("--json", action="store_true", help="print the summary as JSON at the end")
    p.set_defaults(run=run)


def requested_settings(args) -> dict:
    """The TrainConfig fields the command line sets explicitly."""
    settings = {_field(flag): getattr(args, _field(flag)) for flag, _ in OPTIONS}
    settings = {k: v for k, v in settings.items() if v is not None}
    if args.option:
        settings["task_options"] = task_options(args.option)
    return settings


def run(args) -> int:
    from ..engine import loop
    from . import print_json

    settings = requested_settings(args)
    if args.resume:
        summary = loop.resume(args.resume, **settings)
    else:
        summary = loop.train(task_config(**settings))
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 speaks for all
    if args.json:
        print_json({k: v for k, v in summary.items() if k != "details"})
    else:
        metric = summary["primary_metric"]
        print(f"test {metric}: {summary[metric]:.4f} ({summary[metric]:.2%}); "
              f"best {summary['best_' + metric]:.4f} at epoch {summary['best_epoch']}; "
              f"{summary['train_seconds']:.1f} s of training; outputs in {summary['out']}")
    return 0

