"""The ``mu`` command: the composition root.

Each subcommand is one ``_cmd_<name>`` function registered in :func:`build_parser`. Backends
are imported lazily inside the subcommands that need them; nothing else in mu imports them.
Errors of the :class:`~mu.errors.MuError` tree print one line and exit 2 (bad input) or 1;
so do botocore errors no inner boundary translated (:mod:`mu.aws`). Ctrl-C and SIGTERM unwind
through every ``finally`` (so servers stop and temporary folders go), print one line and exit
130 or 143.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from mu import __version__
from mu.errors import ConfigError, MuError

__all__ = ["build_parser", "lambdaize_parser", "main", "parse_lambdaize_args"]

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
    previous = _stop_on_sigterm()
    try:
        try:
            return func(args)
        except Exception as exc:
            if not type(exc).__module__.startswith(("botocore.", "boto3.")):
                raise
            # An AWS call no inner boundary wrapped: translated here, never a traceback.
            from mu.aws import translate

            raise translate(exc, f"mu {args.command}") from exc
    except ConfigError as exc:
        print(f"mu: error: {exc}", file=sys.stderr)
        return 2
    except MuError as exc:
        print(f"mu: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mu: interrupted (Ctrl-C); what this run started is stopped and its temporary "
              "files removed", file=sys.stderr)
        return 130
    except Terminated:
        print("mu: terminated (SIGTERM); what this run started is stopped and its temporary "
              "files removed", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(BaseException):
    """SIGTERM arrived. Like KeyboardInterrupt it is no ``Exception``, so nothing on the way
    up swallows it, and every ``finally`` (servers, temp dirs, workers) runs."""


def _stop_on_sigterm() -> Any:
    """Make SIGTERM raise :class:`Terminated` in the main thread; return the old handler
    (None when not in the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut cleanup short
        raise Terminated

    return signal.signal(signal.SIGTERM, on_sigterm)


@subcommand
def _register_frames(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "frames",
        help="write deterministic test frames (PNG) of moving content",
        description="Write N deterministic PNG frames of moving, natural-looking content "
        "as OUT/%08d.png, numbered from --start.",
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
        description="See `mu lambdaize --help`.",
        add_help=False,
        prefix_chars="+",  # every word, dashes or not, goes to lambdaize_parser()
    )
    p.add_argument("lambdaize_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_lambdaize)


# Options of `mu lambdaize`: (flags, keyword arguments of add_argument). Every other word on
# its command line is positional, so a template may start with a dash ('-x').
_LAMBDAIZE_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("--memory",), {"type": int, "help": "memory in MB (MEM_SIZE; default 1536)"}),
    (("--timeout",), {"type": int, "help": "timeout in seconds (TIMEOUT; default 180)"}),
    (("--role",), {"help": "execution role ARN (AWS_ROLE; needed for AWS)"}),
    (("--region",), {
        "action": "append",
        "help": "region; repeat or comma-separate for one function per region "
        "(REGION; default us-east-1)",
    }),
    (("--runtime",), {"default": "python3.12", "help": "Lambda runtime (python3.12)"}),
    (("--name",), {"help": "function name instead of EXECUTABLE_<random>"}),
    (("--out-dir",), {"default": ".", "help": "where NAME.zip goes (default .)"}),
    (("--skip-upload",), {"action": "store_true", "default": None, "help": "only build the zip"}),
    (("--allow-dynamic",), {
        "action": "store_true",
        "default": None,
        "help": "accept a dynamically linked binary and bundle its libraries (ALLOW_LD)",
    }),
    (("--backend",), {
        "choices": ("lambda", "local"), "default": "lambda", "help": "where to deploy"
    }),
    (("--endpoint-url",), {
        "help": "Lambda-compatible endpoint (e.g. a running `mu emulator`) instead of AWS"
    }),
    (("--code-bucket",), {"help": "S3 bucket for bundles too big for direct upload"}),
)


def lambdaize_parser() -> argparse.ArgumentParser:
    """The parser of ``mu lambdaize`` (see :func:`parse_lambdaize_args`)."""
    p = argparse.ArgumentParser(
        prog="mu lambdaize",
        allow_abbrev=False,
        description="Check EXECUTABLE (a static ELF binary, or a script whose #! interpreter "
        "Lambda has), bundle it with the worker runtime into NAME.zip, and create the function "
        "NAME (EXECUTABLE's basename + '_' + 8 random characters) in each region. The worker "
        "runs 'PRE_ARGS ./EXECUTABLE POST_ARGS'. Environment variables of the 2016 "
        "lambdaize.sh are honoured: MEM_SIZE, TIMEOUT, AWS_ROLE, SKIP_UPLOAD, ALLOW_LD, "
        "REGION; flags override them. Prints each create-function response as JSON.",
        epilog="Options may come before or after the positional words. Every word that is "
        "not one of the options above is positional, even empty or starting with a dash "
        "(mu lambdaize ./prog '' '-x'); after '--' every word is.",
    )
    p.add_argument("executable", help="the program the workers run")
    p.add_argument("pre_args", nargs="?", default="", help="words before ./EXECUTABLE")
    p.add_argument("post_args", nargs="?", default="", help="words after ./EXECUTABLE")
    p.add_argument("extra_files", nargs="*", default=[], help="more files for the bundle")
    for flags, kwargs in _LAMBDAIZE_OPTIONS:
        p.add_argument(*flags, **kwargs)
    return p


