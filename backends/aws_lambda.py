"""The ``lambda`` backend: AWS Lambda (or any Lambda-compatible endpoint) through boto3.

Theory of operation
-------------------
Two paths, one per kind of work.

*Control plane* (create, look up, delete functions; set the event-invoke config): plain boto3
clients, one per region, with botocore's ``standard`` retry mode handling throttling. Every
call goes through :func:`aws_errors`, which hands botocore's exception to :mod:`mu.aws`, the
one place where it becomes mu's :class:`~mu.errors.ConfigError` or
:class:`~mu.errors.LaunchError` naming the call, the AWS error and a hint (``from exc``).

*Launch* (start N workers at once): every worker of a run receives the same payload, so the
Invoke request (``POST /2015-03-31/functions/NAME/invocations`` with
``X-Amz-Invocation-Type: Event``) is byte-for-byte the same for all of them. We build and
SigV4-sign it once per region with botocore (credentials from the standard chain) and send
the same bytes N times. A SigV4 signature covers its timestamp and AWS accepts it for a few
minutes, so the request is re-signed every :data:`RESIGN_AFTER` seconds during a long
launch. The bytes go out over a pool of keep-alive HTTP/1.1 connections (TLS for https
endpoints) driven by one ``selectors`` loop in the calling thread; each connection may carry
up to ``pipeline`` requests in flight (1 means no pipelining, the safe choice for AWS).
boto3's own ``invoke`` spends about 1.5 ms of CPU per call; this path spends a few tens of
microseconds.

Accounting: each invocation has an index, a region (round-robin over the regions) and a
record. A connection answers its requests in order, so a response is matched with the oldest
request in flight on that connection. 2xx accepts the invocation. 429 (throttled; the body's
``retryAfterSeconds`` or a ``Retry-After`` header is honoured, capped) and 5xx are retried
with bounded exponential backoff and jitter, up to ``max_attempts`` sends. A request still in
flight when its connection closes or breaks was not answered: it is sent again on another
connection (at-least-once; counted in :attr:`LambdaLauncher.last_stats` as ``resent``). Any
other 4xx (unknown function, bad credentials, payload too large) would hit every invocation
alike, so the launch stops with :class:`LaunchAborted`, which carries the partial report.
Every invocation ends accepted or failed exactly once; nothing is counted twice.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import heapq
import json
import logging
import os
import random
import selectors
import socket
import ssl
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials
from botocore.httpsession import get_cert_path

from mu.aws import aws_errors as _aws_errors
from mu.errors import ConfigError, LaunchError
from mu.launch import FunctionSpec, Invocation, LaunchReport, LaunchSpec

__all__ = [
    "DIRECT_UPLOAD_LIMIT",
    "RESIGN_AFTER",
    "LambdaLauncher",
    "LaunchAborted",
    "aws_errors",
    "code_sha256",
    "known_regions",
    "route_address",
]

log = logging.getLogger(__name__)

RESIGN_AFTER = 60.0
"""Seconds after which the pre-signed Invoke request is signed again (AWS allows ~5 min)."""

DIRECT_UPLOAD_LIMIT = 50 * 1024 * 1024
"""Largest zip sent inline with CreateFunction; bigger ones go through an S3 bucket."""

_INVOKE_PATH = "/2015-03-31/functions/{name}/invocations"
_CONNECT_FAILURES_PER_REGION = 8  # consecutive failed connects before a region gives up


# --------------------------------------------------------------------------------------------
# Errors


class LaunchAborted(LaunchError):
    """A launch stopped early: every further invocation would have failed the same way.

    Attributes:
        report: what had happened until then (accepted invocations stay accepted).
    """

    def __init__(self, message: str, report: LaunchReport) -> None:
        super().__init__(message)
        self.report = report


def aws_errors(action: str, name: str, region: str) -> contextlib.AbstractContextManager[None]:
    """Translate botocore errors around one control-plane call (:func:`mu.aws.aws_errors`).

    The message names the action, the function and the region, then what went wrong
    (:func:`mu.aws.translate`): ``"create function png2y4m_x in us-east-1: access denied
    (AccessDeniedException: ...): check the credentials ..."``.

    Args:
        action: what was being done ("create function", "delete function", ...).
        name: the function name.
        region: the region.

    Raises:
        ConfigError: credentials, profile, access or a missing resource.
        LaunchError: the endpoint unreachable, timing out, throttling or failing.
    """
    return _aws_errors(f"{action} {name} in {region}")


# --------------------------------------------------------------------------------------------
# Helpers


def code_sha256(zip_bytes: bytes) -> str:
    """The CodeSha256 Lambda reports for a bundle: base64 of its SHA-256.

    Args:
        zip_bytes: the zip.

    Returns:
        the base64 digest, as in ``GetFunctionConfiguration``.
    """
    return base64.b64encode(hashlib.sha256(zip_bytes).digest()).decode()


def known_regions() -> set[str]:
    """Every region, over all partitions, where botocore knows a Lambda endpoint."""
    session = boto3.session.Session()
    out: set[str] = set()
    for partition in session.get_available_partitions():
        out.update(session.get_available_regions("lambda", partition_name=partition))
    return out


def route_address(region: str, endpoint_url: str | None = None) -> str:
    """The local address the kernel would use to reach a region's Lambda endpoint.

    Workers dial back to this address. A UDP socket is "connected" (which only consults the
    routing table; no packet is sent) and its local address is read back.

    Args:
        region: the AWS region (its endpoint is ``lambda.REGION.amazonaws.com``).
        endpoint_url: a Lambda-compatible endpoint to use instead.

    Returns:
        the local IPv4 address, e.g. ``"10.0.0.12"``.

    Raises:
        ConfigError: the endpoint does not resolve or is unreachable (pass ``--host-addr``).
    """
    host = urlsplit(endpoint_url).hostname if endpoint_url else f"lambda.{region}.amazonaws.com"
    if not host:
        raise ConfigError(f"endpoint URL {endpoint_url!r} has no host name")
    try:
        infos = socket.getaddrinfo(host, 443, socket.AF_INET, socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ConfigError(
            f"cannot resolve {host} to find the address workers should dial back to "
            f"({exc.strerror}); pass --host-addr"
        ) from exc
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(infos[0][4])
        except OSError as exc:
            raise ConfigError(f"no route to {host} ({exc.strerror}); pass --host-addr") from exc
        address: str = probe.getsockname()[0]
    return address


def _error_code(headers: Mapping[str, str], body: bytes) -> tuple[str, str, float | None]:
    """(AWS error type, message, retry-after seconds) from an error response."""
    code = headers.get("x-amzn-errortype", "").split(":", 1)[0]
    message = ""
    retry_after: float | None = None
    try:
        doc = json.loads(body) if body else {}
    except ValueError:
        doc = {}
    if isinstance(doc, dict):
        code = code or str(doc.get("Type") or doc.get("__type") or doc.get("code") or "")
        message = str(doc.get("message") or doc.get("Message") or "")
        raw = doc.get("retryAfterSeconds")
        if raw is not None:
            with contextlib.suppress(TypeError, ValueError):
                retry_after = float(raw)
    if retry_after is None and "retry-after" in headers:
        with contextlib.suppress(ValueError):
            retry_after = float(headers["retry-after"])
    if not message:
        message = body[:200].decode("utf-8", "replace")
    return code, message, retry_after


# --------------------------------------------------------------------------------------------
# The fast Event sender


@dataclass
class _Record:
    region: str
    attempts: int = 0
    throttled: int = 0
    status: int | None = None
    error: str | None = None
    sent_at: float = 0.0
    done_at: float = 0.0
    done: bool = False
    accepted: bool = False


@dataclass
class _Target:
    """One region's endpoint and its pre-signed request."""

    region: str
    host: str
    port: int
    tls: bool
    request: bytes = b""
    signed_at: float = -1e9
    ready: deque[int] = field(default_factory=deque)
    connect_failures: int = 0
    last_connect_error: str = ""


