"""The ``mu`` command and :func:`run_job`: the composition root.

Each subcommand is one ``_register_<name>`` function (its flags) and one ``_cmd_<name>``
function, registered in :func:`build_parser`. This is the one place that sees ``argparse``:
the job subcommands turn their flags into the typed options of :mod:`mu.options` here
(``_run_options``, ``_site_options``, ...), build the site with ``backends.get_backend`` (the
one module of ``backends`` imported, lazily, inside the subcommands) and hand both to
:func:`mu.runopts.run`. :func:`run_job` (``mu.run_job``) is the same path for the library.
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
from typing import TYPE_CHECKING, Any, TextIO

from mu import __version__
from mu.errors import ConfigError, MuError
from mu.launch import DEFAULT_MEMORY, DEFAULT_RUNTIME, DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from mu.apps.denoise_run import DenoiseOptions
    from mu.options import Png2Y4MOptions, RunOptions, SiteOptions
    from mu.runopts import Job, RunResult
    from mu.states import MachineState

__all__ = [
    "add_relay_arguments",
    "build_parser",
    "lambdaize_parser",
    "main",
    "parse_denoise",
    "parse_lambdaize_args",
    "parse_png2y4m",
    "run_job",
]

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
    p.add_argument("--title", help="plot title (default: counts, and the cost when the "
                   "record carries it)")
    p.add_argument("--cost", action="store_true",
                   help="label each bar with what that invocation cost (kind, dollars, and "
                   "'<=' for an upper bound), from the bill in the record")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args: argparse.Namespace) -> int:
    from mu.plot import plot_timeline

    print(f"wrote {plot_timeline(args.record, args.output, args.title, cost=args.cost)}")
    return 0


@subcommand
def _register_cost(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cost",
        help="print what a run cost, per state and per actor, from its record (-O file)",
        description="Print the bill a run wrote into its record (-O): the total, by kind "
        "(work, retries, speculative backups, spares, the coordinator's S3), by state (each "
        "attempt's dollars shared by the time each state lasted), and by invocation with "
        "where its figure came from (the invocation's REPORT line, or an upper bound).",
    )
    p.add_argument("record", help="run record written by -O (JSON lines)")
    p.set_defaults(func=_cmd_cost)


def _cmd_cost(args: argparse.Namespace) -> int:
    from mu.cost import cost_lines, read_record_lines

    print("\n".join(cost_lines(read_record_lines(args.record))))
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
    (("--memory",), {"type": int, "help": f"memory in MB (MEM_SIZE; default {DEFAULT_MEMORY})"}),
    (("--timeout",), {
        "type": int, "help": f"timeout in seconds (TIMEOUT; default {DEFAULT_TIMEOUT})"
    }),
    (("--role",), {"help": "execution role ARN (AWS_ROLE; needed for AWS)"}),
    (("--region",), {
        "action": "append",
        "help": "region; repeat or comma-separate for one function per region "
        "(REGION; default us-east-1)",
    }),
    (("--runtime",), {"default": DEFAULT_RUNTIME, "help": f"Lambda runtime ({DEFAULT_RUNTIME})"}),
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
    (("--also",), {
        "action": "append", "default": [], "metavar": "PROGRAM",
        "help": "another program for the same function, checked like EXECUTABLE and shipped "
        "beside it (run: commands call it as ./NAME); repeat for more",
    }),
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
        "REGION; flags override them. With --also, one function carries several programs. "
        "Prints each create-function response as JSON.",
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
    import dataclasses
    import json
    import os

    from backends import get_backend
    from mu.lambdaize import (
        LambdaizeOptions,
        env_defaults,
        find_executable,
        inspect_executable,
        lambdaize,
    )
    from mu.options import SiteOptions, split_regions

    args = parse_lambdaize_args(args.lambdaize_args)
    executable, in_checkout = find_executable(args.executable)
    if in_checkout:
        print(f"mu: note: {args.executable} is not in {os.getcwd()}; using {executable} from "
              "mu's source checkout", file=sys.stderr)
    also = []
    for program in args.also:
        found, elsewhere = find_executable(program)
        if elsewhere:
            print(f"mu: note: {program} is not in {os.getcwd()}; using {found} from "
                  "mu's source checkout", file=sys.stderr)
        also.append(found)
    env = env_defaults(os.environ)
    site_options = SiteOptions(
        backend=args.backend, endpoint_url=args.endpoint_url, code_bucket=args.code_bucket
    )
    options = LambdaizeOptions(
        executable=executable,
        pre_args=args.pre_args,
        post_args=args.post_args,
        extra_files=tuple(args.extra_files),
        name=args.name,
        memory=args.memory if args.memory is not None else env.get("memory", DEFAULT_MEMORY),
        timeout=args.timeout if args.timeout is not None else env.get("timeout", DEFAULT_TIMEOUT),
        role=args.role or env.get("role", ""),
        regions=split_regions(args.region, "--region") if args.region
        else env.get("regions", SiteOptions.regions),
        runtime=args.runtime,
        skip_upload=bool(args.skip_upload or env.get("skip_upload", False)),
        allow_dynamic=bool(args.allow_dynamic or env.get("allow_dynamic", False)),
        out_dir=args.out_dir,
        also=tuple(also),
    )
    options.validate()
    for program in (options.executable, *options.also):  # before starting anything
        inspect_executable(program, options.allow_dynamic)
    if options.skip_upload:
        result = lambdaize(options, None)
        print(f"wrote {result.zip_path} (function {result.name}, not uploaded)")
        return 0
    site = get_backend(site_options.backend, site_options)
    try:
        if site.private:
            print(
                "mu: note: no --endpoint-url: deploying to a private emulator that stops when "
                "this command ends (start one with `mu emulator` to keep functions)",
                file=sys.stderr,
            )
        options = dataclasses.replace(
            options, max_zipped=site.max_zipped, role=options.role or site.default_role
        )
        result = lambdaize(options, site.launcher)
    finally:
        site.close()
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
    from backends import run_emulator

    if args.emulator_args[:1] == ["logs"]:  # the older spelling of `mu logs`
        return _cmd_logs(_emulator_logs_parser("mu emulator logs").parse_args(
            args.emulator_args[1:]))
    return run_emulator(args.emulator_args, "mu emulator")


# -- the job subcommands: flags -> typed options ----------------------------------------


def _parse_actors(text: str) -> tuple[int, ...]:
    """Parse ``-N a,b,c`` (ranges ``a-b`` allowed)."""
    actors: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise argparse.ArgumentTypeError(f"{part!r} is not an actor number or range a-b")
        actors.extend(range(int(lo), int(hi) + 1) if dash else [int(lo)])
    return tuple(actors)


def _parse_faults(text: str) -> Any:
    from mu.faults import parse

    try:
        return parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_site_arguments(parser: argparse.ArgumentParser, regions: bool,
                        by_hand: bool = True) -> None:
    """Where a run happens; ``by_hand=False``: a job whose workers cannot be started by hand
    (its help leaves ``--backend none`` out; choosing it is refused with one line)."""
    from mu.options import SiteOptions

    where = parser.add_argument_group("where it runs")
    if regions:
        where.add_argument(
            "-r", "--regions", default=",".join(SiteOptions.regions),
            help=f"comma-separated regions ('{','.join(SiteOptions.regions)}')",
        )
    backend_help = "local: embedded emulator + S3 (default); lambda: AWS"
    if by_hand:
        backend_help += ("; none: launch nothing, write the payload (--payload-out), print how "
                         "to start workers by hand with it and wait for them (--arrival-timeout)")
    where.add_argument(
        "--backend",
        choices=("local", "lambda", "none"),
        metavar=None if by_hand else "{local,lambda}",
        default=SiteOptions.backend,
        help=backend_help,
    )
    where.add_argument("--endpoint-url", help="a Lambda-compatible endpoint (e.g. a running "
                       "`mu emulator`)")
    where.add_argument(
        "--s3-endpoint-url",
        help="S3 endpoint instead of AWS's (with --backend lambda beside --endpoint-url"
        + ("; with --backend none, where the workers find S3 too)" if by_hand else ")"),
    )
    where.add_argument(
        "--host-addr",
        help="address workers dial back to (AWS default: the local address that routes to "
        "the region's Lambda endpoint; local: 127.0.0.1)",
    )


def _add_run_arguments(parser: argparse.ArgumentParser, by_hand: bool = True) -> None:
    """The coordinator's flags (the 2016 ``-t -D -O -P -m -N -X`` and mu's own) and the keys';
    ``by_hand`` as in :func:`_add_site_arguments`."""
    from mu.options import SPECULATE_FACTOR, RunOptions

    defaults = RunOptions()
    g = parser.add_argument_group("coordinator")
    g.add_argument(
        "-t", "--port", type=int, default=defaults.port,
        help=f"listen on this port ({defaults.port}; 0 picks a free one)",
    )
    g.add_argument(
        "--host", default=None,
        help="listen address (default 127.0.0.1 for local runs, 0.0.0.0 for AWS)",
    )
    g.add_argument("-D", "--debug", action="store_true", help="debug logging")
    g.add_argument("-O", "--record", metavar="FILE", help="write the run record (JSON lines)")
    g.add_argument("-P", "--profile", metavar="FILE", help="write cProfile stats")
    g.add_argument(
        "-m", "--deadline", type=float, metavar="SECONDS",
        help="fail a worker that takes longer than this",
    )
    g.add_argument(
        "--run-deadline", type=float, metavar="SECONDS", help="end the whole run after this long"
    )
    g.add_argument(
        "-X", "--extra", type=int, default=defaults.extra, metavar="N",
        help=f"launch N spare workers ({defaults.extra})",
    )
    g.add_argument(
        "--retries", type=int, default=defaults.retries, metavar="K",
        help="give an actor whose attempt failed for a reason that can be transient (lost "
        "worker, timeout, S3 5xx, throttling) to a new worker, up to K times "
        f"({defaults.retries})",
    )
    g.add_argument(
        "--arrival-timeout", type=float, default=defaults.arrival_timeout, metavar="SECONDS",
        help="fail actors whose launched workers have not connected this long after the "
        f"launch ({defaults.arrival_timeout:g})",
    )
    g.add_argument(
        "--speculate", type=float, nargs="?", const=SPECULATE_FACTOR, default=None,
        metavar="FACTOR",
        help="launch a backup worker for an actor whose current state has lasted FACTOR "
        f"times ({SPECULATE_FACTOR:g}) that state's median among finished workers; the first "
        "to finish wins",
    )
    g.add_argument(
        "--max-handshakes", type=int, default=None, metavar="N",
        help="TLS handshakes in progress at once (16; 128 with --backend lambda, where each "
        "waits a round trip for its worker)",
    )
    g.add_argument(
        "--resume", action="store_true",
        help="skip actors whose output already exists complete (size and SHA-256 as "
        "recorded at upload); run only the rest",
    )
    g.add_argument(
        "--faults", type=_parse_faults, metavar="SPEC",
        help="rehearsals: inject faults, e.g. crash=0.1,hang=0.02,drop=0.05,s3-error=0.02,"
        "duplicate=0.05,seed=7 (a hang needs -m to end it; duplicate: local backend only)",
    )
    g.add_argument(
        "-N", "--actors", type=_parse_actors, metavar="A,B,C",
        help="run exactly these actor numbers",
    )
    g.add_argument(
        "--no-tls", action="store_true",
        help="plain TCP between coordinator and workers (debugging only)",
    )
    g.add_argument(
        "--payload-out", metavar="FILE",
        help="backend none: write the invocation payload here (default: a private temporary "
        "file, removed when the run ends); the run prints how to start workers with it"
        if by_hand else argparse.SUPPRESS,
    )
    c = parser.add_argument_group("cost")
    c.add_argument(
        "--dry-run", action="store_true",
        help="run the whole preflight, print the plan and the estimated cost, launch nothing "
        "(exit 0 when the preflight is clean)",
    )
    c.add_argument(
        "--estimate-from", metavar="RUN.jsonl",
        help="estimate with the per-state durations of an earlier run's record (-O), scaled "
        "by frames (default: every worker runs the whole function timeout, an upper bound)",
    )
    c.add_argument(
        "--price-file", metavar="FILE",
        help="price table (JSON) instead of the one in the package (mu/prices.json)",
    )
    k = parser.add_argument_group("keys (default: ephemeral keys made for this run)")
    k.add_argument("-c", "--ca-cert", metavar="FILE", help="CA certificate (env CA_CERT)")
    k.add_argument(
        "-s", "--server-cert", metavar="FILE", help="coordinator certificate (env SRV_CERT)"
    )
    k.add_argument("-k", "--server-key", metavar="FILE", help="coordinator key (env SRV_KEY)")
    k.add_argument(
        "--worker-cert", metavar="FILE",
        help="worker certificate (env WORKER_CERT; default with -c/-s/-k: worker_cert.pem "
        "beside -s, else one made for the run from ca_key.pem beside -c)",
    )
    k.add_argument("--worker-key", metavar="FILE", help="worker key (env WORKER_KEY)")


def _run_options(args: argparse.Namespace) -> RunOptions:
    """The typed :class:`~mu.options.RunOptions` of the parsed flags."""
    from mu.options import KeyOptions, RunOptions

    return RunOptions(
        port=args.port, host=args.host, debug=args.debug, record=args.record,
        profile=args.profile, deadline=args.deadline, run_deadline=args.run_deadline,
        extra=args.extra, retries=args.retries, arrival_timeout=args.arrival_timeout,
        speculate=args.speculate, max_handshakes=args.max_handshakes, resume=args.resume,
        faults=args.faults, actors=args.actors, tls=not args.no_tls,
        dry_run=args.dry_run, estimate_from=args.estimate_from, price_file=args.price_file,
        # only jobs that call add_relay_arguments have the flag
        relay_port=vars(args).get("relay_port", RunOptions.relay_port),
        keys=KeyOptions(
            ca_cert=args.ca_cert, server_cert=args.server_cert, server_key=args.server_key,
            worker_cert=args.worker_cert, worker_key=args.worker_key,
        ),
    )


def _site_options(args: argparse.Namespace, worker_command: str = "") -> SiteOptions:
    """The typed :class:`~mu.options.SiteOptions` of the parsed flags."""
    from mu.options import SiteOptions, split_regions

    faults = args.faults
    return SiteOptions(
        backend=args.backend,
        endpoint_url=args.endpoint_url,
        s3_endpoint_url=args.s3_endpoint_url,
        host_addr=args.host_addr,
        regions=split_regions(args.regions),
        payload_out=args.payload_out,
        worker_command=worker_command,
        arrival_timeout=args.arrival_timeout,
        duplicate_rate=faults.duplicate if faults else 0.0,
        duplicate_seed=faults.seed if faults else 0,
    )


def _run_on_site(
    job: Job, run_options: RunOptions, site_options: SiteOptions, out: TextIO | None = None,
) -> RunResult:
    """Build the site, run the job on it, close it; the run's result."""
    from backends import get_backend
    from mu.runopts import dry_run, run

    if run_options.dry_run and site_options.backend == "local" and not site_options.endpoint_url:
        # the private stage would start only to run the job: a dry run leaves it unstarted
        return dry_run(job, run_options, None, out, regions=site_options.regions)
    site = get_backend(site_options.backend, site_options)
    try:
        return run(job, run_options, site, out)
    finally:
        site.close()


