"""The emulator's HTTP server: HTTP/1.1 keep-alive on 127.0.0.1, started ready, stopped joined.

``start()`` binds (port 0 by default), starts the serving thread and returns once it
serves; ``.url`` and ``.address`` give the real port. ``stop()`` stops accepting, kills
every running invocation and fork server, and joins the serving and watcher threads (a
request still being handled in a thread of its own ends with its invocation).

Theory of operation
-------------------
One thread serves every connection from one ``selectors`` loop: it reads what each
connection sends, parses each complete request (request line, headers, a
``Content-Length`` body; keep-alive, pipelining and ``Expect: 100-continue``) and answers in
order. A request that is answered without waiting for anything (an Event or DryRun invoke:
:func:`~emulator.responses.answers_at_once`) is handled right there, so a burst of Event
invokes costs no thread switch per request; any other request may block (a synchronous
invoke runs the function, CreateFunction unpacks a zip) and is handled in a thread of its
own, while the loop serves the other connections and reads no further on that one until
the answer is out. ``http.server`` is not used: its handler parses headers with the
``email`` package (about a third of a millisecond per request) and needs a thread per
connection.
"""

from __future__ import annotations

import contextlib
import functools
import os
import selectors
import socket
import sys
import threading
import traceback
from collections import deque
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any

from emulator.models import FunctionRegistry
from emulator.responses import Request, Response, answers_at_once, handle
from emulator.runner import SPARES, Runner

__all__ = ["DEFAULT_STATE_DIR", "LocalCloud", "ThreadedEmulatorServer"]

DEFAULT_STATE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mu" / "emulator"
_READY_TIMEOUT = 10.0
_MAX_BODY = 70 * 1024 * 1024
_MAX_HEAD = 65536  # bytes of request line and headers
_MAX_HEADERS = 100
_BACKLOG = 1024


