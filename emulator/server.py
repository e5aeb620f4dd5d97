"""The emulator's HTTP server: HTTP/1.1 keep-alive on 127.0.0.1, started ready, stopped joined.

``start()`` binds (port 0 by default) and returns once the server is serving; ``.url`` and
``.address`` give the real port. ``stop()`` stops accepting, kills every execution
environment and zygote, and joins the runner's thread (a request still being handled in a
thread of its own, CreateFunction unpacking a zip, ends on its own).

Theory of operation
-------------------
The Lambda API is served from the runner's ``asyncio`` loop (:attr:`Runner.loop
<emulator.runner.Runner.loop>`), the thread that also serves the environments' Runtime API:
each connection is a non-blocking socket watched with the loop's ``add_reader`` and
``add_writer``. The server reads what each connection sends, parses each complete request
(request line, headers, a ``Content-Length`` body; keep-alive, pipelining and ``Expect:
100-continue``) and answers in order. An Invoke or a read is handled right there
(:func:`~emulator.responses.blocks`): an Event or DryRun is answered at once, and the
Event it accepted goes to the runner in the same thread, with no hand-over between threads
per invocation; a synchronous invoke is started there, and its answer goes out when the
runner reports its end (:attr:`~emulator.responses.Response.later`), with no thread waiting
for it. Any other request may block (CreateFunction unpacks a zip, anything that writes the
state directory) and is handled in a thread of its own, whose answer the loop sends, so the
loop never waits for the disk. A connection whose request is being handled apart is read
no further until its answer is out. ``http.server`` is not used: its handler parses
headers with the ``email`` package (about a third of a millisecond per request) and needs a
thread per connection.

Whatever a client makes the loop hold is bounded (:class:`Limits`): the number of
connections (at the cap, the one quiet longest is closed to make room), the time a
request's headers and body may take and the time a connection may sit idle (checked once a
second), the body of each request (its operation's limit, and a budget shared by the large
ones, both checked from ``Content-Length`` before the body is read; a refused body is read
and dropped so that the client sees the answer), and what is read ahead or queued for a
client that does not read its answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import selectors
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any

from emulator.errors import TooManyRequests
from emulator.models import FunctionRegistry
from emulator.responses import (
    Request,
    Response,
    blocks,
    body_limit,
    error_response,
    handle,
    too_large,
)
from emulator.runner import IDLE_TIMEOUT, KEPT, Runner

__all__ = ["DEFAULT_STATE_DIR", "Limits", "LocalCloud", "ThreadedEmulatorServer"]

DEFAULT_STATE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mu" / "emulator"
_READY_TIMEOUT = 10.0
_MAX_HEAD = 65536  # bytes of request line and headers
_MAX_HEADERS = 100
_BACKLOG = 1024
_SMALL_BODY = 65536  # bodies up to this size are not counted in the body budget
_READ = 1 << 20  # bytes read at a time
_AHEAD = 65536  # bytes read ahead on a connection whose request is being handled
_MAX_OUT = 1 << 20  # answers queued for a client that does not read: read no more requests
_ACCEPTS = 64  # connections accepted per turn of the loop, so the others are served too
_SWEEP = 1.0  # seconds between checks of the connections' deadlines


@dataclass(frozen=True)
class Limits:
    """What one client may hold of the HTTP server; everything it keeps is bounded.

    Attributes:
        connections: open connections at most. At the cap, a new connection closes the one
            that has been quiet longest, unless a request of its own is being handled (if
            all are, new ones wait in the listen backlog).
        header_timeout: seconds from a request's first byte to the end of its headers.
        request_timeout: seconds from a request's first byte to the end of its body.
        idle_timeout: seconds a connection may stay open with nothing to read or send.
        body_budget: bytes of request bodies larger than 64 KiB received or handled at once,
            reserved as each request's headers arrive; a request that would pass it is
            refused (429, which AWS clients retry) before its body is read.
    """

    connections: int = 4096
    header_timeout: float = 10.0
    request_timeout: float = 120.0
    idle_timeout: float = 60.0
    body_budget: int = 160 * 1024 * 1024


class _Connection:
    __slots__ = (
        "busy",
        "closed",
        "closing",
        "continued",
        "discard",
        "eof",
        "events",
        "fd",
        "head",
        "inbuf",
        "last",
        "outbuf",
        "reserved",
        "sock",
        "started",
    )

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.busy = False  # a request of this connection is being handled apart
        self.eof = False  # the client has sent all it will (its requests are still served)
        self.closing = False  # close once the answers queued are sent
        self.closed = False
        self.continued = False  # "100 Continue" sent for the request being read
        self.events = 0  # what the loop watches it for (selectors.EVENT_READ, _WRITE)
        self.last = now  # when it last brought or took bytes
        self.started = now  # when the first byte of the request being read arrived
        self.head = False  # the headers of the request being read are in
        self.reserved = 0  # bytes of the body budget this connection's request holds
        self.discard = 0  # body bytes of a refused request still to read and drop


class _HTTPServer:
    """The server's callbacks in the runner's loop (see the module's theory of operation):
    every method but the constructor runs in the loop's thread."""

    def __init__(self, address: tuple[str, int], registry: FunctionRegistry,
                 loop: asyncio.AbstractEventLoop, limits: Limits = Limits()) -> None:
        self.registry = registry
        self.limits = limits
        self._loop = loop
        self._listener = socket.create_server(address, backlog=_BACKLOG)
        self._listener.setblocking(False)
        self.server_address = self._listener.getsockname()
        # Open connections, the one quiet longest first (moved to the end when active).
        self._connections: OrderedDict[_Connection, None] = OrderedDict()
        self._accepting = False  # watching the listener (not while it cannot take more)
        self._stopping = False
        self._sweeper: asyncio.TimerHandle | None = None
        self.reserved = 0  # bytes of the body budget taken
        self.evicted = 0  # connections closed to make room for new ones
        self.timed_out = 0  # connections closed by a timeout

    def start(self) -> None:
        """Accept and serve."""
        self._resume_accepting()
        self._sweeper = self._loop.call_later(_SWEEP, self._sweep)

    def shutdown(self) -> None:
        """Stop accepting and close every connection (an answer to come is dropped)."""
        self._stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._pause_accepting()
        for conn in list(self._connections):
            self._close(conn)
        self._listener.close()

    def _accept(self) -> None:
        for _ in range(_ACCEPTS):
            if len(self._connections) >= self.limits.connections and all(
                    conn.busy for conn in self._connections):
                self._pause_accepting()  # every connection has a request being handled
                return
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # Out of descriptors: make room, or stop watching the listener (it would
                # stay readable and spin this loop) until a connection closes; clients
                # wait in the backlog meanwhile.
                if not self._evict():
                    self._pause_accepting()
                    return
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(sock, time.monotonic())
            self._connections[conn] = None
            self._interest(conn)
            if len(self._connections) > self.limits.connections:
                self._evict()  # one quieter than this new one: checked above

    def _pause_accepting(self) -> None:
        if self._accepting:
            self._loop.remove_reader(self._listener.fileno())
            self._accepting = False

    def _resume_accepting(self) -> None:
        if not self._accepting and not self._stopping:
            self._loop.add_reader(self._listener.fileno(), self._accept)
            self._accepting = True

    def _evict(self) -> bool:
        """Close the connection quiet longest whose request is not being handled; False if
        there is none."""
        for conn in self._connections:
            if not conn.busy:
                self.evicted += 1
                self._close(conn)
                return True
        return False

    def _sweep(self) -> None:
        """Close the connections past a deadline (see :class:`Limits`); again in a second."""
        self._sweeper = self._loop.call_later(_SWEEP, self._sweep)
        now = time.monotonic()
        limits = self.limits
        for conn in list(self._connections):
            if conn.busy:
                continue
            if conn.inbuf or conn.discard:  # a request is on its way
                if not conn.head and now - conn.started > limits.header_timeout:
                    self.timed_out += 1
                    self._refuse(conn, 408, "request headers not complete within "
                                 f"{limits.header_timeout:g} s")
                    conn.inbuf.clear()
                elif now - conn.started > limits.request_timeout:
                    self.timed_out += 1
                    self._close(conn)
                elif conn.closing and now - conn.last > limits.header_timeout:
                    self.timed_out += 1
                    self._close(conn)  # refused, and the client reads no answer
            elif now - conn.last > limits.idle_timeout:
                self.timed_out += 1
                self._close(conn)

    def _answered(self, conn: _Connection, resp: Response, keep: bool) -> None:
        """``resp`` answers ``conn``'s request handled apart (in a thread, or a synchronous
        invoke): send it (or, a synchronous invoke's, await its answer), then serve on."""
        if resp.later is not None:
            resp.later(functools.partial(self._reply, conn, keep))
            return
        conn.busy = False
        self._release(conn)
        if not conn.closed:
            self._answer(conn, resp, keep)
            self._advance(conn)

    def _reply(self, conn: _Connection, keep: bool, resp: Response) -> None:
        """A synchronous invoke's answer: sent on a turn of the loop of its own (it may
        come from within ``Response.later`` itself, when the emulator is stopping)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: the emulator stopped
            self._loop.call_soon(self._answered, conn, resp, keep)

    def _handle_apart(self, conn: _Connection, req: Request, keep: bool) -> None:
        """Handle ``req`` (one that may block) in a thread of its own."""
        resp = handle(self.registry, req)
        with contextlib.suppress(RuntimeError):  # the loop is closed: the emulator stopped
            self._loop.call_soon_threadsafe(self._answered, conn, resp, keep)

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(_AHEAD if conn.busy else _READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            conn.eof = True
        elif conn.discard:  # the body of a refused request: dropped as it comes
            conn.last = time.monotonic()
            conn.discard = max(0, conn.discard - len(data))
            if not conn.discard and not conn.outbuf:
                self._close(conn)
            return
        else:
            conn.last = time.monotonic()
            self._connections.move_to_end(conn)
            if not conn.inbuf:
                conn.started = conn.last
            conn.inbuf += data
        if conn.discard:
            self._close(conn)  # end-of-file while dropping a refused body
            return
        self._advance(conn)

    def _advance(self, conn: _Connection) -> None:
        """Serve the complete requests buffered on ``conn``, in order. The answers given at
        once go out together, in one send, and only then are the Events they accepted
        started (a burst of pipelined invokes costs one wake-up of the client per read,
        not one per request)."""
        starts: list[Callable[[], None]] = []
        while not conn.busy and not conn.closing and not conn.closed:
            buf = conn.inbuf
            while buf.startswith(b"\r\n"):  # blank lines before a request are allowed
                del buf[:2]
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self._refuse(conn, 431, "request headers too large")
                break
            try:
                method, target, keep, headers, length = _parse_head(bytes(buf[:end]))
            except _BadRequest as bad:
                self._refuse(conn, bad.status, str(bad))
                break
            conn.head = True
            limit = body_limit(method, target, headers)
            if length > limit:
                self._refuse_body(conn, too_large(length, limit), length - (len(buf) - end - 4))
                break
            if length > _SMALL_BODY and not conn.reserved:
                if self.reserved + length > self.limits.body_budget:
                    self._refuse_body(conn, error_response(TooManyRequests(
                        f"the emulator is receiving {self.reserved} bytes of request bodies; "
                        f"{length} more would pass its limit of {self.limits.body_budget}",
                        "RequestBodyBudgetExceeded")), length - (len(buf) - end - 4))
                    break
                conn.reserved = length
                self.reserved += length
            if len(buf) < end + 4 + length:
                if headers.get("expect", "").lower() == "100-continue" and not conn.continued:
                    conn.continued = True
                    self._send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
                break
            body = bytes(buf[end + 4:end + 4 + length])
            del buf[:end + 4 + length]
            conn.continued = conn.head = False
            conn.started = time.monotonic()  # of the next request, whose bytes follow
            req = Request(method, target, headers, body)
            if blocks(req):
                conn.busy = True
                threading.Thread(target=self._handle_apart, args=(conn, req, keep),
                                 name="mu-emulator-request", daemon=True).start()
                continue
            resp = handle(self.registry, req)
            if resp.later is None:
                self._answer(conn, resp, keep, starts)
                self._release(conn)
            else:  # started once the answers before it are out, like the Events they took
                conn.busy = True
                starts.append(functools.partial(self._answered, conn, resp, keep))
        if conn.outbuf and not conn.closed:
            self._flush(conn)
        for start in starts:
            _after(start)
        if conn.eof and not conn.busy and not conn.closed:
            conn.closing = True  # every request it sent has been answered or refused
            if not conn.outbuf:
                self._close(conn)
                return
        self._interest(conn)

    def _release(self, conn: _Connection) -> None:
        """Give back the body budget ``conn``'s request held."""
        self.reserved -= conn.reserved
        conn.reserved = 0

    def _answer(self, conn: _Connection, resp: Response, keep: bool,
                starts: list[Callable[[], None]] | None = None) -> None:
        """Send ``resp``, then do its work that follows (start the Event just accepted);
        with ``starts``, queue it and leave that work there, for the caller to flush the
        connection and then do it."""
        lines = [f"HTTP/1.1 {resp.status} {_reason(resp.status)}",
                 *(f"{k}: {v}" for k, v in resp.headers.items()),
                 f"Content-Length: {len(resp.body)}"]
        if not keep:
            lines.append("Connection: close")
            conn.closing = True
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + resp.body
        if starts is None:
            self._send(conn, data)
            if resp.after is not None:
                _after(resp.after)
        else:
            conn.outbuf += data
            if resp.after is not None:
                starts.append(resp.after)

    def _refuse(self, conn: _Connection, status: int, why: str) -> None:
        self._answer(conn, Response(status, why.encode() + b"\n",
                                    {"Content-Type": "text/plain"}), keep=False)

    def _refuse_body(self, conn: _Connection, resp: Response, unread: int) -> None:
        """Answer ``resp`` to a request whose body is not read, then close. The body that
        is still coming is read and dropped first (within the request's deadline), so
        that the client reads the answer rather than a reset."""
        conn.inbuf.clear()
        conn.discard = max(0, unread)
        self._answer(conn, resp, keep=False)

    def _send(self, conn: _Connection, data: bytes) -> None:
        conn.outbuf += data
        self._flush(conn)

    def _flush(self, conn: _Connection) -> None:
        try:
            while conn.outbuf:
                sent = conn.sock.send(conn.outbuf)
                del conn.outbuf[:sent]
                conn.last = time.monotonic()
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn)
            return
        if conn.closing and not conn.outbuf and not conn.discard:
            self._close(conn)
        else:
            self._interest(conn)

    def _interest(self, conn: _Connection) -> None:
        """Watch ``conn`` for reading until its end-of-file (or its last answer) while it
        has room for more, and for writing while answers wait to be sent."""
        if conn.closed:
            return
        reading = not (conn.eof or conn.closing or len(conn.outbuf) > _MAX_OUT
                       or (conn.busy and len(conn.inbuf) >= _AHEAD))
        events = selectors.EVENT_READ if reading or conn.discard else 0
        if conn.outbuf:
            events |= selectors.EVENT_WRITE
        self._watch(conn, events)

    def _watch(self, conn: _Connection, events: int) -> None:
        """Have the loop watch ``conn`` for ``events`` (0: nothing)."""
        changed, conn.events = events ^ conn.events, events
        if changed & selectors.EVENT_READ:
            if events & selectors.EVENT_READ:
                self._loop.add_reader(conn.fd, self._read, conn)
            else:
                self._loop.remove_reader(conn.fd)
        if changed & selectors.EVENT_WRITE:
            if events & selectors.EVENT_WRITE:
                self._loop.add_writer(conn.fd, self._flush, conn)
            else:
                self._loop.remove_writer(conn.fd)

    def _close(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._connections.pop(conn, None)
        if not conn.busy:
            self._release(conn)  # a request being handled gives its budget back when done
        self._resume_accepting()
        self._watch(conn, 0)
        conn.sock.close()


def _after(work: Callable[[], None]) -> None:
    """Do what follows an answer (start the Event it accepted): a bug there must not stop
    the server."""
    try:
        work()
    except Exception:
        traceback.print_exc(file=sys.stderr)


class _BadRequest(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def _parse_head(head: bytes) -> tuple[str, str, bool, dict[str, str], int]:
    """Method, target, keep-alive, headers (names in lower case) and body length of a
    request head.

    Raises:
        _BadRequest: with the status to answer.
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise _BadRequest(400, "malformed request line")
    if len(lines) > _MAX_HEADERS + 1:
        raise _BadRequest(431, "too many headers")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name or name != name.strip():
            raise _BadRequest(400, "malformed header")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise _BadRequest(411, "a request body needs a Content-Length")
    declared = headers.get("content-length", "0")
    if not declared.isdigit():
        raise _BadRequest(400, "bad Content-Length")
    length = int(declared)
    connection = headers.get("connection", "").lower()
    keep = connection != "close" if parts[2] == b"HTTP/1.1" else connection == "keep-alive"
    return parts[0].decode("latin-1"), parts[1].decode("latin-1"), keep, headers, length


@functools.cache
def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class ThreadedEmulatorServer:
    """The Lambda API on loopback.

    Args:
        state_dir: where functions and logs live (default ``~/.cache/mu/emulator``).
        s3_endpoint_url: the S3 endpoint invocations are pointed at.
        concurrency_limit: invocations running at once (default 1000, as on AWS).
        fork_server: fork execution environments from a zygote per function (False:
            spawn each).
        region: the region in ARNs and in the invocation environment.
        port: 0 picks a free port.
        duplicate_rate: rehearsals: the probability that an Event is delivered twice.
        duplicate_seed: seeds those draws.
        limits: what HTTP clients may hold (connections, timeouts, bodies); see
            :class:`Limits` for the defaults.
        kept: idle execution environments kept in all (default ``KEPT``).
        warm_pool: environments made per function when its code is set (provisioned).
        idle_timeout: seconds after which an idle environment is reaped.
        sandbox: run environments under bubblewrap; None: where it works.
        spares: environments per invoked function initialised ahead of its cold starts.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        s3_endpoint_url: str | None = None,
        concurrency_limit: int = 1000,
        fork_server: bool = True,
        region: str = "us-east-1",
        port: int = 0,
        duplicate_rate: float = 0.0,
        duplicate_seed: int = 0,
        limits: Limits | None = None,
        kept: int = KEPT,
        warm_pool: int = 0,
        idle_timeout: float = IDLE_TIMEOUT,
        sandbox: bool | None = None,
        spares: int = 0,
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir else DEFAULT_STATE_DIR
        self.s3_endpoint_url = s3_endpoint_url
        self.limits = limits or Limits()
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is outside 0-65535")
        self.runner = Runner(self.state_dir, s3_endpoint_url, region, fork_server, kept,
                             warm_pool, idle_timeout, sandbox, spares=spares)
        try:
            self.registry = FunctionRegistry(
                self.state_dir, self.runner, region, concurrency_limit, duplicate_rate,
                duplicate_seed,
            )
        except BaseException:
            self.runner.close()  # its temp folder
            raise
        self._port = port
        self._httpd: _HTTPServer | None = None
        self._ready = threading.Event()

    def start(self) -> None:
        """Bind 127.0.0.1 and serve from the runner's loop; return once serving (raises
        after a bounded wait)."""
        self._httpd = _HTTPServer(("127.0.0.1", self._port), self.registry, self.runner.loop,
                                  self.limits)
        self.runner.loop.call_soon_threadsafe(self._serve, self._httpd)
        if not self._ready.wait(_READY_TIMEOUT):
            raise RuntimeError("the emulator did not start serving")

    def _serve(self, httpd: _HTTPServer) -> None:
        httpd.start()
        self._ready.set()

    @property
    def address(self) -> tuple[str, int]:
        assert self._httpd is not None, "start() first"
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT``: what boto3's ``endpoint_url`` takes."""
        host, port = self.address
        return f"http://{host}:{port}"

    url = endpoint_url

    def stop(self) -> None:
        """Stop serving, kill execution environments and zygotes, join (also after a failed
        :meth:`start`: the runner's temp folder is removed either way)."""
        if self._httpd is not None:
            self.runner.call(self._httpd.shutdown)
            self._httpd = None
        self.registry.close()

    def __enter__(self) -> ThreadedEmulatorServer:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class LocalCloud:
    """S3 and the emulator pointed at it, started and stopped together.

    Args:
        **emulator_options: passed to :class:`ThreadedEmulatorServer` (``state_dir``,
            ``concurrency_limit``, ``fork_server``, ``region``, ``port``, ``warm_pool``).

    Example::

        with LocalCloud(state_dir=tmp) as cloud:
            lam = boto3.client("lambda", endpoint_url=cloud.lambda_endpoint_url, ...)
            s3 = boto3.client("s3", endpoint_url=cloud.s3_endpoint_url, ...)
    """

    def __init__(self, **emulator_options: Any) -> None:
        from emulator.s3 import S3Server

        self.s3 = S3Server()
        self._options = emulator_options
        self.emulator: ThreadedEmulatorServer | None = None

    def start(self) -> None:
        """Start S3, then the emulator pointed at it; each returns once it serves."""
        self.s3.start()
        try:
            self.emulator = ThreadedEmulatorServer(s3_endpoint_url=self.s3.url, **self._options)
            self.emulator.start()
        except BaseException:
            self.s3.stop()
            raise

    @property
    def lambda_endpoint_url(self) -> str:
        assert self.emulator is not None, "start() first"
        return self.emulator.endpoint_url

    @property
    def s3_endpoint_url(self) -> str:
        return self.s3.endpoint_url

    def stop(self) -> None:
        """Stop the emulator (killing its invocations), then S3; both joined."""
        if self.emulator is not None:
            self.emulator.stop()
        self.s3.stop()

    def __enter__(self) -> LocalCloud:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
