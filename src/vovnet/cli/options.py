"""Flags shared by commands: ``-o KEY=VALUE`` (the task-specific settings of ``train``, ``eval`` and ``predict``)
and ``--deploy`` / ``--precision`` (``eval`` and ``predict`` through :func:`vovnet.deploy`)."""

from __future__ import annotations

import argparse
import sys
import warnings

import yaml

from ..deployment import DeployWarning, deploy
from ..errors import UsageError


def add_option_flag(parser: argparse.ArgumentParser) -> None:
    """``-o KEY=VALUE`` (repeatable): a task-specific setting, parsed by :func:`task_options`."""
    parser.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a task-specific setting (repeatable; VALUE is read as YAML)")


def task_options(items: list[str]) -> dict:
    """``["KEY=VALUE", ...]`` -> ``{KEY: VALUE read as YAML}``; an item without ``=`` is a usage error."""
    pairs = [item.partition("=") for item in items]
    bad = [item for item, (_, eq, _) in zip(items, pairs) if not eq]
    if bad:
        raise UsageError(f"-o takes KEY=VALUE, got {bad[0]!r}")
    return {k: yaml.safe_load(v) for k, _, v in pairs}


def add_deploy_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """``--deploy`` and ``--precision``, read back by :func:`deployer`."""
    parser.add_argument("--deploy", action="store_true", help=f"{command} the model as vovnet.deploy makes it (folded, fused, "
                        "channels_last; a detector's wide 3x3 convs as Winograd on the CPU): the same results, faster")
    parser.add_argument("--precision", default="fp32", help="with --deploy: fp32 (default), bf16 or fp16, where the device "
                        "runs it natively (otherwise fp32, and it says so)")


def deployer(args: argparse.Namespace, command: str):
    """``--deploy [--precision P]`` as the engine's deployer (None without ``--deploy``; ``--precision`` alone,
    or ``--amp`` with it, is a usage error): :func:`vovnet.deploy` at that precision, its notes (a precision
    the device does not run natively) printed as one line each."""
    if not args.deploy:
        if args.precision != "fp32":
            raise UsageError("--precision applies with --deploy")
        return None
    if getattr(args, "amp", "none") != "none":
        raise UsageError("--amp runs the eval model; with --deploy give --precision")
    precision = args.precision

    def deploy_model(model, device):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DeployWarning)
            fast = deploy(model, precision, device=device)
        for w in caught:
            print(f"vovnet {command}: {w.message}", file=sys.stderr, flush=True)
        return fast

    return deploy_model
