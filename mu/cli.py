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


@subcommand
def _register_lambdaize(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "lambdaize",
        help="bundle an executable with the worker runtime and deploy it as a Lambda function",
        description="Check EXECUTABLE (a static ELF binary, or a script whose #! interpreter "
        "Lambda has), bundle it with the worker runtime into NAME.zip, and create the function "
        "NAME (EXECUTABLE's basename + '_' + 8 random characters) in each region. The worker "
        "runs 'PRE_ARGS ./EXECUTABLE POST_ARGS'. Environment variables of the 2016 "
        "lambdaize.sh are honoured: MEM_SIZE, TIMEOUT, AWS_ROLE, SKIP_UPLOAD, ALLOW_LD, "
        "REGION; flags override them. Prints each create-function response as JSON.",
    )
    p.add_argument("executable", help="the program the workers run")
    p.add_argument("pre_args", nargs="?", default="", help="words before ./EXECUTABLE")
    p.add_argument("post_args", nargs="?", default="", help="words after ./EXECUTABLE")
    p.add_argument("extra_files", nargs="*", default=[], help="more files for the bundle")
    p.add_argument("--memory", type=int, help="memory in MB (MEM_SIZE; default 1536)")
    p.add_argument("--timeout", type=int, help="timeout in seconds (TIMEOUT; default 180)")
    p.add_argument("--role", help="execution role ARN (AWS_ROLE; needed for AWS)")
    p.add_argument(
        "--region",
        action="append",
        help="region; repeat or comma-separate for one function per region "
        "(REGION; default us-east-1)",
    )
    p.add_argument("--runtime", default="python3.12", help="Lambda runtime (python3.12)")
    p.add_argument("--name", help="function name instead of EXECUTABLE_<random>")
    p.add_argument("--out-dir", default=".", help="where NAME.zip goes (default .)")
    p.add_argument("--skip-upload", action="store_true", default=None, help="only build the zip")
    p.add_argument(
        "--allow-dynamic",
        action="store_true",
        default=None,
        help="accept a dynamically linked binary and bundle its libraries (ALLOW_LD)",
    )
    p.add_argument(
        "--backend", choices=("lambda", "local"), default="lambda", help="where to deploy"
    )
    p.add_argument(
        "--endpoint-url",
        help="Lambda-compatible endpoint (e.g. a running `mu emulator`) instead of AWS",
    )
    p.add_argument("--code-bucket", help="S3 bucket for bundles too big for direct upload")
    p.set_defaults(func=_cmd_lambdaize)


def _cmd_lambdaize(args: argparse.Namespace) -> int:
    import json
    import os

    from backends import get_backend
    from mu.lambdaize import LambdaizeOptions, env_defaults, inspect_executable, lambdaize

    env = env_defaults(os.environ)
    regions = [r.strip() for item in args.region or [] for r in item.split(",") if r.strip()]
    options = LambdaizeOptions(
        executable=args.executable,
        pre_args=args.pre_args,
        post_args=args.post_args,
        extra_files=tuple(args.extra_files),
        name=args.name,
        memory=args.memory if args.memory is not None else env.get("memory", 1536),
        timeout=args.timeout if args.timeout is not None else env.get("timeout", 180),
        role=args.role or env.get("role", ""),
        regions=tuple(dict.fromkeys(regions)) or env.get("regions", ("us-east-1",)),
        runtime=args.runtime,
        skip_upload=bool(args.skip_upload or env.get("skip_upload", False)),
        allow_dynamic=bool(args.allow_dynamic or env.get("allow_dynamic", False)),
        out_dir=args.out_dir,
    )
    options.validate()
    inspect_executable(options.executable, options.allow_dynamic)  # before starting anything
    if options.skip_upload:
        result = lambdaize(options, None)
        print(f"wrote {result.zip_path} (function {result.name}, not uploaded)")
        return 0
    if args.backend == "local" and not args.endpoint_url:
        print(
            "mu: note: no --endpoint-url: deploying to a private emulator that stops when "
            "this command ends (start one with `mu emulator` to keep functions)",
            file=sys.stderr,
        )
    options_for = {"lambda": {"code_bucket": args.code_bucket}, "local": {}}[args.backend]
    launcher = get_backend(args.backend, endpoint_url=args.endpoint_url, **options_for)
    try:
        result = lambdaize(options, launcher)
    finally:
        launcher.close()
    print(f"wrote {result.zip_path}", file=sys.stderr)
    for conf in result.functions.values():
        print(json.dumps(conf, indent=4, sort_keys=True, default=str))
    return 0


@subcommand
def _register_emulator(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "emulator",
        help="run the local Lambda emulator and its S3 server on loopback",
        description="Run the local Lambda API emulator (and its moto S3 server) on "
        "127.0.0.1 until interrupted. Options are the emulator's own; see "
        "`mu emulator --help`.",
        add_help=False,
        prefix_chars="+",  # hand every option, --help included, to the emulator's parser
    )
    p.add_argument("emulator_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_emulator)


def _cmd_emulator(args: argparse.Namespace) -> int:
    from backends.local import emulator_parser, run_emulator

    parser = emulator_parser("mu emulator")
    return run_emulator(parser.parse_args(args.emulator_args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
