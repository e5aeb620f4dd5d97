"""The ``mu`` command: the composition root.

Each subcommand is one ``_cmd_<name>`` function registered in :func:`build_parser`. Backends
are imported lazily inside the subcommands that need them; nothing else in mu imports them.
Errors of the :class:`~mu.errors.MuError` tree print one line and exit 2 (bad input) or 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from mu import __version__
from mu.errors import ConfigError, MuError

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to check that the README matches ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="mu",
        description=(
            "Run one job on hundreds of AWS Lambda workers at once, driven by a coordinator "
            "over mutual TLS, or rehearse the same run locally (emulator + moto S3)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"mu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _REGISTRY:
        register(sub)
    return parser


Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]
_REGISTRY: list[Registrar] = []


def subcommand(register: Registrar) -> Registrar:
    """Register a function that adds one subparser (and sets ``func`` on it)."""
    _REGISTRY.append(register)
    return register


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mu`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "debug", False) else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    func: Handler = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(f"mu: error: {exc}", file=sys.stderr)
        return 2
    except MuError as exc:
        print(f"mu: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mu: interrupted", file=sys.stderr)
        return 130


@subcommand
def _register_frames(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "frames",
        help="write deterministic test frames (PNG) of moving content",
        description="Write N deterministic PNG frames of moving, natural-looking content "
        "as OUT/%%08d.png, numbered from --start.",
    )
    p.add_argument("--count", type=int, default=24, help="number of frames (default 24)")
    p.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT (default 1280x720)")
    p.add_argument("--depth", type=int, choices=(8, 16), default=16, help="bits per sample")
    p.add_argument("--out", default="frames", help="output directory (default ./frames)")
    p.add_argument("--start", type=int, default=1, help="first frame number (default 1)")
    p.add_argument("--seed", type=int, default=7, help="selects the sequence (default 7)")
    p.set_defaults(func=_cmd_frames)


def _cmd_frames(args: argparse.Namespace) -> int:
    from mu.frames import parse_size, write_frames

    width, height = parse_size(args.size)
    paths = write_frames(args.out, args.count, width, height, args.depth, args.seed, args.start)
    print(f"wrote {len(paths)} frames {width}x{height} {args.depth}-bit to {args.out}/")
    return 0


@subcommand
def _register_plot(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "plot",
        help="draw a run record (-O file) as a timeline PNG",
        description="Draw a run record as one horizontal bar per worker, coloured by state "
        "over time; failed workers are marked with a red cross and their reason.",
    )
    p.add_argument("record", help="run record written by -O (JSON lines)")
    p.add_argument("-o", "--output", default="timeline.png", help="PNG to write")
    p.add_argument("--title", help="plot title (default: counts)")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args: argparse.Namespace) -> int:
    from mu.plot import plot_timeline

    print(f"wrote {plot_timeline(args.record, args.output, args.title)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