def parse_lambdaize_args(words: Sequence[str]) -> argparse.Namespace:
    """Parse ``mu lambdaize`` words the 2016 way: a word is an option only if it is one of
    ``mu lambdaize``'s own (``--name``, ``--name=x``, ``-h``), or that option's value; every
    other word, in order, is EXECUTABLE, PRE_ARGS, POST_ARGS, then EXTRA_FILEs.

    >>> ns = parse_lambdaize_args(["./bin", "", "-x", "--skip-upload"])
    >>> (ns.executable, ns.pre_args, ns.post_args, ns.skip_upload)
    ('./bin', '', '-x', True)
    """
    takes_value = {
        flag: kwargs.get("action") != "store_true"
        for flags, kwargs in _LAMBDAIZE_OPTIONS
        for flag in flags
    }
    takes_value.update({"-h": False, "--help": False})
    options: list[str] = []
    positional: list[str] = []
    rest = iter(words)
    for word in rest:
        name = word.partition("=")[0] if word.startswith("--") else word
        if word == "--":
            positional.extend(rest)
        elif word in takes_value:
            value = next(rest, None) if takes_value[word] else None
            # --opt=value: argparse takes the value as it is, even '-x'.
            options.append(word if value is None else f"{word}={value}")
        elif name != word and takes_value.get(name):
            options.append(word)
        else:
            positional.append(word)
    parser = lambdaize_parser()
    args = parser.parse_args([*options, "--", *positional])
    # argparse has consumed the '--'; set the words exactly as given (a '--' among them too).
    fields = ("executable", "pre_args", "post_args")
    for field, word in zip(fields, positional, strict=False):
        setattr(args, field, word)
    args.extra_files = positional[len(fields):]
    return args


