"""``mrtl data ...`` subcommands: ``info`` (table of the bundled data) and ``show`` (example grid)."""

from __future__ import annotations

import argparse


def _info(args: argparse.Namespace) -> int:
    from .show import info

    info(print_table=True)
    return 0


def _show(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from .show import show_examples

    size = None if args.size is None else (args.size, args.size)
    fig = show_examples(args.domains, size=size)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0


def add_commands(subparsers) -> None:
    """Register ``mrtl data info`` and ``mrtl data show``."""
    p = subparsers.add_parser("data", help="the bundled data set: info, examples")
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    q = sub.add_parser("info", help="per bundled domain: subjects and images per split, size, real/synthetic, license")
    q.set_defaults(func=_info)
    q = sub.add_parser("show", help="save a figure with one example per domain")
    q.add_argument("--out", default="data_examples.png")
    q.add_argument("--domains", nargs="*", default=None)
    q.add_argument("--size", type=int, default=None)
    q.set_defaults(func=_show)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])
