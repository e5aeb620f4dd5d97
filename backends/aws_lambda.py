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

Accounting is not done here: :class:`backends.ledger.InvokeLedger` keeps it, pure and
clock-free. The pump (``_EventPump``) asks the ledger which invocation to send next, matches
each response with the oldest request in flight on its connection (a connection answers in
order) and tells the ledger what came back or that a connection was lost; the ledger decides
retries (429, whose ``retryAfterSeconds`` or ``Retry-After`` is honoured, capped, and 5xx, with
bounded exponential backoff and jitter, up to ``max_attempts`` sends), resends what a lost
connection had in flight (at-least-once; counted in :attr:`LambdaLauncher.last_stats` as
``resent``), and when to give up. Any other 4xx (unknown function, bad credentials, payload
too large) would hit every invocation alike, so the launch stops with
:class:`LaunchAborted`, which carries the partial report. The pump takes its settings as one
frozen object (``_PumpSettings``) and the signer, resolver and clock as functions, never the
launcher itself. Every invocation ends accepted or failed exactly once; nothing is counted
twice.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import logging
import os
import random
import selectors
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials
from botocore.httpsession import get_cert_path

from backends.ledger import Backoff, InvokeLedger
from mu.aws import aws_errors as _aws_errors
from mu.errors import ConfigError, LaunchError
from mu.launch import FunctionSpec, LaunchReport, LaunchSpec

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
# The fast Event sender: a thin HTTP pump; the ledger (backends.ledger) keeps the account


@dataclass(frozen=True)
class _PumpSettings:
    """What the pump takes from the launcher (see :class:`LambdaLauncher`'s arguments)."""

    connections: int
    pipeline: int
    io_timeout: float
    verify: bool | str
    resign_after: float = RESIGN_AFTER


@dataclass
class _Target:
    """One region's endpoint and its pre-signed request."""

    region: str
    host: str
    port: int
    tls: bool
    request: bytes = b""
    signed_at: float | None = None


_CONNECTING, _HANDSHAKING, _READY = "connecting", "handshaking", "ready"


class _Conn:
    """One keep-alive connection and the requests in flight on it, oldest first."""

    __slots__ = ("events", "inflight", "last_io", "outbuf", "rbuf", "sock", "state", "target")

    def __init__(self, target: _Target, sock: socket.socket, state: str, now: float) -> None:
        self.target = target
        self.sock = sock
        self.state = state
        self.inflight: deque[int] = deque()
        self.outbuf = bytearray()
        self.rbuf = bytearray()
        self.events = 0
        self.last_io = now


def _ssl_context(verify: bool | str) -> ssl.SSLContext:
    """The client context for https endpoints (``verify``: True, False or a CA file)."""
    if verify is False:
        context = ssl._create_unverified_context()
    else:
        context = ssl.create_default_context(cafile=get_cert_path(verify))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


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


