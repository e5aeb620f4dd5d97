"""``mu logs``: a function's Lambda logs, read from CloudWatch Logs, on AWS or locally.

Theory of operation
-------------------
Lambda writes what a function prints into CloudWatch Logs: log group
``/aws/lambda/FUNCTION``, one stream per execution environment
(``YYYY/MM/DD/[$LATEST]<environment id>``). An environment serves one invocation at a time,
so its stream is a sequence of invocations, each framed by Lambda's own lines::

    START RequestId: 8f5c... Version: $LATEST
    ... what the handler printed ...
    END RequestId: 8f5c...
    REPORT RequestId: 8f5c...\tDuration: 12.34 ms\tBilled Duration: 13 ms\t...

The local emulator writes the same lines into the CloudWatch Logs API of its embedded moto
server. So there is one reader for both backends, boto3's ``logs`` client: pointed at AWS
(``--backend lambda``), or at a running emulator (``--backend local``, the default), found
through the record every serving emulator keeps, or at ``--endpoint-url``: the caller
passes the clients in (:func:`backends.log_sources` makes them).

Reading is ``FilterLogEvents`` over the group (every stream, from ``--since`` on), paged.
:class:`Splitter` (pure) assigns each event to the invocation it belongs to, stream by
stream: from a ``START`` line to the ``REPORT`` line of the same request id; lines outside
any invocation (an environment's Init output, a thread printing after ``REPORT``) form
blocks of their own. Without ``--follow`` the events are printed invocation by invocation,
oldest first (:func:`blocks`), so concurrent invocations do not interleave.
``--request-id`` keeps only that invocation's lines (every attempt of it: an asynchronous
retry has the same request id). ``--follow`` then polls every :data:`POLL` seconds for events
from :data:`FOLLOW_LAG` seconds before the newest one seen (CloudWatch may ingest a line
after a later one of another stream), drops the ones already printed, and prints the rest in
time order until interrupted; Ctrl-C ends it quietly with status 0.

Problems end in one line through mu's error tree: no such log group (the function was never
invoked there, or the name is wrong), no emulator running, an unreachable endpoint, no
credentials (botocore's errors go through :func:`mu.aws.translate`).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TextIO

from mu.errors import ConfigError

if TYPE_CHECKING:
    from mu.options import LogsOptions

__all__ = [
    "FOLLOW_LAG",
    "POLL",
    "LogEvent",
    "Splitter",
    "blocks",
    "log_group",
    "marker",
    "parse_since",
    "read_events",
    "run",
    "select_request",
]

POLL: Final = 1.0
"""Seconds between two reads while following."""
FOLLOW_LAG: Final = 10.0
"""Seconds before the newest event seen from which a follow re-reads (late ingestion)."""

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SINCE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhd])")


def log_group(function: str) -> str:
    """The log group Lambda writes ``function``'s logs into."""
    return f"/aws/lambda/{function}"


def parse_since(text: str) -> float:
    """A ``--since`` duration in seconds: a number and one unit of ``s``, ``m``, ``h``, ``d``.

    >>> parse_since("10m"), parse_since("1.5h"), parse_since("30s")
    (600.0, 5400.0, 30.0)

    Raises:
        ValueError: not a number followed by one of those units.
    """
    found = _SINCE.fullmatch(text.strip())
    if not found:
        raise ValueError(f"{text!r} is not a duration: a number and a unit of s, m, h or d "
                         "(30s, 10m, 2h, 1d)")
    return float(found.group(1)) * _UNITS[found.group(2)]


# ----------------------------------------------------------------------------- pure part


@dataclass(frozen=True)
class LogEvent:
    """One CloudWatch Logs event."""

    stream: str
    timestamp: int  # milliseconds since the epoch
    message: str
    event_id: str = ""


def marker(message: str) -> tuple[str, str] | None:
    """``(kind, request id)`` for Lambda's ``START``/``END``/``REPORT`` lines, else None.

    Both of Lambda's log formats are understood: the text lines
    (``START RequestId: ID Version: $LATEST``) and the JSON ones
    (``{"type": "platform.start", "record": {"requestId": ID}}``).

    >>> marker("START RequestId: abc Version: $LATEST\\n")
    ('START', 'abc')
    >>> marker("REPORT RequestId: abc\\tDuration: 1.00 ms"), marker("hello")
    (('REPORT', 'abc'), None)
    """
    for kind in ("START", "END", "REPORT"):
        prefix = f"{kind} RequestId: "
        if message.startswith(prefix):
            words = message[len(prefix):].split(None, 1)
            return (kind, words[0]) if words else None
    if message.startswith("{") and '"platform.' in message:
        try:
            data = json.loads(message)
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("record"), dict):
            return None
        platform = {"platform.start": "START", "platform.runtimeDone": "END",
                    "platform.report": "REPORT"}.get(str(data.get("type")))
        request = data["record"].get("requestId")
        if platform and isinstance(request, str) and request:
            return platform, request
    return None


