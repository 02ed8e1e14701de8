"""``-o KEY=VALUE``: the task-specific settings flag of ``train``, ``eval`` and ``predict``."""

from __future__ import annotations

import argparse

import yaml

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

