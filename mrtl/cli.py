"""The ``mrtl`` command line.

Each group of subcommands lives next to the code it drives and registers itself here through
a function ``add_commands(subparsers)``; every subcommand sets ``func`` (called with the parsed
``argparse.Namespace``, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# Modules that contribute subcommands, each with ``add_commands(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = ("mrtl.experiments.cli", "mrtl.data.cli", "mrtl.train_cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mrtl",
        description="Transfer learning for accelerated MRI reconstruction (Dar et al., MRM 2020).",
    )
    parser.add_argument("--version", action="version", version=f"mrtl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, KeyError) as exc:
        print(f"mrtl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