class _EventPump:
    """One launch's selectors loop: connections, TLS and HTTP/1.1 for an :class:`InvokeLedger`.

    The pump owns the sockets and the clock and decides nothing about invocations: it asks the
    ledger what to send (``take``), tells it what came back (``answered``, ``lost``,
    ``connect_failed``) and raises :class:`LaunchAborted` when the ledger says so.

    Args:
        settings: connections per region, pipeline depth, silence limit, TLS verification.
        ledger: the launch's account.
        targets: one endpoint per region of the ledger.
        sign: the signed Invoke request for a region (called again every ``resign_after``).
        resolve: ``(host, port)`` -> the address to connect to (raises ``OSError``).
        clock: the monotonic clock.
    """

    def __init__(
        self,
        settings: _PumpSettings,
        ledger: InvokeLedger,
        targets: Sequence[_Target],
        *,
        sign: Callable[[str], bytes],
        resolve: Callable[[str, int], tuple[str, int]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.targets = targets
        self.sign = sign
        self.resolve = resolve
        self.clock = clock
        self.selector = selectors.DefaultSelector()
        self.conns: list[_Conn] = []
        self.ssl_context: ssl.SSLContext | None = None
        self._stats = {"connections": 0, "reconnects": 0, "resigned": 0}

    def statistics(self) -> dict[str, int]:
        """Connections opened, reopened after a loss, requests resent, re-signings."""
        return {**self._stats, "resent": self.ledger.resent}

    # -- lifecycle ----------------------------------------------------------------------

    def run(self) -> LaunchReport:
        """Send until every invocation has ended; the ledger's report.

        Raises:
            LaunchAborted: the ledger saw an answer no retry can change, or a region could
                not be reached.
        """
        try:
            depth = self.settings.pipeline
            for target in self.targets:
                wanted = min(self.settings.connections, -(-self.ledger.ready(target.region) // depth))
                for _ in range(wanted):
                    self._open(target)
            self._loop()
            return self.ledger.report(self.clock())
        finally:
            for conn in list(self.conns):
                self._close(conn)
            self.selector.close()

    def _abort(self, message: str) -> None:
        raise LaunchAborted(message, self.ledger.report(self.clock()))

    # -- connections --------------------------------------------------------------------

    def _open(self, target: _Target) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        try:
            addr = self.resolve(target.host, target.port)
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
        conn = _Conn(target, sock, _CONNECTING, self.clock())
        self.conns.append(conn)
        self._stats["connections"] += 1
        self._watch(conn, selectors.EVENT_WRITE)

    def _connect_failed(self, target: _Target, reason: str) -> None:
        if self.ledger.connect_failed(target.region):
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
        """A connection closed or broke: what it had in flight goes back; open another."""
        target = conn.target
        was_ready = conn.state == _READY
        self._close(conn)
        if conn.inflight:
            self.ledger.lost(conn.inflight, reason, self.clock())
            conn.inflight.clear()
        if not was_ready:
            self._connect_failed(target, reason)
        if self.ledger.has_work(target.region):
            self._stats["reconnects"] += 1
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
                self.ssl_context = _ssl_context(self.settings.verify)
            self._unwatch_for_wrap(conn)
            conn.sock = self.ssl_context.wrap_socket(
                conn.sock, server_hostname=conn.target.host, do_handshake_on_connect=False
            )
            conn.state = _HANDSHAKING
            self._handshake(conn)
        else:
            conn.state = _READY
            self.ledger.connected(conn.target.region)

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
        self.ledger.connected(conn.target.region)
        self._watch(conn, selectors.EVENT_READ)

    # -- the loop -----------------------------------------------------------------------

    def _loop(self) -> None:
        ledger = self.ledger
        depth = self.settings.pipeline
        io_timeout = self.settings.io_timeout
        resign_after = self.settings.resign_after
        while not ledger.finished:
            now = self.clock()
            ledger.release(now)
            for target in self.targets:
                if not ledger.ready(target.region):
                    continue
                if target.signed_at is None or now - target.signed_at > resign_after:
                    if target.signed_at is not None:
                        self._stats["resigned"] += 1
                    target.request = self.sign(target.region)
                    target.signed_at = now
                if not any(c.target is target for c in self.conns):
                    self._open(target)
            for conn in list(self.conns):
                if conn.state != _READY:
                    continue
                inflight = conn.inflight
                if len(inflight) < depth:
                    region, request = conn.target.region, conn.target.request
                    while len(inflight) < depth:
                        index = ledger.take(region, now)
                        if index is None:
                            break
                        inflight.append(index)
                        conn.outbuf += request
                        conn.last_io = now
                if conn.outbuf:
                    self._flush(conn)
            timeout = 1.0
            due = ledger.next_due()
            if due is not None:
                timeout = max(0.0, min(timeout, due - self.clock()))
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
            now = self.clock()
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
        received = False
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
            received = True
            if not (isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending()):
                break
        if received:
            conn.last_io = self.clock()
        now = conn.last_io
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
            self._answered(conn.inflight.popleft(), response, now)
            if response.close:
                self._lost(conn, "server closed the connection")
                return
        if eof:
            self._lost(conn, f"{conn.target.host} closed the connection")

    def _answered(self, index: int, response: _Response, now: float) -> None:
        status = response.status
        if 200 <= status < 300:
            self.ledger.answered(index, status, now)
            return
        code, message, retry_after = _error_code(response.headers, response.body)
        abort = self.ledger.answered(index, status, now, code, message, retry_after)
        if abort is not None:
            self._abort(abort)


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
        ledger = InvokeLedger(
            spec.function_name,
            spec.count,
            spec.regions,
            now=time.monotonic(),
            max_attempts=self.max_attempts,
            backoff=Backoff(self.backoff_base, self.backoff_cap),
            rng=self._random,
        )
        settings = _PumpSettings(
            connections=max(1, self.connections),
            pipeline=max(1, self.pipeline),
            io_timeout=self.io_timeout,
            verify=self.verify,
        )
        pump = _EventPump(
            settings,
            ledger,
            [self._target(region) for region in regions],
            sign=lambda region: self._signed_invoke(region, spec.function_name, spec.payload),
            resolve=self._resolve,
        )
        try:
            return pump.run()
        finally:
            self.last_stats = pump.statistics()

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

    def _signed_invoke(self, region: str, function_name: str, payload: bytes) -> bytes:
        """The raw bytes of one signed Event Invoke request to ``region``."""
        base = self.endpoint_url or f"https://lambda.{region}.amazonaws.com"
        path = _INVOKE_PATH.format(name=quote(function_name, safe=""))
        request = AWSRequest(
            method="POST",
            url=base + path,
            data=payload,
            headers={"X-Amz-Invocation-Type": "Event", "Content-Type": "application/json"},
        )
        SigV4Auth(self._credentials(), "lambda", region).add_auth(request)
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

    def close(self) -> None:
        """Forget the boto3 clients (their connection pools close with them)."""
        for client in self._clients.values():
            with contextlib.suppress(AttributeError):
                client.close()
        self._clients.clear()