_CONNECTING, _HANDSHAKING, _READY = "connecting", "handshaking", "ready"


class _Conn:
    """One keep-alive connection and the requests in flight on it, oldest first."""

    __slots__ = ("events", "inflight", "last_io", "outbuf", "rbuf", "sock", "state", "target")

    def __init__(self, target: _Target, sock: socket.socket, state: str) -> None:
        self.target = target
        self.sock = sock
        self.state = state
        self.inflight: deque[int] = deque()
        self.outbuf = bytearray()
        self.rbuf = bytearray()
        self.events = 0
        self.last_io = time.monotonic()


@dataclass(frozen=True)
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes
    close: bool


class _Incomplete(Exception):
    """Not enough bytes buffered for a whole response yet."""


def _parse_response(buf: bytearray) -> tuple[_Response, int]:
    """Parse one HTTP/1.1 response from the front of ``buf``; return it and its length."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        raise _Incomplete
    lines = buf[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise LaunchError(f"malformed HTTP status line {lines[0]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    start = end + 4
    close = headers.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        pos = start
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                raise _Incomplete
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", eol)
                if trailer_end < 0:
                    raise _Incomplete
                return _Response(status, headers, bytes(body), close), trailer_end + 4
            if len(buf) < eol + 2 + size + 2:
                raise _Incomplete
            body += buf[eol + 2 : eol + 2 + size]
            pos = eol + 2 + size + 2
    if "content-length" in headers:
        length = int(headers["content-length"])
    elif status in (204, 304) or status < 200:
        length = 0
    else:
        raise LaunchError("HTTP response without Content-Length or chunked encoding")
    if len(buf) < start + length:
        raise _Incomplete
    return _Response(status, headers, bytes(buf[start : start + length]), close), start + length


class _EventLaunch:
    """One launch: the selectors loop that sends, retries and accounts for N invocations."""

    def __init__(self, launcher: LambdaLauncher, spec: LaunchSpec, targets: list[_Target]) -> None:
        self.launcher = launcher
        self.spec = spec
        self.targets = targets
        self.by_region = {t.region: t for t in targets}
        self.records = [
            _Record(region=spec.regions[i % len(spec.regions)]) for i in range(spec.count)
        ]
        for index, record in enumerate(self.records):
            self.by_region[record.region].ready.append(index)
        self.retries: list[tuple[float, int]] = []  # heap of (due time, index)
        self.remaining = spec.count
        self.selector = selectors.DefaultSelector()
        self.conns: list[_Conn] = []
        self.stats = {"connections": 0, "reconnects": 0, "resent": 0, "resigned": 0}
        self.ssl_context: ssl.SSLContext | None = None
        self.started = time.monotonic()

    # -- lifecycle ----------------------------------------------------------------------

    def run(self) -> LaunchReport:
        try:
            per_region = max(1, self.launcher.connections)
            depth = max(1, self.launcher.pipeline)
            for target in self.targets:
                wanted = min(per_region, -(-len(target.ready) // depth))
                for _ in range(wanted):
                    self._open(target)
            self._loop()
            return self._report()
        finally:
            for conn in list(self.conns):
                self._close(conn)
            self.selector.close()

    def _report(self) -> LaunchReport:
        invocations = tuple(
            Invocation(
                index=i,
                region=r.region,
                accepted=r.accepted,
                status=r.status,
                error=r.error if r.done else (r.error or "not sent: launch aborted"),
                attempts=r.attempts,
                throttled=r.throttled,
                sent_at=r.sent_at,
                done_at=r.done_at,
            )
            for i, r in enumerate(self.records)
        )
        return LaunchReport(invocations, started=self.started, finished=time.monotonic())

    def _abort(self, message: str) -> None:
        raise LaunchAborted(message, self._report())

    # -- connections --------------------------------------------------------------------

    def _open(self, target: _Target) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        try:
            addr = self.launcher._resolve(target.host, target.port)
            err = sock.connect_ex(addr)
        except OSError as exc:
            sock.close()
            self._connect_failed(target, str(exc))
            return
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            self._connect_failed(
                target, f"connect to {target.host}:{target.port}: {os.strerror(err)}"
            )
            return
        conn = _Conn(target, sock, _CONNECTING)
        self.conns.append(conn)
        self.stats["connections"] += 1
        self._watch(conn, selectors.EVENT_WRITE)

    def _connect_failed(self, target: _Target, reason: str) -> None:
        target.connect_failures += 1
        target.last_connect_error = reason
        if target.connect_failures >= _CONNECT_FAILURES_PER_REGION:
            self._abort(
                f"cannot connect to the Lambda endpoint {target.host}:{target.port} "
                f"for region {target.region}: {reason}"
            )

    def _watch(self, conn: _Conn, events: int) -> None:
        if events == conn.events:
            return
        if conn.events == 0:
            self.selector.register(conn.sock, events, conn)
        else:
            self.selector.modify(conn.sock, events, conn)
        conn.events = events

    def _close(self, conn: _Conn) -> None:
        if conn.events:
            self.selector.unregister(conn.sock)
            conn.events = 0
        conn.sock.close()
        if conn in self.conns:
            self.conns.remove(conn)

    def _lost(self, conn: _Conn, reason: str) -> None:
        """A connection closed or broke: resend what it had in flight, open another."""
        target = conn.target
        was_ready = conn.state == _READY
        self._close(conn)
        for index in reversed(conn.inflight):
            self.stats["resent"] += 1
            record = self.records[index]
            if record.attempts >= self.launcher.max_attempts:
                self._finish(index, None, f"no response after {record.attempts} attempts: {reason}")
            else:
                target.ready.appendleft(index)
        conn.inflight.clear()
        if not was_ready:
            self._connect_failed(target, reason)
        if target.ready or any(self.records[i].region == target.region for _, i in self.retries):
            self.stats["reconnects"] += 1
            self._open(target)

    def _connected(self, conn: _Conn) -> None:
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._lost(
                conn, f"connect to {conn.target.host}:{conn.target.port}: {os.strerror(err)}"
            )
            return
        if conn.target.tls:
            if self.ssl_context is None:
                self.ssl_context = self.launcher._ssl_context()
            self._unwatch_for_wrap(conn)
            conn.sock = self.ssl_context.wrap_socket(
                conn.sock, server_hostname=conn.target.host, do_handshake_on_connect=False
            )
            conn.state = _HANDSHAKING
            self._handshake(conn)
        else:
            conn.state = _READY
            conn.target.connect_failures = 0

    def _unwatch_for_wrap(self, conn: _Conn) -> None:
        if conn.events:
            self.selector.unregister(conn.sock)
            conn.events = 0

    def _handshake(self, conn: _Conn) -> None:
        assert isinstance(conn.sock, ssl.SSLSocket)
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._watch(conn, selectors.EVENT_WRITE)
            return
        except (ssl.SSLError, OSError) as exc:
            self._lost(conn, f"TLS handshake with {conn.target.host}: {exc}")
            return
        conn.state = _READY
        conn.target.connect_failures = 0
        self._watch(conn, selectors.EVENT_READ)

    # -- the loop -----------------------------------------------------------------------

    def _loop(self) -> None:
        depth = max(1, self.launcher.pipeline)
        io_timeout = self.launcher.io_timeout
        while self.remaining:
            now = time.monotonic()
            while self.retries and self.retries[0][0] <= now:
                _, index = heapq.heappop(self.retries)
                self.by_region[self.records[index].region].ready.append(index)
            for target in self.targets:
                if target.ready and now - target.signed_at > RESIGN_AFTER:
                    if target.signed_at > 0:
                        self.stats["resigned"] += 1
                    target.request = self.launcher._signed_invoke(
                        target, self.spec.function_name, self.spec.payload
                    )
                    target.signed_at = now
                if target.ready and not any(c.target is target for c in self.conns):
                    self._open(target)
            for conn in list(self.conns):
                if conn.state != _READY:
                    continue
                ready = conn.target.ready
                if ready and len(conn.inflight) < depth:
                    request = conn.target.request
                    while ready and len(conn.inflight) < depth:
                        index = ready.popleft()
                        record = self.records[index]
                        record.attempts += 1
                        if not record.sent_at:
                            record.sent_at = now
                        conn.inflight.append(index)
                        conn.outbuf += request
                    conn.last_io = now
                if conn.outbuf:
                    self._flush(conn)
            timeout = 1.0
            if self.retries:
                timeout = max(0.0, min(timeout, self.retries[0][0] - time.monotonic()))
            for key, events in self.selector.select(timeout):
                conn = key.data
                if conn not in self.conns:
                    continue
                if conn.state == _CONNECTING:
                    self._connected(conn)
                elif conn.state == _HANDSHAKING:
                    self._handshake(conn)
                else:
                    if events & selectors.EVENT_WRITE:
                        self._flush(conn)
                    if events & selectors.EVENT_READ and conn in self.conns:
                        self._read(conn)
            now = time.monotonic()
            for conn in list(self.conns):
                if (conn.inflight or conn.state != _READY) and now - conn.last_io > io_timeout:
                    self._lost(conn, f"no answer from {conn.target.host} in {io_timeout:g} s")

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.outbuf)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0
        except OSError as exc:
            self._lost(conn, f"send to {conn.target.host}: {exc}")
            return
        del conn.outbuf[:sent]
        self._watch(
            conn,
            selectors.EVENT_READ | selectors.EVENT_WRITE if conn.outbuf else selectors.EVENT_READ,
        )

    def _read(self, conn: _Conn) -> None:
        eof = False
        while True:
            try:
                chunk = conn.sock.recv(262144)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except OSError as exc:
                self._lost(conn, f"receive from {conn.target.host}: {exc}")
                return
            if not chunk:
                eof = True
                break
            conn.rbuf += chunk
            conn.last_io = time.monotonic()
            if not (isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending()):
                break
        while conn.rbuf:
            try:
                response, used = _parse_response(conn.rbuf)
            except _Incomplete:
                break
            except (LaunchError, ValueError) as exc:
                self._lost(conn, f"bad response from {conn.target.host}: {exc}")
                return
            del conn.rbuf[:used]
            if not conn.inflight:
                self._lost(conn, f"unsolicited response {response.status} from {conn.target.host}")
                return
            self._answered(conn.inflight.popleft(), response)
            if response.close:
                self._lost(conn, "server closed the connection")
                return
        if eof:
            self._lost(conn, f"{conn.target.host} closed the connection")

    # -- accounting ---------------------------------------------------------------------

    def _finish(self, index: int, status: int | None, error: str | None) -> None:
        record = self.records[index]
        if record.done:  # pragma: no cover - guarded by the in-flight bookkeeping
            raise AssertionError(f"invocation {index} answered twice")
        record.done = True
        record.status = status
        record.error = error
        record.accepted = error is None
        record.done_at = time.monotonic()
        self.remaining -= 1

    def _answered(self, index: int, response: _Response) -> None:
        record = self.records[index]
        status = response.status
        if 200 <= status < 300:
            self._finish(index, status, None)
            return
        code, message, retry_after = _error_code(response.headers, response.body)
        reason = f"{status} {code}: {message}".strip()
        retryable = status == 429 or status >= 500
        if not retryable:
            record.status = status
            self._finish(index, status, reason)
            self._abort(
                f"invoke {self.spec.function_name} in {record.region}: {code or status}: {message}"
            )
        if status == 429:
            record.throttled += 1
        if record.attempts >= self.launcher.max_attempts:
            self._finish(index, status, f"gave up after {record.attempts} attempts: {reason}")
            return
        record.status = status
        delay = self.launcher._backoff(record.attempts, retry_after)
        heapq.heappush(self.retries, (time.monotonic() + delay, index))


# --------------------------------------------------------------------------------------------
# The launcher


class LambdaLauncher:
    """A :class:`mu.launch.Launcher` for AWS Lambda and Lambda-compatible endpoints.

    Args:
        endpoint_url: a Lambda-compatible endpoint (the local emulator, moto) instead of AWS;
            any region name is then accepted.
        session: the boto3 session (credentials from the standard chain by default).
        code_bucket: S3 bucket for bundles above :data:`DIRECT_UPLOAD_LIMIT`.
        s3_endpoint_url: S3 endpoint for ``code_bucket`` (default: AWS, or ``endpoint_url``).
        connections: keep-alive connections per region for launches.
        pipeline: requests in flight per connection (1: no HTTP pipelining).
        max_attempts: sends per invocation before it is reported failed.
        backoff_base: first retry delay in seconds (doubles per attempt, with jitter).
        backoff_cap: largest retry delay in seconds (also caps ``retryAfterSeconds``).
        io_timeout: seconds a connection may stay silent with requests in flight.
        verify: TLS verification for https endpoints (``True``, ``False`` or a CA file).
        direct_upload_limit: zips above this many bytes go through ``code_bucket``.
        check_function: before a launch, look the function up once per region (one
            GetFunctionConfiguration call), so that a wrong name fails before anything is
            sent, also on endpoints that accept Event invokes of unknown functions (moto).

    Example::

        launcher = LambdaLauncher()
        launcher.create_function(FunctionSpec("f", zip_bytes, role=role), "us-east-1")
        report = launcher.launch(LaunchSpec("f", payload, 1000, ("us-east-1", "us-west-2")))
    """

    name = "lambda"

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        session: boto3.session.Session | None = None,
        code_bucket: str | None = None,
        s3_endpoint_url: str | None = None,
        connections: int = 48,
        pipeline: int = 1,
        max_attempts: int = 8,
        backoff_base: float = 0.05,
        backoff_cap: float = 5.0,
        io_timeout: float = 30.0,
        verify: bool | str = True,
        direct_upload_limit: int = DIRECT_UPLOAD_LIMIT,
        check_function: bool = True,
    ) -> None:
        if connections < 1 or pipeline < 1 or max_attempts < 1:
            raise ConfigError(
                f"connections ({connections}), pipeline ({pipeline}) and max_attempts "
                f"({max_attempts}) must all be >= 1"
            )
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        if session is None:
            with _aws_errors("AWS configuration"):  # an unknown AWS_PROFILE fails here
                session = boto3.session.Session()
        self.session = session
        self.code_bucket = code_bucket
        self.s3_endpoint_url = s3_endpoint_url
        self.connections = connections
        self.pipeline = pipeline
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.io_timeout = io_timeout
        self.verify = verify
        self.direct_upload_limit = direct_upload_limit
        self.check_function = check_function
        self.last_stats: dict[str, int] = {}
        self._clients: dict[tuple[str, str], Any] = {}
        self._addresses: dict[tuple[str, int], tuple[str, int]] = {}
        self._regions: set[str] | None = None
        self._random = random.Random()

    def __repr__(self) -> str:
        where = self.endpoint_url or "AWS"
        return f"<LambdaLauncher {where} regions={sorted({r for _, r in self._clients})}>"

    # -- clients ------------------------------------------------------------------------

    def check_region(self, region: str) -> None:
        """Refuse a region botocore does not know (only when talking to AWS itself).

        Raises:
            ConfigError: naming the region.
        """
        if self.endpoint_url:
            return
        if self._regions is None:
            self._regions = known_regions()
        if region not in self._regions:
            raise ConfigError(
                f"unknown region {region!r} (Lambda regions: {', '.join(sorted(self._regions))})"
            )

    def client(self, region: str, service: str = "lambda") -> Any:
        """The boto3 client for ``service`` in ``region`` (one per region, cached).

        Raises:
            ConfigError: unknown region.
        """
        key = (service, region)
        if key not in self._clients:
            self.check_region(region)
            endpoint = self.endpoint_url if service == "lambda" else self.s3_endpoint_url
            # 5 attempts unless the user bounds them with AWS_MAX_ATTEMPTS, which botocore
            # then reads itself.
            retries: Any = {"mode": "standard"}
            if not os.environ.get("AWS_MAX_ATTEMPTS"):
                retries["max_attempts"] = 5
            config = Config(
                retries=retries,
                connect_timeout=10,
                read_timeout=60,
                max_pool_connections=16,
            )
            self._clients[key] = self.session.client(
                service,
                region_name=region,
                endpoint_url=endpoint,
                config=config,
                verify=self.verify,
            )
        return self._clients[key]

    # -- Launcher: control plane --------------------------------------------------------

    def create_function(self, spec: FunctionSpec, region: str) -> dict[str, Any]:
        """Create the function, or update it if it exists; set MaximumRetryAttempts to 0.

        An existing function whose CodeSha256 equals the bundle's keeps its code (no upload).
        Asynchronous retries are switched off: mu retries failed workers itself.

        Args:
            spec: the bundle and its settings.
            region: where to deploy.

        Returns:
            the function configuration (CreateFunction response shape, no ResponseMetadata).

        Raises:
            ConfigError: unknown region, or a bundle too big without a code bucket.
            LaunchError: AWS refused (the message has the error code and message).
        """
        client = self.client(region)
        code = self._code(spec, region)
        settings: dict[str, Any] = {
            "Runtime": spec.runtime,
            "Role": spec.role,
            "Handler": spec.handler,
            "Description": spec.description,
            "Timeout": spec.timeout,
            "MemorySize": spec.memory,
            "Environment": {"Variables": dict(spec.environment)},
        }
        with aws_errors("create function", spec.name, region):
            try:
                conf = client.create_function(
                    FunctionName=spec.name,
                    Code=code,
                    Publish=True,
                    Architectures=[spec.architecture],
                    PackageType="Zip",
                    **settings,
                )
            except client.exceptions.ResourceConflictException:
                conf = self._update(client, spec, code, settings)
            conf = self._wait_ready(client, spec.name, conf)
            client.put_function_event_invoke_config(FunctionName=spec.name, MaximumRetryAttempts=0)
        conf.pop("ResponseMetadata", None)
        return dict(conf)

    def _code(self, spec: FunctionSpec, region: str) -> dict[str, Any]:
        if len(spec.zip_bytes) <= self.direct_upload_limit:
            return {"ZipFile": spec.zip_bytes}
        size = f"{len(spec.zip_bytes) / 1e6:.1f} MB"
        if not self.code_bucket:
            raise ConfigError(
                f"bundle for {spec.name} is {size}, above the "
                f"{self.direct_upload_limit / 1e6:.1f} MB direct-upload limit: pass "
                "--code-bucket BUCKET (in the function's region) to upload it through S3"
            )
        key = f"mu-bundles/{spec.name}/{hashlib.sha256(spec.zip_bytes).hexdigest()}.zip"
        with aws_errors(f"upload bundle s3://{self.code_bucket}/{key} for", spec.name, region):
            self.client(region, "s3").put_object(
                Bucket=self.code_bucket, Key=key, Body=spec.zip_bytes
            )
        return {"S3Bucket": self.code_bucket, "S3Key": key}

    def _update(
        self, client: Any, spec: FunctionSpec, code: dict[str, Any], settings: dict[str, Any]
    ) -> dict[str, Any]:
        current: dict[str, Any] = client.get_function_configuration(FunctionName=spec.name)
        changed = False
        if current.get("CodeSha256") == code_sha256(spec.zip_bytes) and current.get(
            "Architectures", ["x86_64"]
        ) == [spec.architecture]:
            log.info(
                "%s: code unchanged (CodeSha256 %s), not uploaded",
                spec.name,
                current.get("CodeSha256"),
            )
        else:
            self._wait_ready(client, spec.name, current)
            current = client.update_function_code(
                FunctionName=spec.name, Architectures=[spec.architecture], **code
            )
            changed = True
        wanted = {k: v for k, v in settings.items() if k != "Environment"}
        differs = any(current.get(k) != v for k, v in wanted.items()) or (
            current.get("Environment", {}).get("Variables", {})
            != settings["Environment"]["Variables"]
        )
        if differs:
            self._wait_ready(client, spec.name, current)
            current = client.update_function_configuration(FunctionName=spec.name, **settings)
            changed = True
        if changed:
            self._wait_ready(client, spec.name, current)
            current = client.publish_version(FunctionName=spec.name)
        return current

    def _wait_ready(self, client: Any, name: str, conf: dict[str, Any]) -> dict[str, Any]:
        if conf.get("State", "Active") != "Active":
            client.get_waiter("function_active_v2").wait(FunctionName=name)
            conf = client.get_function_configuration(FunctionName=name)
        if conf.get("LastUpdateStatus", "Successful") == "InProgress":
            client.get_waiter("function_updated_v2").wait(FunctionName=name)
            conf = client.get_function_configuration(FunctionName=name)
        return conf

    def function_exists(self, name: str, region: str) -> bool:
        """Whether ``name`` is deployed in ``region``.

        Raises:
            LaunchError: any failure other than "not found".
        """
        client = self.client(region)
        with aws_errors("look up function", name, region):
            try:
                client.get_function_configuration(FunctionName=name)
            except client.exceptions.ResourceNotFoundException:
                return False
        return True

    def delete_function(self, name: str, region: str) -> None:
        """Delete ``name`` in ``region``; a missing function is not an error.

        Raises:
            LaunchError: any failure other than "not found".
        """
        client = self.client(region)
        with aws_errors("delete function", name, region):
            try:
                client.delete_function(FunctionName=name)
            except client.exceptions.ResourceNotFoundException:
                log.debug("delete %s in %s: already gone", name, region)

    # -- Launcher: launch ---------------------------------------------------------------

    def launch(self, spec: LaunchSpec) -> LaunchReport:
        """Send ``spec.count`` Event invocations, round-robin over ``spec.regions``.

        Args:
            spec: function, payload, count and regions.

        Returns:
            one :class:`Invocation` per requested invocation, in index order.

        Raises:
            ConfigError: unknown region.
            LaunchError: no credentials, or the function does not exist in a region.
            LaunchAborted: a non-retryable answer (e.g. the function does not exist); its
                ``report`` holds what was accepted until then.
        """
        regions = list(dict.fromkeys(spec.regions))
        for region in regions:
            self.check_region(region)
            if (
                self.check_function
                and spec.count
                and not self.function_exists(spec.function_name, region)
            ):
                raise LaunchError(
                    f"invoke {spec.function_name} in {region}: function {spec.function_name} "
                    f"does not exist there (deploy it with `mu lambdaize`)"
                )
        if spec.count == 0:
            now = time.monotonic()
            return LaunchReport((), started=now, finished=now)
        targets = [self._target(region) for region in regions]
        run = _EventLaunch(self, spec, targets)
        try:
            return run.run()
        finally:
            self.last_stats = dict(run.stats)

    def _target(self, region: str) -> _Target:
        url = self.endpoint_url or f"https://lambda.{region}.amazonaws.com"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"endpoint URL {url!r} must be http:// or https://HOST[:PORT]")
        tls = parts.scheme == "https"
        return _Target(region, parts.hostname, parts.port or (443 if tls else 80), tls)

    def _credentials(self) -> ReadOnlyCredentials:
        with _aws_errors("find AWS credentials to sign Lambda invocations"):
            creds = self.session.get_credentials()
        if creds is None:
            raise LaunchError(
                "no AWS credentials found (environment, ~/.aws/credentials, SSO or instance "
                "role); configure them with `aws configure`"
            )
        frozen: ReadOnlyCredentials = creds.get_frozen_credentials()
        return frozen

    def _signed_invoke(self, target: _Target, function_name: str, payload: bytes) -> bytes:
        """The raw bytes of one signed Event Invoke request for ``target``."""
        base = self.endpoint_url or f"https://lambda.{target.region}.amazonaws.com"
        path = _INVOKE_PATH.format(name=quote(function_name, safe=""))
        request = AWSRequest(
            method="POST",
            url=base + path,
            data=payload,
            headers={"X-Amz-Invocation-Type": "Event", "Content-Type": "application/json"},
        )
        SigV4Auth(self._credentials(), "lambda", target.region).add_auth(request)
        netloc = urlsplit(base).netloc
        lines = [f"POST {path} HTTP/1.1", f"Host: {netloc}"]
        lines += [f"{k}: {v}" for k, v in request.headers.items() if k.lower() != "host"]
        lines += [f"Content-Length: {len(payload)}", "", ""]
        return "\r\n".join(lines).encode("latin-1") + payload

    def _resolve(self, host: str, port: int) -> tuple[str, int]:
        key = (host, port)
        if key not in self._addresses:
            try:
                info = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise OSError(f"cannot resolve {host}: {exc.strerror}") from exc
            address = info[0][4]
            self._addresses[key] = (str(address[0]), int(address[1]))
        return self._addresses[key]

    def _ssl_context(self) -> ssl.SSLContext:
        if self.verify is False:
            context = ssl._create_unverified_context()
        else:
            context = ssl.create_default_context(cafile=get_cert_path(self.verify))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.backoff_cap, max(0.0, retry_after))
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0 ** (attempt - 1))
        return ceiling / 2 + self._random.uniform(0, ceiling / 2)

    def close(self) -> None:
        """Forget the boto3 clients (their connection pools close with them)."""
        for client in self._clients.values():
            with contextlib.suppress(AttributeError):
                client.close()
        self._clients.clear()