class Splitter:
    """Which invocation each event belongs to, stream by stream (sans-IO).

    Feed the events of each stream in order (streams may interleave). An invocation is the
    run of lines from its ``START`` to the ``REPORT`` with the same request id; anything
    else is a loose block (``None``) of its own, ended by the next ``START``.
    """

    def __init__(self) -> None:
        # stream -> (request id of the open invocation or None, block number, whether the
        # next loose line opens a new block)
        self._state: dict[str, tuple[str | None, int, bool]] = {}

    def feed(self, event: LogEvent) -> tuple[str | None, int]:
        """``(request id or None, block number within its stream)`` of ``event``."""
        request, block, fresh = self._state.get(event.stream, (None, -1, True))
        mark = marker(event.message)
        if mark is not None and mark[0] == "START":
            self._state[event.stream] = (mark[1], block + 1, True)
            return mark[1], block + 1
        if request is not None:
            if mark == ("REPORT", request):
                self._state[event.stream] = (None, block, True)
            return request, block
        if fresh:
            block += 1
            self._state[event.stream] = (None, block, False)
        return None, block


def blocks(events: Iterable[LogEvent]) -> list[list[LogEvent]]:
    """The events as invocation blocks (and loose blocks), each in its stream's order,
    blocks ordered by their first event's time (then by the order they were read)."""
    splitter = Splitter()
    found: dict[tuple[str, int], list[LogEvent]] = {}
    for event in events:
        _, block = splitter.feed(event)
        found.setdefault((event.stream, block), []).append(event)
    ordered = sorted(enumerate(found.values()), key=lambda pair: (pair[1][0].timestamp, pair[0]))
    return [group for _, group in ordered]


def select_request(events: Iterable[LogEvent], request_id: str) -> list[LogEvent]:
    """The events of invocation ``request_id`` (every attempt), in the order given."""
    splitter = Splitter()
    return [e for e in events if splitter.feed(e)[0] == request_id]


# ----------------------------------------------------------------------------- reading


class NoLogGroup(ConfigError):
    """The function's log group does not exist at that endpoint."""


class _Reader:
    """FilterLogEvents on one function's log group through a boto3 ``logs`` client."""

    def __init__(self, client: Any, function: str, where: str) -> None:
        self.client = client
        self.group = log_group(function)
        self.where = where

    def events(
        self, start_ms: int | None, streams: Sequence[str] = (), pattern: str = ""
    ) -> list[LogEvent]:
        """Every event from ``start_ms`` on (of ``streams`` only, if given), in time order."""
        from botocore.exceptions import ClientError

        from mu.aws import aws_errors

        params: dict[str, Any] = {"logGroupName": self.group}
        if start_ms is not None:
            params["startTime"] = max(0, start_ms)
        if streams:
            params["logStreamNames"] = list(streams)
        if pattern:
            params["filterPattern"] = pattern
        found: list[LogEvent] = []
        try:
            with aws_errors(f"CloudWatch Logs {self.where}"):
                for page in self.client.get_paginator("filter_log_events").paginate(**params):
                    found.extend(LogEvent(str(e.get("logStreamName", "")), int(e["timestamp"]),
                                          str(e.get("message", "")), str(e.get("eventId", "")))
                                 for e in page.get("events", ()))
        except ConfigError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and cause.response.get("Error", {}).get(
                    "Code") == "ResourceNotFoundException":
                raise NoLogGroup(
                    f"no log group {self.group} {self.where}: the function has not been "
                    "invoked there, or its name is wrong") from cause
            raise
        # FilterLogEvents answers in time order; a stable sort keeps each stream's order.
        found.sort(key=lambda e: e.timestamp)
        return found

    def request_events(self, request_id: str, start_ms: int | None) -> list[LogEvent]:
        """The events of the streams that mention ``request_id``, from ``start_ms`` on."""
        hits = self.events(start_ms, pattern=f'"{request_id}"')
        streams = sorted({e.stream for e in hits})
        return self.events(start_ms, streams=streams) if streams else []