class _Connection:
    __slots__ = (
        "busy",
        "closed",
        "closing",
        "continued",
        "eof",
        "events",
        "inbuf",
        "outbuf",
        "sock",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.busy = False  # a request of this connection is being handled in a thread
        self.eof = False  # the client has sent all it will (its requests are still served)
        self.closing = False  # close once the answers queued are sent
        self.closed = False
        self.continued = False  # "100 Continue" sent for the request being read
        self.events = selectors.EVENT_READ  # what the selector watches it for (0: nothing)


class _HTTPServer:
    """The serving loop (see the module's theory of operation)."""

    def __init__(self, address: tuple[str, int], registry: FunctionRegistry) -> None:
        self.registry = registry
        self._listener = socket.create_server(address, backlog=_BACKLOG)
        self._listener.setblocking(False)
        self.server_address = self._listener.getsockname()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "listen")
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)  # a wake-up already on its way is enough
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._answered: deque[tuple[_Connection, Response, bool]] = deque()  # by threads
        self._connections: set[_Connection] = set()
        self._accepting = True  # False while out of descriptors, until a connection closes
        self._stopping = False

    def serve_forever(self) -> None:
        try:
            while not self._stopping:
                for key, mask in self._selector.select():
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        self._woken()
                    else:
                        conn: _Connection = key.data
                        if mask & selectors.EVENT_WRITE:
                            self._flush(conn)
                        if mask & selectors.EVENT_READ and not conn.closed:
                            self._read(conn)
        finally:
            for conn in list(self._connections):
                self._close(conn)
            self._selector.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()  # a request thread finishing later finds it closed: fine

    def shutdown(self) -> None:
        """Make :meth:`serve_forever` return (it closes every connection)."""
        self._stopping = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # Out of descriptors: stop watching the listener (it would stay readable and
                # spin this loop) until a connection closes; clients wait in the backlog.
                self._selector.unregister(self._listener)
                self._accepting = False
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(sock)
            self._connections.add(conn)
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _woken(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)
        while self._answered:
            conn, resp, keep = self._answered.popleft()
            conn.busy = False
            if not conn.closed:
                self._answer(conn, resp, keep)
                self._advance(conn)

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            conn.inbuf += data
        else:
            conn.eof = True
        self._advance(conn)

    def _advance(self, conn: _Connection) -> None:
        """Serve the complete requests buffered on ``conn``, in order."""
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
            if len(buf) < end + 4 + length:
                if headers.get("expect", "").lower() == "100-continue" and not conn.continued:
                    conn.continued = True
                    self._send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
                break
            body = bytes(buf[end + 4:end + 4 + length])
            del buf[:end + 4 + length]
            conn.continued = False
            req = Request(method, target, headers, body)
            if answers_at_once(req):
                self._answer(conn, handle(self.registry, req), keep)
            else:
                conn.busy = True
                threading.Thread(target=self._handle_slow, args=(conn, req, keep),
                                 name="mu-emulator-request", daemon=True).start()
        if conn.eof and not conn.busy and not conn.closed:
            conn.closing = True  # every request it sent has been answered or refused
            if not conn.outbuf:
                self._close(conn)
                return
        self._interest(conn)

    def _handle_slow(self, conn: _Connection, req: Request, keep: bool) -> None:
        self._answered.append((conn, handle(self.registry, req), keep))
        self._wake()

    def _answer(self, conn: _Connection, resp: Response, keep: bool) -> None:
        lines = [f"HTTP/1.1 {resp.status} {_reason(resp.status)}",
                 *(f"{k}: {v}" for k, v in resp.headers.items()),
                 f"Content-Length: {len(resp.body)}"]
        if not keep:
            lines.append("Connection: close")
            conn.closing = True
        self._send(conn, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + resp.body)
        if resp.after is not None:
            try:
                resp.after()  # e.g. start the Event just accepted, now that the 202 is out
            except Exception:  # a bug of ours: the server goes on
                traceback.print_exc(file=sys.stderr)

    def _refuse(self, conn: _Connection, status: int, why: str) -> None:
        self._answer(conn, Response(status, why.encode() + b"\n",
                                    {"Content-Type": "text/plain"}), keep=False)

    def _send(self, conn: _Connection, data: bytes) -> None:
        conn.outbuf += data
        self._flush(conn)

    def _flush(self, conn: _Connection) -> None:
        try:
            while conn.outbuf:
                sent = conn.sock.send(conn.outbuf)
                del conn.outbuf[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn)
            return
        if conn.closing and not conn.outbuf:
            self._close(conn)
        else:
            self._interest(conn)

    def _interest(self, conn: _Connection) -> None:
        """Watch ``conn`` for reading until its end-of-file (or its last answer), and for
        writing while answers wait to be sent."""
        if conn.closed:
            return
        events = 0 if conn.eof or conn.closing else selectors.EVENT_READ
        if conn.outbuf:
            events |= selectors.EVENT_WRITE
        if events == conn.events:
            return
        if not events:
            self._selector.unregister(conn.sock)
        elif not conn.events:
            self._selector.register(conn.sock, events, conn)
        else:
            self._selector.modify(conn.sock, events, conn)
        conn.events = events

    def _close(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._connections.discard(conn)
        if not self._accepting and not self._stopping:
            self._accepting = True
            self._selector.register(self._listener, selectors.EVENT_READ, "listen")
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        conn.sock.close()


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
    if length > _MAX_BODY:
        raise _BadRequest(413, "request too large")
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
        fork_server: start invocations through fork servers (False: plain spawn).
        spares: idle children each fork server keeps forked ahead of demand; a burst of up
            to this many Event invocations starts without a fork (each costs about 2 MiB).
        region: the region in ARNs and in the invocation environment.
        port: 0 picks a free port.
        duplicate_rate: rehearsals: the probability that an Event is delivered twice.
        duplicate_seed: seeds those draws.
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
        spares: int = SPARES,
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir else DEFAULT_STATE_DIR
        self.s3_endpoint_url = s3_endpoint_url
        self.runner = Runner(self.state_dir, s3_endpoint_url, region, fork_server, spares)
        self.registry = FunctionRegistry(
            self.state_dir, self.runner, region, concurrency_limit, duplicate_rate, duplicate_seed
        )
        self._port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def start(self) -> None:
        """Bind 127.0.0.1 and serve; return once serving (raises after a bounded wait)."""
        self._httpd = _HTTPServer(("127.0.0.1", self._port), self.registry)
        self._thread = threading.Thread(target=self._serve, name="mu-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(_READY_TIMEOUT):
            raise RuntimeError("the emulator did not start serving")

    def _serve(self) -> None:
        assert self._httpd is not None
        self._ready.set()
        self._httpd.serve_forever()

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
        """Stop serving, kill invocations and fork servers, join."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        if self._thread is not None:
            self._thread.join()
        self.registry.close()
        self._httpd = None

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
            ``concurrency_limit``, ``fork_server``, ``region``, ``port``, ``spares``).

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
