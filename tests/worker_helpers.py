"""A small scripted coordinator for worker tests, a worker running in a thread, and the
png2y4m function directory (real binary or a shell stand-in) with tiny PNG frames.

:class:`ScriptedCoordinator` listens on ``127.0.0.1:0`` (stdlib ``ssl`` server socket that
requires a client certificate from the run's CA, or plain TCP), accepts one worker and lets
the test send commands and read responses with bounded waits. :class:`WorkerThread` runs
:func:`mu.worker.session.run` in a thread and hands back its summary.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from mu.launch import FunctionSpec, Invocation, LaunchReport
from mu.protocol import CLOSED, NEED_DATA, FrameDecoder, decode_text, encode_text
from mu.tls import KeySet
from mu.worker import session

COMMAND = "./png2y4m -i -d -o ##OUTFILE## ##INFILE##"

STAND_IN = """#!/bin/sh
# png2y4m stand-in: png2y4m -i -d -o OUT PATTERN  (PATTERN holds %08d)
out=$4
glob=$(printf '%s' "$5" | sed 's/%08d/*/')
for f in $glob; do
    [ -e "$f" ] || continue
    cat "$f" >> "$out" && rm -f "$f"
done
"""


def tiny_png(shade: int, size: int = 16) -> bytes:
    """An 8-bit RGB PNG of one flat colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\0" + bytes([shade, 255 - shade, shade // 2]) * size
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * size))
        + chunk(b"IEND", b"")
    )


def install_png2y4m(request: Any, directory: Path) -> bool:
    """Put ``png2y4m`` in ``directory``: the real binary if it builds, else the stand-in.

    Args:
        request: the test's ``pytest.FixtureRequest`` (to build the session binary).
        directory: where the function's files go.

    Returns:
        Whether the real binary is used.
    """
    try:
        binary: Path = request.getfixturevalue("png2y4m_binary")
    except Exception:  # no C toolchain or no sources: the stand-in keeps tests meaningful
        (directory / "png2y4m").write_text(STAND_IN)
        (directory / "png2y4m").chmod(0o755)
        return False
    shutil.copy(binary, directory / "png2y4m")
    return True


WAIT = 20.0
"""Upper bound on any single wait in these tests (never reached when things work)."""


def server_context(
    keys: KeySet,
    *,
    client_ca: str | None = None,
    version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
) -> ssl.SSLContext:
    """A TLS server context with the coordinator identity of ``keys``.

    Args:
        keys: server certificate/key (and, by default, the CA used to check clients).
        client_ca: PEM of the CA that client certificates must chain to (default: keys').
        version: the highest TLS version the server offers.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = version
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp, "s.crt"), Path(tmp, "s.key")
        cert.write_text(keys.server_cert)
        key.write_text(keys.server_key)
        ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(cadata=client_ca or keys.ca_cert)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class Conn:
    """The coordinator's end of one accepted worker connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = FrameDecoder(peer="worker")
        sock.settimeout(WAIT)

    def send(self, command: str) -> None:
        """Send one command frame."""
        self.sock.sendall(encode_text(command))

    def recv(self) -> str:
        """The next message from the worker.

        Raises:
            EOFError: the worker closed the connection.
            TimeoutError: nothing within :data:`WAIT` seconds.
        """
        while True:
            frame = self.decoder.next_frame()
            if frame is CLOSED:
                raise EOFError("worker closed the connection")
            if isinstance(frame, bytes):
                return decode_text(frame)
            assert frame is NEED_DATA
            try:
                data = self.sock.recv(65536)
            except ssl.SSLZeroReturnError:
                data = b""
            self.decoder.receive_data(data)

    def ask(self, command: str) -> str:
        """Send ``command`` and return the next message."""
        self.send(command)
        return self.recv()

    def recv_eof(self) -> None:
        """Wait for the worker to close (asserting nothing else arrives first)."""
        try:
            extra = self.recv()
        except (EOFError, ConnectionResetError, ssl.SSLEOFError):
            return
        raise AssertionError(f"expected the worker to close, got {extra!r}")

    def close(self) -> None:
        self.sock.close()


