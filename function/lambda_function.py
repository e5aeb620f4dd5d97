"""The Lambda entry point: ``lambda_function.lambda_handler``.

Deliberately thin. The command this function runs (``./png2y4m -i -d -o ##OUTFILE##
##INFILE##`` for the png2y4m job) sits beside this file in ``mu_command.json``, written by
lambdaize; without that file the command is empty (commands can still come with ``run:cmd``).
Everything else is :func:`mu.worker.session.run`, which returns a JSON-able summary.

Lambda imports this module once per execution environment (Init) and calls
:func:`lambda_handler` for every invocation the environment serves while it stays warm. So
what is made here at module level is made once and reused: the boto3 S3 client
(:func:`mu.worker.s3.warm_up`, for the environment's ``AWS_REGION``). Nothing else an
invocation makes outlives it: :func:`mu.worker.session.run` removes its private directory,
ends its jobs, threads, processes, peer link and sockets, and sets no environment variable.
The handler reads from ``context`` only ``get_remaining_time_in_millis()`` and
``aws_request_id``, which every Lambda context has (AWS's runtime interface client's
included).

Started by hand (``mu png2y4m --backend none`` prints the exact line), it serves one
invocation with the payload in a file and prints the summary as JSON: in an unpacked bundle,
``python3 lambda_function.py payload.json``; in a checkout of mu, give the command the bundle
would carry, ``python3 function/lambda_function.py payload.json --command 'BINARY ARGS'``.
Exit status 0 when the coordinator said quit (mode 0: the command exited 0), 1 otherwise,
2 for an unreadable payload. S3 is found through the standard AWS environment
(credentials, ``AWS_ENDPOINT_URL_S3``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from mu.worker import s3, session

HERE = os.path.dirname(os.path.abspath(__file__))
COMMAND_FILE = "mu_command.json"

if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):  # Init of a Lambda execution environment
    s3.warm_up()


def load_command(directory: str = HERE) -> str:
    """The function's command template from ``mu_command.json`` (empty if absent).

    Args:
        directory: where to look.

    Returns:
        The ``command`` field of the file, or ``""`` if there is no file.

    Raises:
        ValueError: the file exists but is not a JSON object with a string ``command``.
    """
    try:
        with open(os.path.join(directory, COMMAND_FILE), encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return ""
    command = data.get("command", "") if isinstance(data, dict) else None
    if not isinstance(command, str):
        raise ValueError(f"{COMMAND_FILE}: 'command' must be a string, got {command!r}")
    return command


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Serve one invocation.

    Args:
        event: the invocation payload (see DESIGN §3 of the mu docs).
        context: the Lambda context object.

    Returns:
        The worker's summary: how the session ended, commands served, errors.
    """
    return session.run(
        event, command=load_command(), context=context, cwd=HERE, own_process=True
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Serve one invocation by hand (see the module docstring); returns the exit status."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="lambda_function.py",
        description="Serve one mu invocation with the payload in a file, as Lambda would.",
    )
    parser.add_argument("payload", help="the invocation payload (a JSON file; - for stdin)")
    parser.add_argument(
        "--command", help=f"the command template (default: the one in {COMMAND_FILE} here)"
    )
    args = parser.parse_args(argv)
    try:
        if args.payload == "-":
            event = json.load(sys.stdin)
        else:
            with open(args.payload, encoding="utf-8") as handle:
                event = json.load(handle)
    except (OSError, ValueError) as exc:
        print(f"lambda_function.py: cannot read {args.payload!r}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(event, dict):
        print(f"lambda_function.py: {args.payload!r} is not a JSON object", file=sys.stderr)
        return 2
    try:
        command = load_command() if args.command is None else args.command
    except (OSError, ValueError) as exc:
        print(f"lambda_function.py: {exc}", file=sys.stderr)
        return 2
    summary = session.run(event, command=command, context=None, cwd=HERE, own_process=True)
    print(json.dumps(summary))
    return 0 if summary.get("exit") in ("quit", "done") and summary.get("retval", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