def read_events(client: Any, function: str, where: str, start_ms: int | None = None,
                pattern: str = "") -> list[LogEvent]:
    """Every event of ``function``'s log group from ``start_ms`` on (matching ``pattern``,
    a CloudWatch filter pattern), in time order, through a boto3 ``logs`` client.

    Raises:
        ConfigError: no such log group (a :class:`NoLogGroup`), or the API refused.
    """
    return _Reader(client, function, where).events(start_ms, pattern=pattern)


# ----------------------------------------------------------------------------- printing


def _write(out: TextIO, events: Iterable[LogEvent]) -> None:
    for event in events:
        out.write(event.message.rstrip("\n") + "\n")
    out.flush()


def _first(
    readers: list[_Reader], read: Callable[[_Reader], list[LogEvent]]
) -> tuple[_Reader, list[LogEvent]]:
    """The first reader that has the log group, and what ``read`` finds there."""
    missing: list[NoLogGroup] = []
    for reader in readers:
        try:
            return reader, read(reader)
        except NoLogGroup as exc:
            missing.append(exc)
    if len(missing) == 1:
        raise missing[0]
    places = "; ".join(r.where for r in readers)
    raise NoLogGroup(f"no log group {readers[0].group} in any running emulator ({places}): "
                     "the function has not been invoked there, or its name is wrong")


def _follow(
    reader: _Reader, request_id: str | None, seen: list[LogEvent], start_ms: int | None,
    out: TextIO, clock: Callable[[], float], sleep: Callable[[float], None],
) -> None:
    """Print new events until interrupted (KeyboardInterrupt goes to the caller).

    ``seen``: every event of the group read so far (printed or not), in time order.
    """
    splitter = Splitter()
    for event in seen:
        splitter.feed(event)
    newest = max((e.timestamp for e in seen), default=start_ms or int(clock() * 1000))
    lag = int(FOLLOW_LAG * 1000)
    printed = {(e.stream, e.event_id): e.timestamp for e in seen}
    while True:
        sleep(POLL)
        fresh = [e for e in reader.events(newest - lag) if (e.stream, e.event_id) not in printed]
        chosen = []
        for event in fresh:
            printed[(event.stream, event.event_id)] = event.timestamp
            if request_id is None or splitter.feed(event)[0] == request_id:
                chosen.append(event)
        _write(out, chosen)
        newest = max([newest, *(e.timestamp for e in fresh)])
        for key in [k for k, t in printed.items() if t < newest - lag]:
            del printed[key]  # older than any re-read: cannot come back


def run(
    options: LogsOptions,
    sources: Sequence[tuple[Any, str]],
    *,
    out: TextIO | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Print the logs ``options`` ask for; the exit status.

    Args:
        options: the function, ``since`` (seconds or None), ``follow``, ``request_id``.
        sources: boto3 ``logs`` clients, each with the words that say where it reads
            (:func:`backends.log_sources`); the first that has the log group is used.
        out: where to print (default: standard output).

    Raises:
        ConfigError: no such log group, no credentials, an invocation not found.
        LaunchError: an endpoint that cannot be reached.
    """
    out = out or sys.stdout
    start_ms = None if options.since is None else int((clock() - options.since) * 1000)
    readers = [_Reader(client, options.function, where) for client, where in sources]
    request = options.request_id
    try:
        if request and not options.follow:  # only the streams that mention it
            reader, events = _first(readers, lambda r: r.request_events(request, start_ms))
        else:  # following needs every stream's state
            reader, events = _first(readers, lambda r: r.events(start_ms))
        shown = select_request(events, request) if request else events
        if request and not shown and not options.follow:
            since = f" in the last {_duration(options.since)}" if options.since is not None else ""
            raise ConfigError(f"no invocation {request} in {reader.group}{since} {reader.where}")
        for block in blocks(shown):
            _write(out, block)
        if options.follow:
            _follow(reader, request, events, start_ms, out, clock, sleep)
    except KeyboardInterrupt:
        return 0  # the way to end --follow
    except BrokenPipeError:  # `mu logs f | head`: the reader has all it wanted
        _silence(out)
    return 0


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _silence(out: TextIO) -> None:
    """Point standard output at /dev/null, so the interpreter's final flush stays quiet."""
    import os

    if out is sys.stdout:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
