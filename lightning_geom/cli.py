"""Command line: ``lightning-geom {digits,demo,...}``.

Subcommands import their heavy dependencies only when they run, so ``lightning-geom --help`` is fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def _cmd_digits(args: argparse.Namespace) -> int:
    from .digits_geometry import digits_geometry_table

    print(digits_geometry_table(k=args.k, range_max=args.range_max))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``lightning-geom`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="lightning-geom",
        description="Geometry of transformer representations: intrinsic dimension, neighbourhood overlap.",
    )
    parser.add_argument("--version", action="version", version=f"lightning-geom {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "digits",
        help="ID (TwoNN, GRIDE scale curve) and label overlap of scikit-learn's bundled digits images.",
    )
    p.add_argument("--k", type=int, default=10, help="neighbours for the label overlap (default 10)")
    p.add_argument("--range-max", type=int, default=64, help="largest GRIDE neighbour rank (default 64)")
    p.set_defaults(func=_cmd_digits)

    p = sub.add_parser("demo", help="The end-to-end demo (for now: the digits geometry table).")
    p.add_argument("--k", type=int, default=10, help=argparse.SUPPRESS)
    p.add_argument("--range-max", type=int, default=64, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_digits)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-geom`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