def _cmd_lambdaize(args: argparse.Namespace) -> int:
    import json
    import os

    from backends import get_backend
    from mu.lambdaize import (
        MAX_ZIPPED,
        LambdaizeOptions,
        env_defaults,
        find_executable,
        inspect_executable,
        lambdaize,
    )

    args = parse_lambdaize_args(args.lambdaize_args)
    executable, in_checkout = find_executable(args.executable)
    if in_checkout:
        print(f"mu: note: {args.executable} is not in {os.getcwd()}; using {executable} from "
              "mu's source checkout", file=sys.stderr)
    env = env_defaults(os.environ)
    regions = [r.strip() for item in args.region or [] for r in item.split(",") if r.strip()]
    options = LambdaizeOptions(
        executable=executable,
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
        max_zipped=None if args.backend == "lambda" and args.code_bucket else MAX_ZIPPED,
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

    if args.emulator_args[:1] == ["logs"]:  # the older spelling of `mu logs`
        from mu.logs import emulator_logs_parser

        return _cmd_logs(emulator_logs_parser("mu emulator logs").parse_args(
            args.emulator_args[1:]))
    parser = emulator_parser("mu emulator")
    return run_emulator(parser.parse_args(args.emulator_args))


@subcommand
def _register_logs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from mu.logs import add_arguments

    p = sub.add_parser(
        "logs",
        help="print a function's Lambda logs (CloudWatch Logs), local or on AWS",
        description="Print the logs of FUNCTION's invocations from CloudWatch Logs (log "
        "group /aws/lambda/FUNCTION), invocation by invocation, oldest first: from a running "
        "`mu emulator` (--backend local, the default) or from AWS (--backend lambda).",
    )
    add_arguments(p)
    p.set_defaults(func=_cmd_logs)


def _cmd_logs(args: argparse.Namespace) -> int:
    from backends.local import LOCAL_CREDENTIALS
    from mu.logs import Emulator, run

    def emulators() -> list[Emulator]:
        from emulator import running

        # The embedded moto server serves every AWS API, CloudWatch Logs included, on the
        # port it serves S3 on.
        return [Emulator(r.s3_url, str(r.state_dir)) for r in running.running()]

    return run(args, emulators, LOCAL_CREDENTIALS)


@subcommand
def _register_png2y4m(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from mu.apps.png2y4m_run import add_arguments

    p = sub.add_parser(
        "png2y4m",
        help="convert PNG frames in S3 to Y4M chunks on many workers",
        description="Convert s3://BUCKET/VIDEO-INFORMAT/%08d.png into "
        "s3://BUCKET/VIDEO-y4m_FF/%08d.y4m, FRAMES frames per worker. With --backend local "
        "(the default) everything runs on this machine: an embedded Lambda emulator and S3, "
        "ephemeral keys, the binary built from function/png2y4m.",
    )
    add_arguments(p)
    p.set_defaults(func=_cmd_png2y4m)


def _cmd_png2y4m(args: argparse.Namespace) -> int:
    from mu.apps.png2y4m_run import run

    launcher, s3, host_addr, problems = _backend_for_run(args)
    try:
        outcome = run(args, launcher, s3, host_addr, problems=problems)
    finally:
        if launcher is not None:
            launcher.close()
    return outcome.exit_status


def _backend_for_run(args: argparse.Namespace) -> tuple[Any, Any, str, list[str]]:
    """The launcher, an S3 client for its S3, the dial-back address, and the problems found
    setting them up (an unknown AWS_PROFILE, no credentials, a Lambda host that does not
    resolve), which preflight reports with its own. Launcher and client are None when the
    AWS setup itself is unusable."""
    from backends import get_backend
    from backends.local import LOCAL_CREDENTIALS
    from mu.apps.png2y4m_run import regions_of
    from mu.aws import aws_errors, lazy_s3

    region = regions_of(args)[0]
    if args.backend == "local":
        faults = args.faults
        launcher = get_backend(
            "local",
            endpoint_url=args.endpoint_url,
            s3_endpoint_url=args.s3_endpoint_url,
            region=region,
            duplicate_rate=faults.duplicate if faults else 0.0,
            duplicate_seed=faults.seed if faults else 0,
        )
        s3 = lazy_s3(
            launcher.s3_endpoint_url, region, LOCAL_CREDENTIALS  # type: ignore[attr-defined]
        )
        return launcher, s3, args.host_addr or "127.0.0.1", []
    import boto3

    try:
        with aws_errors("AWS configuration"):
            session = boto3.session.Session()
            credentials = session.get_credentials()
            s3 = lazy_s3(args.s3_endpoint_url, region, session=session)
    except ConfigError as exc:
        return None, None, "", [str(exc)]
    if credentials is None:
        return None, None, "", [
            "no AWS credentials found (the coordinator reads the input frames in S3"
            + (" and invokes Lambda" if args.backend == "lambda" else "")
            + "): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run "
            "`aws configure`"
        ]
    if args.backend == "none":
        import shlex
        from pathlib import Path

        from mu.apps.png2y4m import COMMAND

        launcher = get_backend(
            "none",
            payload_out=args.payload_out,
            command=f"{shlex.quote(str(Path(args.binary).resolve()))} {COMMAND}",
            s3_endpoint_url=args.s3_endpoint_url,
            arrival_timeout=args.arrival_timeout,
        )
        return launcher, s3, args.host_addr or args.host, []
    from backends.aws_lambda import route_address

    launcher = get_backend("lambda", endpoint_url=args.endpoint_url, session=session)
    try:
        return launcher, s3, args.host_addr or route_address(region, args.endpoint_url), []
    except ConfigError as exc:
        return launcher, s3, "", [str(exc)]


@subcommand
def _register_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole png2y4m flow locally and verify it",
        description="Make 24 frames of 1280x720 16-bit content, convert them with 4 workers "
        "x 6 frames on the local backend (embedded emulator and S3), download the Y4M "
        "chunks, verify them against the Python reference, and draw the timeline.",
    )
    p.add_argument("--out", default="demo-out", help="output directory (default ./demo-out)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    import boto3

    from backends import get_backend
    from backends.local import LOCAL_CREDENTIALS
    from mu.demo import run_demo

    launcher = get_backend("local")
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=launcher.s3_endpoint_url,  # type: ignore[attr-defined]
            region_name="us-east-1",
            **LOCAL_CREDENTIALS,
        )
        return run_demo(args.out, launcher, s3)
    finally:
        launcher.close()


@subcommand
def _register_genkeys(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "genkeys",
        help="make a CA, a coordinator key pair and a worker key pair",
        description="Write ca_cert.pem, ca_key.pem, server_cert.pem, server_key.pem, "
        "worker_cert.pem and worker_key.pem (the coordinator's key ECDSA P-256, the CA's "
        "and the workers' RSA-2048, which OpenSSL security level 3 refuses; private keys "
        "mode 0600). Use them "
        "with -c/-s/-k (or CA_CERT, SRV_CERT, SRV_KEY): the workers' pair beside them is "
        "found, or pass --worker-cert/--worker-key (WORKER_CERT, WORKER_KEY); without them "
        "every run makes ephemeral keys.",
    )
    p.add_argument("--out", default=".", help="directory to write into (default .)")
    p.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=_cmd_genkeys)


def _cmd_genkeys(args: argparse.Namespace) -> int:
    from mu.tls import generate_keys

    for path in generate_keys(args.days).write(args.out, force=args.force):
        print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
