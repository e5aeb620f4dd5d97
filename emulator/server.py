"""The emulator's HTTP server: HTTP/1.1 keep-alive on 127.0.0.1, started ready, stopped joined.

``start()`` binds (port 0 by default), starts the serving thread and returns once it
serves; ``.url`` and ``.address`` give the real port. ``stop()`` stops accepting, kills
every running invocation and fork server, and joins every thread it started.
"""

from __future__ import annotations

import functools
import os
import threading
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from pathlib import Path
from socketserver import StreamRequestHandler
from types import TracebackType
from typing import Any

from emulator.models import FunctionRegistry
from emulator.responses import Request, handle
from emulator.runner import SPARES, Runner

__all__ = ["DEFAULT_STATE_DIR", "LocalCloud", "ThreadedEmulatorServer"]

DEFAULT_STATE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mu" / "emulator"
_READY_TIMEOUT = 10.0
_MAX_BODY = 70 * 1024 * 1024
_MAX_LINE = 65536  # bytes in a request line or a header
_MAX_HEADERS = 100


class _Handler(StreamRequestHandler):
    """HTTP/1.1 with keep-alive and pipelining, parsed just as far as the Lambda API needs.

    ``http.server``'s handler parses headers with the ``email`` package, about a third of a
    millisecond per request, which is most of what an Event invoke costs here.
    """

    server: _HTTPServer
    disable_nagle_algorithm = True  # one write per answer: never hold it back

    def handle(self) -> None:
        while self._one():
            pass

    def _one(self) -> bool:
        """Serve one request; False when the connection is to close."""
        line = self.rfile.readline(_MAX_LINE + 1)
        while line in (b"\r\n", b"\n"):  # blank lines before a request are allowed
            line = self.rfile.readline(_MAX_LINE + 1)
        if not line:
            return False
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or len(line) > _MAX_LINE:
            return self._refuse(400, "malformed request line")
        headers: dict[str, str] = {}
        while True:
            field = self.rfile.readline(_MAX_LINE + 1)
            if field in (b"\r\n", b"\n", b""):
                break
            name, colon, value = field.decode("latin-1").partition(":")
            if not colon or len(field) > _MAX_LINE or len(headers) >= _MAX_HEADERS:
                return self._refuse(400, "malformed header")
            headers[name.strip().lower()] = value.strip()
        keep = (headers.get("connection", "").lower() != "close"
                if parts[2] == b"HTTP/1.1" else headers.get("connection", "").lower() == "keep-alive")
        if "transfer-encoding" in headers:
            return self._refuse(411, "a request body needs a Content-Length")
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            return self._refuse(400, "bad Content-Length")
        if length > _MAX_BODY or length < 0:
            return self._refuse(413, "request too large")
        if headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            return False  # the client went away mid-body
        resp = handle(self.server.registry, Request(
            parts[0].decode("latin-1"), parts[1].decode("latin-1"), headers, body))
        try:
            self._send(resp.status, resp.headers, resp.body, keep)
        finally:
            if resp.after is not None:
                resp.after()  # e.g. start the Event just accepted, now that the 202 is out
        return keep

    def _send(self, status: int, headers: dict[str, str], body: bytes, keep: bool) -> None:
        lines = [f"HTTP/1.1 {status} {_reason(status)}", *(f"{k}: {v}" for k, v in headers.items()),
                 f"Content-Length: {len(body)}"]
        if not keep:
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def _refuse(self, status: int, why: str) -> bool:
        self._send(status, {"Content-Type": "text/plain"}, why.encode() + b"\n", False)
        return False


@functools.cache
def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], registry: FunctionRegistry) -> None:
        self.registry = registry
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client closing a keep-alive connection is not an error
        super().handle_error(request, client_address)


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
        self._httpd.serve_forever(poll_interval=0.2)

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
        self._httpd.server_close()
        self.registry.close()
        if self._thread is not None:
            self._thread.join()
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
