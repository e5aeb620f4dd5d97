"""``mu emulator``: run the emulator and its S3 in the foreground, or show invocation logs.

Theory of operation
-------------------
``serve`` (the default action) starts the embedded S3 first and the Lambda API second, both
on 127.0.0.1, then prints the Lambda and S3 endpoints on the first two lines of standard
output (a script can read them as a readiness signal), the Logs endpoint (moto's, the same
as S3's) on the third, followed by ``export`` lines for a shell. The main thread then waits
on an event that SIGTERM sets (Ctrl-C arrives as KeyboardInterrupt); either way both servers
are stopped in reverse order, which kills and reaps every execution environment and zygote,
before ``run`` returns 0.

``logs FUNCTION [REQUEST_ID]`` prints what the runner recorded of the function's invocations
in ``STATE_DIR/logs/FUNCTION.log``: one invocation's, or all of them, oldest first. Without
``--state-dir`` it looks in the default state dir, then in those of the emulators running
now, which each ``serve`` records while it runs (:mod:`emulator.running`); when it finds
none it names every place it looked.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from emulator import running
from emulator.runner import IDLE_TIMEOUT, KEPT, invocation_logs, log_file
from emulator.server import DEFAULT_STATE_DIR, ThreadedEmulatorServer

__all__ = ["add_arguments", "run"]


def _serve_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The serve options; ``defaults=False`` leaves unset ones to the top-level parser."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--state-dir", default=default(str(DEFAULT_STATE_DIR)),
                        help=f"functions and logs (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--port", type=_port, default=default(0),
                        help="Lambda API port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--s3-port", type=_port, default=default(0),
                        help="S3 port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--concurrency", type=_at_least(1), default=default(1000),
                        help="invocations running at once (default 1000)")
    parser.add_argument("--no-fork-server", action="store_true", default=default(False),
                        help="spawn each execution environment (default: fork it from a "
                        "zygote per function that has imported the runtime)")
    parser.add_argument("--warm-pool", type=_at_least(0), default=default(0),
                        help="execution environments made per function when its code is "
                        "set, ahead of its invocations, never reaped (default 0)")
    parser.add_argument("--spares", type=_at_least(0), default=default(0),
                        help="execution environments per function initialised ahead of its "
                        "cold starts once it has been invoked, and again after a burst "
                        "takes them; reaped like idle ones (default 0)")
    parser.add_argument("--idle-timeout", type=_seconds, default=default(IDLE_TIMEOUT),
                        help="seconds an idle execution environment is kept for warm starts "
                        f"(default {IDLE_TIMEOUT:g})")
    parser.add_argument("--kept", type=_at_least(0), default=default(KEPT),
                        help=f"idle execution environments kept in all (default {KEPT})")


def _port(text: str) -> int:
    """A port number for argparse: 0-65535 (0: a free one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0-65535)")
    return value


def _seconds(text: str) -> float:
    """A number of seconds for argparse: 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds >= 0")
    return value


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``low``."""

    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum of {low}")
        return value

    return check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's command line to ``parser``.

    ``PROG [options]`` and ``PROG serve [options]`` serve in the foreground;
    ``PROG logs FUNCTION [REQUEST_ID] [--state-dir DIR]`` prints invocation logs.
    """
    _serve_options(parser, defaults=True)
    parser.set_defaults(action="serve", function=None, request_id=None, prog=parser.prog)
    sub = parser.add_subparsers(dest="action", metavar="{serve,logs}")
    serve = sub.add_parser("serve", help="serve the Lambda API and S3 until interrupted "
                           "(the default)")
    _serve_options(serve, defaults=False)
    logs = sub.add_parser("logs", help="print the logs of a function's invocations")
    logs.add_argument("function", help="the function")
    logs.add_argument("request_id", nargs="?", help="one invocation (default: all, oldest first)")
    logs.add_argument("--state-dir", default=argparse.SUPPRESS,
                      help=f"functions and logs (default {DEFAULT_STATE_DIR})")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or Ctrl-C, or print logs; the exit status."""
    if getattr(args, "action", None) == "logs":
        return _logs(args.state_dir, args.function, args.request_id)
    from emulator.s3 import S3Server

    s3 = S3Server(port=args.s3_port)
    server: ThreadedEmulatorServer | None = None
    where = "S3"
    previous: Any = None  # the SIGTERM handler to restore, once everything has stopped
    try:
        try:
            s3.start()
            where = "the Lambda API"
            server = ThreadedEmulatorServer(
                state_dir=args.state_dir, s3_endpoint_url=s3.endpoint_url,
                concurrency_limit=args.concurrency, fork_server=not args.no_fork_server,
                port=args.port, warm_pool=args.warm_pool, idle_timeout=args.idle_timeout,
                kept=args.kept, spares=args.spares,
            )
            server.start()
        except OSError as exc:  # a port taken, a state dir that cannot be made
            print(f"{args.prog}: cannot start {where}: {exc}", file=sys.stderr)
            return 1
        # registered, and SIGTERM handled, before the lines that tell a client it is up
        record = running.register(Path(args.state_dir), server.endpoint_url, s3.endpoint_url)
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = signal.signal(signal.SIGTERM, on_signal)
        print(f"Lambda API: {server.endpoint_url}\nS3:         {s3.endpoint_url}\n"
              f"Logs:       {s3.endpoint_url}\n")
        print("# paste into a shell to use the aws CLI or boto3 against it:")
        print(f"export AWS_ENDPOINT_URL_LAMBDA={server.endpoint_url}")
        print(f"export AWS_ENDPOINT_URL_S3={s3.endpoint_url}")
        print(f"export AWS_ENDPOINT_URL_LOGS={s3.endpoint_url}")
        print("export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing")
        print("export AWS_DEFAULT_REGION=us-east-1", flush=True)
        try:
            while not stop.wait(3600):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            running.unregister(record)
    finally:
        if server is not None:
            server.stop()
        s3.stop()
        if previous is not None:  # only now: a second SIGTERM must not cut the stop short
            signal.signal(signal.SIGTERM, previous)
    print("stopped", file=sys.stderr)
    return 0


def _logs(state_dir: str, function: str | None, request_id: str | None) -> int:
    """Print the logs from ``state_dir``; without ``--state-dir``, from the default one or,
    failing that, from the state dirs of the emulators running now (:mod:`emulator.running`)."""
    if not function:
        print("mu emulator logs: name a FUNCTION", file=sys.stderr)
        return 2
    dirs = [Path(state_dir)]
    if Path(state_dir) == DEFAULT_STATE_DIR:  # not given: look where running emulators live
        dirs += [r.state_dir for r in running.running() if r.state_dir not in dirs]
    for where in dirs:
        logs = invocation_logs(log_file(where, function), request_id)
        if logs:
            for log in logs:
                sys.stdout.write(log.decode(errors="replace"))
            return 0
    what = f"invocation {request_id} of " if request_id else ""
    looked = ", ".join(str(log_file(d, function)) for d in dirs)
    print(f"mu emulator logs: no logs for {what}{function} in {looked}; an emulator started "
          "with --state-dir DIR keeps them there: pass the same --state-dir DIR",
          file=sys.stderr)
    return 1