@subcommand
def _register_logs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "logs",
        help="print a function's Lambda logs (CloudWatch Logs), local or on AWS",
        description="Print the logs of FUNCTION's invocations from CloudWatch Logs (log "
        "group /aws/lambda/FUNCTION), invocation by invocation, oldest first: from a running "
        "`mu emulator` (--backend local, the default) or from AWS (--backend lambda).",
    )
    p.add_argument("function", help="the function's name")
    p.add_argument("--request-id", metavar="ID",
                   help="only that invocation: its lines from START to REPORT")
    p.add_argument("--backend", choices=("local", "lambda"), default="local",
                   help="local: a running `mu emulator` (default); lambda: AWS")
    _add_logs_arguments(p)
    p.set_defaults(func=_cmd_logs, state_dir=None)


def _emulator_logs_parser(prog: str) -> argparse.ArgumentParser:
    """The older spelling, ``mu emulator logs FUNCTION [REQUEST_ID] [--state-dir DIR]``
    (the same reader: DIR picks the running emulator that uses it)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Print a function's logs from a running emulator (the same as "
        "`mu logs FUNCTION`).")
    parser.add_argument("function", help="the function's name")
    parser.add_argument("request_id", nargs="?", help="one invocation (default: all)")
    parser.add_argument("--state-dir", help="the running emulator started with this "
                        "--state-dir (default: the newest that has the function's logs)")
    _add_logs_arguments(parser)
    parser.set_defaults(backend="local")
    return parser


def _add_logs_arguments(parser: argparse.ArgumentParser) -> None:
    from mu.options import DEFAULT_REGION

    parser.add_argument("--since", type=_since, metavar="DURATION",
                        help="only events of the last DURATION: a number and s, m, h or d "
                        "(30s, 10m, 2h, 1d; default: all the group holds)")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep printing new events until interrupted (Ctrl-C)")
    parser.add_argument("--region", "-r", help=f"the region (local default {DEFAULT_REGION}; "
                        "lambda: AWS_DEFAULT_REGION or the AWS config)")
    parser.add_argument("--endpoint-url", help="a CloudWatch Logs endpoint (default: the "
                        "running emulator's, or AWS's)")


def _since(text: str) -> float:
    from mu.logs import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_logs(args: argparse.Namespace) -> int:
    from backends import log_sources
    from mu.logs import run
    from mu.options import LogsOptions

    options = LogsOptions(
        function=args.function, backend=args.backend, since=args.since, follow=args.follow,
        request_id=args.request_id, region=args.region, endpoint_url=args.endpoint_url,
        state_dir=args.state_dir,
    )
    return run(options, log_sources(options))


def _add_video_job_arguments(
    parser: argparse.ArgumentParser, d: Png2Y4MOptions, frames: str, informat: str | None,
    function: str,
) -> None:
    """The 2016 job flags of a video job (``-n -f -o -v -b -i -l -r``), defaults from ``d``;
    ``frames`` is -f's help, ``informat`` and ``function`` end -i's and -l's (``informat``
    None: the job has no -i)."""
    from mu.options import SiteOptions

    job = parser.add_argument_group("job")
    job.add_argument("-n", "--workers", type=int, default=d.workers,
                     help=f"number of workers/chunks ({d.workers})")
    job.add_argument("-f", "--frames", type=int, default=d.frames, help=f"{frames} ({d.frames})")
    job.add_argument("-o", "--offset", type=int, default=d.offset,
                     help=f"skip this many chunks ({d.offset})")
    job.add_argument("-v", "--video", default=d.video, help=f"video name ('{d.video}')")
    job.add_argument("-b", "--bucket", default=d.bucket, help=f"S3 bucket ('{d.bucket}')")
    if informat is not None:
        job.add_argument("-i", "--informat", default=d.informat,
                         help=f"input format, the key infix ('{d.informat}'){informat}")
    job.add_argument("-l", "--function", default=d.function,
                     help=f"Lambda function{function} ('{d.function}')")
    job.add_argument(
        "-r", "--regions", default=",".join(SiteOptions.regions),
        help=f"comma-separated regions ('{','.join(SiteOptions.regions)}')",
    )


@subcommand
def _register_png2y4m(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from mu.options import Png2Y4MOptions

    p = sub.add_parser(
        "png2y4m",
        help="convert PNG frames in S3 to Y4M chunks on many workers",
        description="Convert s3://BUCKET/VIDEO-INFORMAT/%08d.png into "
        "s3://BUCKET/VIDEO-y4m_FF/%08d.y4m, FRAMES frames per worker. With --backend local "
        "(the default) everything runs on this machine: an embedded Lambda emulator and S3, "
        "ephemeral keys, the binary built from function/png2y4m.",
    )
    d = Png2Y4MOptions()
    _add_video_job_arguments(p, d, frames="frames per chunk", informat="", function="")
    _add_site_arguments(p, regions=False)
    files = p.add_argument_group("files")
    files.add_argument("--input-dir", help="upload DIR/*.png as the input frames first")
    files.add_argument("--output-dir", help="download every output chunk here after the run")
    files.add_argument(
        "--binary",
        default=d.binary,
        help="local backend: the png2y4m binary to lambdaize; none: the one a worker started "
        "from a checkout runs (default: the one built from function/png2y4m)",
    )
    _add_run_arguments(p)
    p.set_defaults(func=_cmd_png2y4m)


def _png2y4m_options(
    args: argparse.Namespace,
) -> tuple[Png2Y4MOptions, RunOptions, SiteOptions]:
    from mu.apps.png2y4m_run import worker_command
    from mu.options import Png2Y4MOptions

    job = Png2Y4MOptions(
        workers=args.workers, offset=args.offset, bucket=args.bucket, function=args.function,
        input_dir=args.input_dir, output_dir=args.output_dir, frames=args.frames,
        video=args.video, informat=args.informat, binary=args.binary,
    )
    return job, _run_options(args), _site_options(args, worker_command(args.binary))


def parse_png2y4m(argv: Sequence[str]) -> tuple[Png2Y4MOptions, RunOptions, SiteOptions]:
    """The typed options of ``mu png2y4m ARGV`` (for tools and tests that run the job
    themselves through :func:`mu.runopts.run`).

    Raises:
        ConfigError: a bad value (workers < 1, no region...).
        SystemExit: argparse's own refusals (an unknown flag), as on the command line.
    """
    args = build_parser().parse_args(["png2y4m", *argv])
    return _png2y4m_options(args)


def _cmd_png2y4m(args: argparse.Namespace) -> int:
    from mu.apps.png2y4m_run import Png2Y4MJob

    job, run_options, site_options = _png2y4m_options(args)
    return _run_on_site(Png2Y4MJob(job), run_options, site_options).exit_status


@subcommand
def _register_encode(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from mu.apps.encode_run import EncodeOptions

    p = sub.add_parser(
        "encode",
        help="encode PNG frames (or Y4M chunks) in S3 to VP9/VP8 on many workers, stitched",
        description="Encode s3://BUCKET/VIDEO-INFORMAT/%08d.png (or, with -i y4m, the Y4M "
        "chunks s3://BUCKET/VIDEO-y4m_FF/%08d.y4m that `mu png2y4m` writes) into "
        "s3://BUCKET/VIDEO-CODEC_FF/%08d.ivf, FRAMES frames per worker; each worker runs "
        "png2y4m and vpxenc in one invocation. When every chunk is there they are stitched "
        "into s3://BUCKET/VIDEO.ivf (and into --output-dir). With --backend local (the "
        "default) everything runs on this machine.",
    )
    d = EncodeOptions()
    _add_video_job_arguments(p, d, frames="frames per chunk; each chunk starts with a keyframe",
                             informat="; 'y4m': Y4M chunks",
                             function=" carrying png2y4m and vpxenc")
    enc = p.add_argument_group("encoder (vpxenc's options)")
    enc.add_argument("--codec", choices=("vp9", "vp8"), default=d.codec,
                     help=f"the codec ({d.codec})")
    speed = enc.add_mutually_exclusive_group()
    speed.add_argument("--good", dest="realtime", action="store_false", default=False,
                       help="good-quality deadline (the default)")
    speed.add_argument("--rt", dest="realtime", action="store_true",
                       help="realtime deadline: much faster, lower quality for the bits")
    enc.add_argument("--cpu-used", type=int, default=d.cpu_used, metavar="N",
                     help=f"speed against quality, higher is faster ({d.cpu_used})")
    rate = enc.add_mutually_exclusive_group()
    rate.add_argument("--cq-level", type=int, default=d.cq_level, metavar="N",
                      help=f"constant quality, 0 (best) to 63 ({d.cq_level})")
    rate.add_argument("--target-bitrate", type=int, metavar="K",
                      help="variable bitrate aiming at K kbit/s instead of --cq-level")
    enc.add_argument("--threads", type=int, default=d.threads, metavar="N",
                     help=f"encoder threads in each worker ({d.threads})")
    _add_site_arguments(p, regions=False, by_hand=False)
    files = p.add_argument_group("files")
    files.add_argument("--input-dir", help="upload DIR/*.png as the input frames first")
    files.add_argument("--output-dir", help="download the chunks and the stitched video here")
    files.add_argument("--binary", default=d.binary,
                       help="local backend: the png2y4m binary to lambdaize (default: the one "
                       "built from function/png2y4m)")
    files.add_argument("--encoder", default=d.encoder,
                       help="local backend: the vpxenc binary shipped beside it (default: the "
                       "one built from function/vpxenc)")
    _add_run_arguments(p, by_hand=False)
    p.set_defaults(func=_cmd_encode)


def _cmd_encode(args: argparse.Namespace) -> int:
    from mu.apps.encode_run import EncodeJob, EncodeOptions

    if args.backend == "none":
        raise ConfigError("mu encode runs on --backend local or lambda (its workers call "
                          "./png2y4m and ./vpxenc inside the function)")
    options = EncodeOptions(
        workers=args.workers, offset=args.offset, bucket=args.bucket, function=args.function,
        input_dir=args.input_dir, output_dir=args.output_dir, frames=args.frames,
        video=args.video, informat=args.informat, binary=args.binary, encoder=args.encoder,
        codec=args.codec, realtime=args.realtime, cpu_used=args.cpu_used,
        cq_level=args.cq_level, target_bitrate=args.target_bitrate, threads=args.threads,
    )
    job = EncodeJob(options)
    return _run_on_site(job, _run_options(args), _site_options(args)).exit_status


@subcommand
def _register_denoise(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from mu.apps.denoise import MAX_RADIUS
    from mu.apps.denoise_run import DenoiseOptions

    p = sub.add_parser(
        "denoise",
        help="temporally denoise Y4M chunks in S3 on many workers that trade halo frames "
        "through the relay",
        description="Filter s3://BUCKET/VIDEO-y4m_FF/%08d.y4m (the chunks `mu png2y4m` "
        "writes) into s3://BUCKET/VIDEO-y4m_FF-tfR/%08d.y4m, one chunk per worker: output "
        "frame t is the binomial average of input frames t-R..t+R. Each worker sends its "
        "first and last R frames to its neighbours through the relay beside the coordinator "
        "and receives theirs, so the chunks are the whole video filtered in one piece. With "
        "--backend local (the default) everything runs on this machine.",
    )
    d = DenoiseOptions()
    _add_video_job_arguments(p, d, frames="frames per chunk, as the chunks were made",
                             informat=None, function=" carrying png2y4m and denoise")
    flt = p.add_argument_group("filter")
    flt.add_argument("--radius", type=int, default=d.radius, metavar="R",
                     help=f"average frames t-R..t+R, 0..{MAX_RADIUS}, at most -f ({d.radius})")
    flt.add_argument("--halo-timeout", type=float, default=d.halo_timeout, metavar="SECONDS",
                     help="how long a worker waits for a neighbour's frames before it reads "
                     f"the neighbour's chunk from S3 instead ({d.halo_timeout:g})")
    _add_site_arguments(p, regions=False, by_hand=False)
    files = p.add_argument_group("files")
    files.add_argument("--input-dir", help="upload DIR/*.y4m (sorted) as chunks 0, 1, ... first")
    files.add_argument("--output-dir", help="download every output chunk here after the run")
    files.add_argument("--binary", default=d.binary,
                       help="local backend: the png2y4m binary to lambdaize (default: the one "
                       "built from function/png2y4m)")
    files.add_argument("--denoiser", default=d.denoiser,
                       help="local backend: the denoise binary shipped beside it (default: the "
                       "one built from function/denoise)")
    _add_run_arguments(p, by_hand=False)
    add_relay_arguments(p)
    p.set_defaults(func=_cmd_denoise)


def _denoise_options(
    args: argparse.Namespace,
) -> tuple[DenoiseOptions, RunOptions, SiteOptions]:
    from mu.apps.denoise_run import DenoiseOptions

    if args.backend == "none":
        raise ConfigError("mu denoise runs on --backend local or lambda (its workers call "
                          "./denoise inside the function and meet at the relay)")
    options = DenoiseOptions(
        workers=args.workers, offset=args.offset, bucket=args.bucket, function=args.function,
        input_dir=args.input_dir, output_dir=args.output_dir, frames=args.frames,
        video=args.video, binary=args.binary, denoiser=args.denoiser, radius=args.radius,
        halo_timeout=args.halo_timeout,
    )
    return options, _run_options(args), _site_options(args)


def parse_denoise(argv: Sequence[str]) -> tuple[DenoiseOptions, RunOptions, SiteOptions]:
    """The typed options of ``mu denoise ARGV`` (for tools and tests that run the job
    themselves through :func:`mu.runopts.run`).

    Raises:
        ConfigError: a bad value.
        SystemExit: argparse's own refusals (an unknown flag), as on the command line.
    """
    return _denoise_options(build_parser().parse_args(["denoise", *argv]))


def _cmd_denoise(args: argparse.Namespace) -> int:
    from mu.apps.denoise_run import DenoiseJob

    options, run_options, site_options = _denoise_options(args)
    return _run_on_site(DenoiseJob(options), run_options, site_options).exit_status


@subcommand
def _register_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from mu.options import JobOptions

    p = sub.add_parser(
        "run",
        help="run a job of your own: MODULE:StartState on N workers",
        description="Run the job whose first state is the class StartState in the Python "
        "module MODULE (found in the current directory or on the Python path), one actor per "
        "worker, with -b BUCKET in every worker's payload. With --backend local (the "
        "default) the function is the worker runtime alone, deployed to the embedded "
        "emulator: the states' run: commands carry their own command lines.",
    )
    d = JobOptions()
    p.add_argument("state", metavar="MODULE:StartState", help="the job's first state class")
    job = p.add_argument_group("job")
    job.add_argument("-n", "--workers", type=int, default=d.workers,
                     help=f"number of workers/actors ({d.workers})")
    job.add_argument("-o", "--offset", type=int, default=d.offset,
                     help=f"first actor number ({d.offset})")
    job.add_argument("-b", "--bucket", required=True, help="the workers' S3 bucket")
    job.add_argument("-l", "--function", default=d.function,
                     help=f"Lambda function ('{d.function}'; deployed for you on the local "
                     "backend)")
    _add_site_arguments(p, regions=True)
    files = p.add_argument_group("files")
    files.add_argument("--input-dir", help="upload every file under DIR first (key: its path "
                       "below DIR)")
    files.add_argument("--output-dir", help="download the objects the run wrote here after "
                       "the run (key: path below DIR)")
    files.add_argument("--output-prefix", default="", help="only the objects under this "
                       "prefix (default: every object not uploaded from --input-dir)")
    _add_run_arguments(p)
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from mu.apps.custom import StateJob, load_state
    from mu.options import JobOptions

    job = StateJob(load_state(args.state), JobOptions(
        workers=args.workers, offset=args.offset, bucket=args.bucket, function=args.function,
        input_dir=args.input_dir, output_dir=args.output_dir,
    ), output_prefix=args.output_prefix)
    return _run_on_site(job, _run_options(args), _site_options(args)).exit_status


def run_job(
    first_state: Callable[..., MachineState],
    *,
    workers: int = 1,
    bucket: str,
    backend: str = "local",
    input_dir: str | None = None,
    output_dir: str | None = None,
    output_prefix: str = "",
    function: str | None = None,
    regions: Sequence[str] | None = None,
    run: RunOptions | None = None,
    site: SiteOptions | None = None,
    out: TextIO | None = None,
) -> RunResult:
    """Run a job of your own, as ``mu run`` does, and return its :class:`~mu.runopts.RunResult`.

    Args:
        first_state: the job's first state class (it receives each worker's hello).
        workers: actors, one worker each.
        bucket: the workers' S3 bucket (made on the local backend if missing).
        backend: ``"local"`` (emulator and S3 on this machine), ``"lambda"`` or ``"none"``.
        input_dir: upload every file under it first (key: its path below it).
        output_dir: download the objects the run wrote here afterwards.
        output_prefix: only those under this prefix.
        function: the Lambda function (default ``mu-runtime``, deployed for you locally).
        regions: where to invoke (default ``us-east-1``).
        run: :class:`~mu.options.RunOptions` (deadlines, retries, keys...), else defaults.
        site: :class:`~mu.options.SiteOptions` (endpoints...), else defaults for ``backend``.
        out: where progress and the report go (default stderr).

    Returns:
        the run's :class:`~mu.runopts.RunResult` (``exit_status`` 0 if every actor finished;
        ``run`` the coordinator's account; ``outputs`` the files downloaded).

    Raises:
        ConfigError: a bad option (a bucket missing, workers < 1, an unknown backend).

    >>> result = mu.run_job(Convert, workers=2, bucket="jobs", input_dir="in", output_dir="out")
    >>> result.exit_status
    0
    """
    import dataclasses

    from mu.apps.custom import StateJob
    from mu.options import JobOptions, RunOptions, SiteOptions, split_regions

    options = JobOptions(workers=workers, bucket=bucket, input_dir=input_dir,
                         output_dir=output_dir, function=function or JobOptions.function)
    where = dataclasses.replace(site or SiteOptions(), backend=backend)
    if regions is not None:
        where = dataclasses.replace(where, regions=split_regions(regions))
    job = StateJob(first_state, options, output_prefix=output_prefix)
    return _run_on_site(job, run or RunOptions(port=0), where, out)


@subcommand
def _register_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole flow locally, frames to Y4M, denoised, to a VP9 video, and verify it",
        description="Make 24 frames of 1280x720 16-bit content, convert them with 4 workers "
        "x 6 frames on the local backend (embedded emulator and S3), download the Y4M "
        "chunks, verify them against the Python reference, denoise them with 4 workers "
        "trading edge frames through the relay and check the result against the one-piece "
        "reference, encode them to VP9 with 4 workers into demo.ivf, check it with vpxdec, "
        "and draw the timelines.",
    )
    p.add_argument("--out", default="demo-out", help="output directory (default ./demo-out)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from backends import get_backend
    from mu.demo import run_demo

    site = get_backend("local")
    try:
        return run_demo(args.out, site)
    finally:
        site.close()


def add_relay_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--relay-port`` for a job whose workers talk through the relay (``needs_relay``);
    :func:`_run_options` puts it into :attr:`mu.options.RunOptions.relay_port`."""
    from mu.options import RunOptions

    default = RunOptions.relay_port
    parser.add_argument(
        "--relay-port", type=int, default=default, metavar="N",
        help=f"the relay beside the coordinator listens on this port ({default}; 0 picks "
        "a free one); the workers get its address in their payload",
    )


