"""A warm Lambda execution environment in one long-lived process, entered as AWS's runtime
interface client enters it: the handler module is imported once (Init), then
``lambda_handler(event, context)`` is called for every invocation, with a context of
``awslambdaric``'s own class (a stand-in with the same attributes where it is not installed).

``python -m tests.warm_worker`` reads one invocation payload (JSON) per line on standard
input. It prints one JSON line after Init and one after each invocation: the handler's
summary (``null`` after Init) and what the process holds at that moment: its open file
descriptors, threads, child processes, the entries of its temporary folder, its environment,
the identity of the S3 client the worker would use now and every boto3 client made so far. Tests compare them across
invocations to see that nothing of one invocation is left in the next.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

import boto3

_made: list[str] = []  # the service of every boto3 client made in this process
_client = boto3.client


def _counting_client(service: str, *args: Any, **kwargs: Any) -> Any:
    _made.append(service)
    return _client(service, *args, **kwargs)


boto3.client = _counting_client  # before Init, so the handler's clients are counted too

from mu.worker import s3  # noqa: E402  (after the counter is in place)
from mu.worker.lambda_function import lambda_handler  # noqa: E402


class StandInContext:
    """The attributes ``awslambdaric.lambda_context.LambdaContext`` has."""

    def __init__(self, request_id: str, deadline_ms: int, arn: str) -> None:
        self.aws_request_id = request_id
        self.invoked_function_arn = arn
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.client_context = None
        self.identity = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def make_context(request_id: str, deadline_ms: int, arn: str) -> Any:
    try:
        from awslambdaric.lambda_context import LambdaContext
    except ImportError:
        return StandInContext(request_id, deadline_ms, arn)
    return LambdaContext(request_id, None, None, deadline_ms, arn)


def fds() -> dict[str, str]:
    """Open descriptors and what they point to (the listing's own descriptor left out)."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the descriptor of the listing itself, closed by now
    return out


def sockets(open_fds: dict[str, str]) -> list[str]:
    """Each open socket as ``tcp:<remote port>`` (TCP, from ``/proc/self/net``) or ``other``."""
    remote: dict[str, int] = {}
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            remote[fields[9]] = int(fields[2].rsplit(":", 1)[1], 16)
    found = []
    for target in open_fds.values():
        if target.startswith("socket:["):
            inode = target[len("socket:["):-1]
            found.append(f"tcp:{remote[inode]}" if inode in remote else "other")
    return sorted(found)


def children() -> list[int]:
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        if int(data[data.rfind(b")") + 2:].split()[1]) == me:
            found.append(int(name))
    return sorted(found)


def snapshot(summary: dict[str, Any] | None) -> dict[str, Any]:
    region = os.environ.get("AWS_REGION", "")
    open_fds = fds()
    return {
        "summary": summary,
        "fds": open_fds,
        "sockets": sockets(open_fds),
        "threads": sorted(t.name for t in threading.enumerate()),
        "children": children(),
        "tmp": sorted(os.listdir(tempfile.gettempdir())),
        "environ": dict(os.environ),
        "s3_client": id(s3.shared_client(region)),
        "clients_made": list(_made),
        "context_class": type(make_context("x", 0, "x")).__module__,
    }


def main() -> int:
    print(json.dumps(snapshot(None)), flush=True)
    for line in sys.stdin:
        event = json.loads(line)
        deadline = int(time.time() * 1000) + 300_000
        context = make_context(str(uuid.uuid4()), deadline,
                               "arn:aws:lambda:us-east-1:123456789012:function:warm")
        summary = lambda_handler(event, context)
        print(json.dumps(snapshot(summary)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