class ScriptedCoordinator:
    """Listen on 127.0.0.1:0 and accept one worker.

    Args:
        context: server TLS context, or ``None`` for plain TCP.
    """

    def __init__(self, context: ssl.SSLContext | None) -> None:
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(WAIT)
        self.port: int = self.listener.getsockname()[1]
        self.conns: list[Conn] = []

    def accept(self) -> Conn:
        """Accept one connection and complete the TLS handshake.

        Raises:
            ssl.SSLError: the handshake failed (bad client certificate, ...).
        """
        raw, _addr = self.listener.accept()
        try:
            raw.settimeout(WAIT)
            sock = self.context.wrap_socket(raw, server_side=True) if self.context else raw
        except BaseException:
            raw.close()
            raise
        conn = Conn(sock)
        self.conns.append(conn)
        return conn

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.listener.close()

    def __enter__(self) -> ScriptedCoordinator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class WorkerThread:
    """:func:`mu.worker.session.run` in a background thread."""

    def __init__(self, event: dict[str, Any], *, command: str = "", cwd: str | None = None):
        self.summary: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._main, args=(event, command, cwd), name="worker", daemon=True
        )
        self.thread.start()

    def _main(self, event: dict[str, Any], command: str, cwd: str | None) -> None:
        try:
            self.summary = session.run(event, command=command, cwd=cwd)
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float = WAIT) -> dict[str, Any]:
        """Wait for the session to end; return its summary."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker session did not end"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary


@contextmanager
def moto_s3(monkeypatch: Any, bucket: str) -> Iterator[Any]:
    """A moto S3 server on 127.0.0.1:0 holding an empty ``bucket``.

    The worker finds it only through the standard environment (``AWS_ENDPOINT_URL_S3`` and
    test credentials, set with ``monkeypatch``). Yields a boto3 client for the test's own
    checks; the bucket is emptied and the server stopped on exit.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)
        for var in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
            monkeypatch.delenv(var, raising=False)
        client = boto3.client("s3", region_name="us-east-1", endpoint_url=url)
        client.create_bucket(Bucket=bucket)
        try:
            yield client
        finally:
            listing = client.list_objects_v2(Bucket=bucket)
            for obj in listing.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])
            client.delete_bucket(Bucket=bucket)
            client.close()
    finally:
        server.stop()


def event_for(keys: KeySet | None, port: int, **fields: Any) -> dict[str, Any]:
    """An invocation payload pointing at 127.0.0.1:``port`` (TLS unless ``keys`` is None)."""
    event: dict[str, Any] = {"addr": "127.0.0.1", "port": port, "token": "t0k3n", "timeout": 30}
    if keys is not None:
        event.update(cacert=keys.ca_cert, wrkcrt=keys.worker_cert, wrkkey=keys.worker_key)
    event.update(fields)
    return event


@contextmanager
def connected_worker(
    keys: KeySet | None, *, command: str = "", cwd: str | None = None, **fields: Any
) -> Iterator[tuple[Conn, WorkerThread]]:
    """A worker connected to a scripted coordinator, past its hello.

    Yields:
        ``(conn, worker)``; on exit the connection is closed and the worker joined.
    """
    ctx = server_context(keys) if keys is not None else None
    with ScriptedCoordinator(ctx) as coord:
        event = event_for(keys, coord.port, **fields)
        worker = WorkerThread(event, command=command, cwd=cwd)
        try:
            conn = coord.accept()
            hello = conn.recv()
            assert hello == f"OK:HELLO:{event['token']}", hello
            yield conn, worker
        finally:
            coord.close()
            worker.join()


class FakeBackend:
    """The function-management part of a launcher, for fake backends that only start
    workers: every function exists, creating and deleting do nothing. Subclasses define
    ``launch``."""

    name = "fake"

    def create_function(self, spec: FunctionSpec, region: str) -> dict[str, Any]:
        return {}

    def function_exists(self, name: str, region: str) -> bool:
        return True

    def delete_function(self, name: str, region: str) -> None:
        return None

    def close(self) -> None:
        return None


def accepted(count: int, started: int | None = None) -> LaunchReport:
    """A launch report for ``count`` invocations, the first ``started`` of them (all by
    default) accepted."""
    started = count if started is None else started
    return LaunchReport(tuple(Invocation(i, "us-east-1", i < started) for i in range(count)))


def read_command(sock: socket.socket, decoder: FrameDecoder) -> str | None:
    """A simulated worker's next command from the coordinator, or None once it has closed."""
    while True:
        frame = decoder.next_frame()
        if frame is CLOSED:
            return None
        if isinstance(frame, bytes):
            return decode_text(frame)
        decoder.receive_data(sock.recv(65536))


def converse(
    addr: tuple[str, int], token: str, ctx: ssl.SSLContext | None, timeout: float,
    reply: Callable[[str], str | None],
) -> tuple[str, list[str]]:
    """A simulated worker: connect (over TLS with ``ctx``), say hello, and answer each command
    with ``reply(command)`` (nothing when it returns None) until ``quit:`` or the
    coordinator closes. Returns its own ``host:port`` and the commands it saw."""
    raw = socket.create_connection(addr, timeout=timeout)
    sock = ctx.wrap_socket(raw) if ctx is not None else raw
    host, port = sock.getsockname()[:2]
    seen: list[str] = []
    with sock:
        sock.sendall(encode_text(f"OK:HELLO:{token}"))
        decoder = FrameDecoder()
        while (command := read_command(sock, decoder)) is not None:
            seen.append(command)
            if command == "quit:":
                break
            answer = reply(command)
            if answer is not None:
                sock.sendall(encode_text(answer))
    return f"{host}:{port}", seen
