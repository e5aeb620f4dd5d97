"""Writing environments' logs into CloudWatch Logs, as Lambda does, without ever blocking.

Theory of operation
-------------------
:meth:`LogWriter.put` (called from the runner's loop for every line) only appends to a
queue: it never blocks, never raises, and beyond ``LIMIT`` lines waiting it drops the line
(counted in :attr:`LogWriter.dropped`), so a slow or absent log service never slows or
breaks an invocation. One thread waits for a pause in the lines (50 ms, or at most 1 s, so
that a burst's lines are written after it, each stream's in one call), takes everything
queued at once, groups it by log stream and writes it (``PutLogEvents``, creating the group
and the stream the first time each is seen) into CloudWatch Logs. When the endpoint is the
embedded moto server of this very process (:func:`emulator.s3.served_here`), which serves
CloudWatch Logs on the same port as S3, the thread calls moto's CloudWatch Logs backend
directly, the one that server answers from: the same checks, none of the HTTP, signing and
parsing on both sides (which cost more of the emulator's CPU than the invocations
themselves). Any other endpoint gets the same calls through boto3's ``logs`` client. So
``aws logs`` and boto3 read the logs unchanged: group ``/aws/lambda/FUNCTION``, stream
``YYYY/MM/DD/[$LATEST]ENVIRONMENT_ID``. A failed call is
counted in :attr:`LogWriter.failed` and its lines are lost. :meth:`flush` waits (bounded)
until everything queued so far is written.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from typing import Any

__all__ = ["LIMIT", "LogWriter"]

LIMIT = 100_000  # lines waiting at most
_BATCH = 5_000  # events per PutLogEvents call (AWS allows 10,000 and 1 MiB)
_BATCH_BYTES = 900_000
_QUIET = 0.05  # seconds without a new line before writing what is queued,
_HOLD_MAX = 1.0  # or at most this long after the first


class LogWriter:
    """Lines to CloudWatch Logs at ``endpoint_url`` (None: nowhere; ``put`` does nothing)."""

    def __init__(self, endpoint_url: str | None, region: str = "us-east-1") -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self.dropped = 0
        self.failed = 0
        self._queue: deque[tuple[str, str, int, str]] = deque()
        self._wake = threading.Condition()
        self._queued = 0  # lines put so far
        self._written = 0  # lines handled so far (written, or failed)
        self._closed = False
        self._flushing = False
        self._last_put = 0.0
        self._thread: threading.Thread | None = None
        if endpoint_url:
            self._thread = threading.Thread(target=self._run, name="mu-emulator-logs",
                                            daemon=True)
            self._thread.start()

    def put(self, group: str, stream: str, line: bytes) -> None:
        """Queue one line (its trailing newline is dropped, as Lambda does)."""
        if self._thread is None or self._closed:
            return
        if len(self._queue) >= LIMIT:
            self.dropped += 1
            return
        text = line.decode("utf-8", "replace").rstrip("\n") or " "
        self._last_put = time.monotonic()
        self._queue.append((group, stream, int(time.time() * 1000), text))
        self._queued += 1
        if len(self._queue) == 1:
            with self._wake:
                self._wake.notify()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the lines put so far are written; whether that happened in time."""
        if self._thread is None:
            return True
        target = self._queued
        with self._wake:
            self._flushing = True
            self._wake.notify()
            return self._wake.wait_for(lambda: self._written >= target, timeout)

    def close(self) -> None:
        """Write what is queued (bounded), then stop."""
        if self._thread is None or self._closed:
            return
        self.flush(5.0)
        self._closed = True
        with self._wake:
            self._wake.notify_all()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        client = _sink(self.endpoint_url, self.region)
        made: set[str] = set()  # groups created
        streams_made: set[tuple[str, str]] = set()
        while True:
            with self._wake:
                self._wake.wait_for(lambda: bool(self._queue) or self._closed, 1.0)
                if self._closed and not self._queue:
                    return
            # While lines keep coming (a burst of invocations), wait for a pause (or
            # _HOLD_MAX): each stream's lines then go in one call, after the burst, rather
            # than one call per line competing with it.
            since = time.monotonic()
            while not (self._closed or self._flushing) and (
                    time.monotonic() - self._last_put < _QUIET
                    and time.monotonic() - since < _HOLD_MAX):
                time.sleep(_QUIET)
            self._flushing = False
            batch: list[tuple[str, str, int, str]] = []
            while self._queue:
                batch.append(self._queue.popleft())
            streams: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for group, stream, stamp, text in batch:
                streams.setdefault((group, stream), []).append(
                    {"timestamp": stamp, "message": text})
            for (group, stream), events in streams.items():
                self._send(client, made, streams_made, group, stream, events)
            with self._wake:
                self._written += len(batch)
                self._wake.notify_all()

    def _send(self, client: Any, made: set[str], streams_made: set[tuple[str, str]],
              group: str, stream: str, events: list[dict[str, Any]]) -> None:
        try:
            if group not in made:
                with contextlib.suppress(client.exists):
                    client.create_log_group(logGroupName=group)
                made.add(group)
            if (group, stream) not in streams_made:
                with contextlib.suppress(client.exists):
                    client.create_log_stream(logGroupName=group, logStreamName=stream)
                streams_made.add((group, stream))
            start = 0
            while start < len(events):
                size, end = 0, start
                while end < len(events) and end - start < _BATCH and size < _BATCH_BYTES:
                    size += len(events[end]["message"]) + 26
                    end += 1
                client.put_log_events(logGroupName=group, logStreamName=stream,
                                      logEvents=events[start:end])
                start = end
        except Exception:  # the log service failing must never break an invocation
            self.failed += len(events)


class _Backend:
    """moto's CloudWatch Logs backend of this process, called the way the client is."""

    def __init__(self, region: str) -> None:
        from moto.iam.models import get_account_id_from
        from moto.logs.exceptions import ResourceAlreadyExistsException
        from moto.logs.models import logs_backends

        # The account moto's server gives the environments' requests (key "testing").
        self.backend = logs_backends[get_account_id_from("testing")][region]
        self.exists: type[Exception] = ResourceAlreadyExistsException

    def create_log_group(self, logGroupName: str) -> None:
        self.backend.create_log_group(logGroupName, {})

    def create_log_stream(self, logGroupName: str, logStreamName: str) -> None:
        self.backend.create_log_stream(logGroupName, logStreamName)

    def put_log_events(self, logGroupName: str, logStreamName: str,
                       logEvents: list[dict[str, Any]]) -> None:
        self.backend.put_log_events(logGroupName, logStreamName, logEvents)


class _Client:
    """boto3's ``logs`` client to ``endpoint_url``."""

    def __init__(self, endpoint_url: str, region: str) -> None:
        import boto3
        from botocore.config import Config

        self.client = boto3.client(
            "logs", endpoint_url=endpoint_url, region_name=region,
            aws_access_key_id="testing", aws_secret_access_key="testing",
            config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30))
        self.exists: type[Exception] = self.client.exceptions.ResourceAlreadyExistsException
        self.create_log_group = self.client.create_log_group
        self.create_log_stream = self.client.create_log_stream
        self.put_log_events = self.client.put_log_events


def _sink(endpoint_url: str | None, region: str) -> _Backend | _Client:
    from emulator.s3 import served_here

    if served_here(endpoint_url):
        return _Backend(region)
    assert endpoint_url is not None
    return _Client(endpoint_url, region)
