"""The ``vovnet`` command. Each sub-command parses its arguments and calls one library function.

Errors a user can cause print one line (exit 2 for usage errors, 1 for failures).
"""

from __future__ import annotations

import argparse
import json
import sys

from vovnet import __version__

from ..errors import VoVNetError
from . import (
    bench_cmd,
    convert_cmd,
    env_cmd,
    eval_cmd,
    export_cmd,
    make_shapes_cmd,
    models_cmd,
    predict_cmd,
    pull_cmd,
    train_cmd,
    weights_cmd,
)

COMMANDS = [models_cmd, weights_cmd, pull_cmd, convert_cmd, make_shapes_cmd, train_cmd, eval_cmd, predict_cmd, bench_cmd, export_cmd,
            env_cmd]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vovnet", description="VoVNet / VoVNetV2 models, weights, training and deployment.")
    parser.add_argument("--version", action="version", version=f"vovnet {__version__}",
                        help="print the version and exit (`vovnet env`: the versions of torch and the rest, and the hardware)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    for command_parser in sub.choices.values():  # descriptions are the modules' docstrings, in RST's ``code``
        if command_parser.description:
            command_parser.description = command_parser.description.replace("``", "`")
    return parser


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except VoVNetError as e:
        print(f"vovnet {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"vovnet {args.command}: interrupted", file=sys.stderr)
        return 130
