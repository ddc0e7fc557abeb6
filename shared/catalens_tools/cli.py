"""The ``catalens`` command line: ``catalens model build``, ``catalens bench ...``, ``catalens eval ...``, ...

Sub-commands live in :mod:`catalens_tools.commands`, one module each, discovered at start.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from catalens.errors import CatalensError
from catalens_tools import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="catalens", description="catalens — shop by photo")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub, groups)
    return parser


def group(sub: argparse._SubParsersAction, groups: dict, name: str, help_text: str) -> argparse._SubParsersAction:
    """Return the sub-parsers of a command group (``bench``, ``eval``, ``model``), creating it once."""
    if name not in groups:
        parser = sub.add_parser(name, help=help_text)
        groups[name] = parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")
    return groups[name]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CatalensError as exc:
        print(f"catalens: {exc.code}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("catalens: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