@subcommand
def _register_relay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from mu.relay_core import DEFAULT_RELAY_PORT

    p = sub.add_parser(
        "relay",
        help="run the worker-to-worker relay on its own (jobs driven by hand)",
        description="Pair workers that dial in and say HELLO_STATE:<run>:<me>:<partner>: "
        "each frame a worker sends goes to the connection whose <me> is its <partner> in "
        "the same run; frames for a partner not connected are held for 600 s. Clients "
        "must present a certificate from the CA (-c) unless --no-tls. Prints `mu relay: "
        "listening on HOST:PORT` once it accepts, serves until Ctrl-C or SIGTERM, then "
        "prints its statistics.",
    )
    p.add_argument("-c", "--ca-cert", metavar="FILE", help="CA certificate (env CA_CERT)")
    p.add_argument("-s", "--server-cert", metavar="FILE",
                   help="the relay's certificate, signed by the CA (env SRV_CERT)")
    p.add_argument("-k", "--server-key", metavar="FILE", help="its key (env SRV_KEY)")
    p.add_argument("--no-tls", action="store_true",
                   help="plain TCP: anyone who can reach the port can pair (debugging only)")
    p.add_argument("--token", default=None,
                   help="accept only hellos whose <run> is this run token (default: any)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (127.0.0.1)")
    p.add_argument("--port", default=str(DEFAULT_RELAY_PORT), metavar="N",
                   help=f"listen port ({DEFAULT_RELAY_PORT}; 0 picks a free one)")
    p.set_defaults(func=_cmd_relay)


def _cmd_relay(args: argparse.Namespace) -> int:
    import os

    from mu.relay import Relay

    try:
        port = int(args.port)
    except ValueError:
        raise ConfigError(f"--port {args.port!r} is not a number") from None
    files = {
        "-c/CA_CERT": args.ca_cert or os.environ.get("CA_CERT"),
        "-s/SRV_CERT": args.server_cert or os.environ.get("SRV_CERT"),
        "-k/SRV_KEY": args.server_key or os.environ.get("SRV_KEY"),
    }
    keys = None
    if args.no_tls:
        if args.ca_cert or args.server_cert or args.server_key:
            raise ConfigError("--no-tls and -c/-s/-k exclude each other")
    else:
        missing = [name for name, value in files.items() if not value]
        if missing:
            raise ConfigError(f"the relay needs its keys: give {', '.join(missing)} (the "
                              "run's CA and a certificate it signed, e.g. from `mu genkeys`), "
                              "or --no-tls")
        from mu.tls import KeySet

        ca, cert, key = files.values()
        assert ca and cert and key
        keys = KeySet.load(ca, cert, key)
    relay = Relay(keys, args.token, args.host, port)
    relay.start()
    try:
        host, bound = relay.address
        print(f"mu relay: listening on {host}:{bound}", flush=True)
        relay.wait_stopped()
    except (KeyboardInterrupt, Terminated):
        pass
    finally:
        relay.stop()
    if relay.error is not None:
        raise MuError(f"the relay stopped: {relay.error}")
    print(f"mu relay: {relay.stats().line()}", flush=True)
    return 0


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
