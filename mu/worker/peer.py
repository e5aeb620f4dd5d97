"""Links from a worker to its peers: the 2016 single link, and named links through the relay.

Theory of operation
-------------------
**The 2016 link** (``connect:host:port:first`` / ``close_connect:``). :func:`open_link` dials
``host:port``, wraps the socket with the session's client TLS context (the peer must present a
certificate from the run's CA; plain TCP when the session has no TLS), sends ``first`` as one
frame and starts a reader thread that surfaces every frame as ``INFO:peer:<text>`` and the end
as ``INFO:peer_closed:host:port``. It only ever writes before its reader starts, so its socket
is never used by two threads at once.

**Named links** (``link``/``send``/``recv``/``close_link``, :class:`Links`). Each link is one
TLS connection to the relay (DESIGN §8), greeted with ``HELLO_STATE:<run>:<me>:<partner>``;
from then on what we write reaches the worker whose ``<me>`` is our ``<partner>``, and what it
writes reaches us. Files travel in the file framing (:func:`file_frames`,
:class:`FileAssembler`): one frame ``FILE:<size>:<sha256 hex>``, then the bytes in frames of at
most :data:`FILE_FRAME` bytes. The framing is pure (bytes in, events out) and tested by
property; the relay never looks inside.

One thread (``mu-links``) owns every link socket of the invocation and multiplexes them with
one :mod:`selectors` selector. One thread rather than a reader per link because an OpenSSL
connection must never be used by two threads at once, and a link is written (a ``send``) while
it is read (an arriving file): with a reader per link the sender would have to write the same
``SSLSocket`` from another thread. Here job threads never touch a socket: ``send`` hands
frames to the link's outbox (bounded by :data:`OUTBOX_LIMIT`; a file is read through a few
reused buffers, each read into again once it is written, so it is read from disk only as fast
as the link drains) and waits until the last one is written; the link thread writes outboxes
when their sockets are writable, reads every readable socket until TLS has nothing more (into
the decoder's reused buffer), feeds the frames to the link's assembler as views of that
buffer, and writes arriving bytes straight to a spool file in the invocation's private
directory (``<tmpdir>/.links/``), so memory does not grow with file size. A complete file whose size and SHA-256 match its header is queued on the
link and announced once as ``INFO:file:NAME:<size>:<sha256>``; ``recv`` moves the oldest queued
file to its target (a rename inside the private directory), waiting for one at most
``recv_timeout`` seconds.

A link ends when the relay closes it, when its framing breaks (a bad header, more bytes than
announced, a digest that does not match: the stream can no longer be trusted) or when the
connection fails: the link thread closes the socket, drops a partial spool and sends
``INFO:link_closed:NAME:<reason>``; the reason is the relay's ``FAIL(relay: ...)`` text (the
part inside the parentheses) when its last frame was one. Files already complete stay
receivable; after them ``recv`` fails with ``link closed: <reason>``, as a waiting one does at
once. ``close_link`` and the end of the invocation (:meth:`Links.close`) end links without an
``INFO``. :meth:`Links.close` ends every link, wakes every waiting ``send``/``recv`` (they
answer ``FAIL``), joins the link thread, closes every socket and deletes the spools, so a warm
execution environment's next invocation starts with none.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import re
import selectors
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Final, NoReturn

from mu.errors import ProtocolError, RemoteProtocolError
from mu.protocol import (
    CLOSED,
    HEADER_LEN,
    NEED_DATA,
    FrameDecoder,
    decode_text,
    encode_text,
    frame_header,
)

__all__ = [
    "FILE_FRAME",
    "OUTBOX_LIMIT",
    "FileAssembler",
    "FileData",
    "FileDone",
    "FileStarted",
    "LinkError",
    "Links",
    "PeerLink",
    "file_frames",
    "open_link",
    "parse_relay",
]

log = logging.getLogger("mu.worker")


# --------------------------------------------------------------------------- the 2016 link


class PeerLink:
    """An open peer link and its reader thread.

    Args:
        sock: the connected (TLS) socket, already greeted.
        name: ``host:port``, for messages.
        send: queues a message for the coordinator (thread-safe).
    """

    def __init__(self, sock: socket.socket, name: str, send: Callable[[str], None]) -> None:
        self.sock = sock
        self.name = name
        self._send = send
        self._closing = False
        self._thread = threading.Thread(target=self._read, name=f"mu-peer-{name}", daemon=True)
        self._thread.start()

    def __str__(self) -> str:
        return self.name

    def _read(self) -> None:
        decoder = FrameDecoder(peer=f"peer {self.name}")
        try:
            while True:
                try:
                    data = self.sock.recv(65536)
                except (OSError, ValueError):
                    data = b""  # shut down under us, or reset: both end the link
                decoder.receive_data(data)
                while (frame := decoder.next_frame()) is not NEED_DATA:
                    if frame is CLOSED:
                        if not self._closing:
                            self._send(f"INFO:peer_closed:{self.name}")
                        return
                    assert isinstance(frame, bytes)
                    self._send(f"INFO:peer:{decode_text(frame)}")
        except ProtocolError as exc:
            if not self._closing:
                self._send(f"INFO:peer_closed:{self.name}: {exc}")

    def close(self, timeout: float = 5.0) -> None:
        """Shut the link down, join the reader, close the socket."""
        self._closing = True
        # socket.socket.shutdown, not SSLSocket.shutdown: the reader still holds the TLS
        # object; shutting the TCP socket makes its read return. OSError: already gone.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        self._thread.join(timeout)
        self.sock.close()


def _dial(
    host: str, port: int, first: str, context: ssl.SSLContext | None, timeout: float
) -> socket.socket:
    """Connect (TLS with ``context``), send ``first`` as one frame; blocking mode is left on.

    Raises:
        OSError: connection or TLS failure (``ssl.SSLError`` is an ``OSError``).
    """
    raw = socket.create_connection((host, port), timeout=timeout)
    sock: socket.socket = raw
    try:
        if context is not None:
            sock = context.wrap_socket(raw)
        sock.sendall(encode_text(first))
    except BaseException:
        sock.close()
        raw.close()
        raise
    return sock


def open_link(
    host: str,
    port: int,
    first: str,
    context: ssl.SSLContext | None,
    send: Callable[[str], None],
    timeout: float = 30.0,
) -> PeerLink:
    """Connect to a peer, send ``first``, and start surfacing its frames.

    Args:
        host: peer host.
        port: peer port.
        first: text of the first frame sent.
        context: client TLS context (verifies the peer against the run's CA); ``None``: TCP.
        send: queues ``INFO:peer:<text>`` for the coordinator.
        timeout: bound on the TCP connect and the TLS handshake, in seconds.

    Returns:
        The open link.

    Raises:
        OSError: connection or TLS failure (``ssl.SSLError`` is an ``OSError``).
    """
    sock = _dial(host, port, first, context, timeout)
    sock.settimeout(None)
    log.info("peer link to %s:%d open", host, port)
    return PeerLink(sock, f"{host}:{port}", send)


# --------------------------------------------------------------------------- file framing

FILE_FRAME: Final = 1024 * 1024
"""The largest data frame of a file on a link, in bytes."""
_HEADER = re.compile(rb"FILE:(0|[1-9][0-9]{0,17}):([0-9a-f]{64})")


@dataclass(frozen=True)
class FileStarted:
    """A file's header arrived: ``size`` bytes with SHA-256 ``sha256`` (hex) follow."""

    size: int
    sha256: str


@dataclass(frozen=True)
class FileData:
    """The next bytes of the file being received (the payload as fed: a view stays valid
    only as long as the buffer it views)."""

    data: bytes | memoryview


@dataclass(frozen=True)
class FileDone:
    """The file is complete and its size and SHA-256 match its header."""

    size: int
    sha256: str


FileEvent = FileStarted | FileData | FileDone


def file_frames(
    read: Callable[[int], bytes | memoryview], size: int, sha256: str,
    frame_size: int = FILE_FRAME,
) -> Iterator[bytes | memoryview]:
    """The frame payloads that carry one file: its header, then its bytes.

    Args:
        read: reads up to n bytes of the file (``handle.read``, or a view of a buffer read
            into).
        size: the file's size, as announced in the header.
        sha256: the hex SHA-256 of its bytes, as announced.
        frame_size: the largest data frame (at least 1).

    Yields:
        ``FILE:<size>:<sha256>``, then data payloads of at most ``frame_size`` bytes.

    Raises:
        OSError: the file has fewer than ``size`` bytes (it changed after it was hashed).

    >>> import io
    >>> [p[:7] for p in file_frames(io.BytesIO(b"abcde").read, 5, "0" * 64, 2)]
    [b'FILE:5:', b'ab', b'cd', b'e']
    """
    if frame_size < 1:
        raise ValueError(f"frame_size must be >= 1, got {frame_size}")
    yield b"FILE:%d:%s" % (size, sha256.encode("ascii"))
    left = size
    while left:
        data = read(min(frame_size, left))
        if not data:
            raise OSError(f"the file ended {left} bytes short of the {size} announced")
        left -= len(data)
        yield data


class FileAssembler:
    """The receiving side of the file framing, sans-IO: payloads in, file events out.

    Between files only a header is valid; inside a file every payload is data, counted
    against the announced size. The last data byte completes the file once its SHA-256
    matches. Any breach raises :class:`~mu.errors.RemoteProtocolError` and poisons the
    assembler (the stream cannot be resynchronised).

    Args:
        peer: names the sender in error messages.
    """

    def __init__(self, peer: str = "") -> None:
        self.peer = peer
        self._size = -1  # -1: between files
        self._sha256 = ""
        self._got = 0
        self._hash = hashlib.sha256()
        self._error: RemoteProtocolError | None = None
        self.files = 0

    @property
    def idle(self) -> bool:
        """Whether the next payload must be a header (no file is half received)."""
        return self._size < 0

    @property
    def progress(self) -> tuple[int, int]:
        """Bytes received and announced of the file being received (``(0, 0)`` when idle)."""
        return (self._got, self._size) if self._size >= 0 else (0, 0)

    def feed(self, payload: bytes | memoryview) -> list[FileEvent]:
        """Take one frame payload (bytes, or a view of them: data is not copied).

        Returns:
            The events it makes: a header gives :class:`FileStarted` (and, for an empty file,
            :class:`FileDone`); data gives :class:`FileData` and, on the last byte,
            :class:`FileDone`.

        Raises:
            RemoteProtocolError: a malformed header, more bytes than announced, or a SHA-256
                that does not match.
        """
        if self._error is not None:
            raise self._error
        if self._size < 0:
            payload = bytes(payload)
            found = _HEADER.fullmatch(payload)
            if found is None:
                self._fail(f"expected a FILE:<size>:<sha256> frame, got {payload[:80]!r}")
            self._size, self._sha256 = int(found.group(1)), found.group(2).decode("ascii")
            self._got = 0
            self._hash = hashlib.sha256()
            events: list[FileEvent] = [FileStarted(self._size, self._sha256)]
            if self._size == 0:
                events.append(self._done())
            return events
        self._got += len(payload)
        if self._got > self._size:
            self._fail(
                f"file {self.files + 1} carries more than the {self._size} bytes announced "
                f"({self._got} so far)"
            )
        self._hash.update(payload)
        events = [FileData(payload)]
        if self._got == self._size:
            events.append(self._done())
        return events

    def _done(self) -> FileDone:
        digest = self._hash.hexdigest()
        if digest != self._sha256:
            self._fail(
                f"file {self.files + 1} ({self._size} bytes) has SHA-256 {digest}, "
                f"its header announced {self._sha256}"
            )
        self.files += 1
        done = FileDone(self._size, self._sha256)
        self._size = -1
        return done

    def _fail(self, message: str) -> NoReturn:
        where = f" from {self.peer}" if self.peer else ""
        self._error = RemoteProtocolError(message + where)
        raise self._error


# --------------------------------------------------------------------------- named links

OUTBOX_LIMIT: Final = 4 * FILE_FRAME
"""Bytes a link may hold queued for writing; a ``send`` waits while more are queued."""
_RECV_SIZE = 256 * 1024
_SEND_BUFFERS: Final = 3
"""Buffers of :data:`FILE_FRAME` bytes a ``send`` reads its file through (one being read while
the link thread writes the others)."""
_RELAY_FAIL = re.compile(rb"FAIL\((relay: .*)\)", re.DOTALL)
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class _Unsent(Exception):
    """A link ended while a ``send`` waited for a buffer; ``str()`` says why."""


class LinkError(Exception):
    """A link command cannot be carried out; ``str()`` is the text inside ``FAIL(...)``."""


def parse_relay(text: str) -> tuple[str, int]:
    """``host:port`` as given in the payload field ``relay``.

    Raises:
        LinkError: not ``host:port`` with a port in 1-65535.
    """
    host, sep, port_text = text.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        port = 0
    if not sep or not host or not 0 < port < 65536:
        raise LinkError(f"link: the payload's relay {text!r} is not host:port")
    return host, port


@dataclass
class _Arrival:
    path: str
    size: int
    sha256: str


@dataclass(eq=False)
class _Link:
    """One named link. ``sock``, ``decoder``, ``assembler``, ``spool`` and ``last_frame``
    belong to the link thread; the rest is guarded by :attr:`Links._cond`."""

    name: str
    sock: socket.socket
    spool_dir: str
    decoder: FrameDecoder
    assembler: FileAssembler
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    outbox: collections.deque[memoryview] = field(default_factory=collections.deque)
    queued: int = 0  # bytes in the outbox
    enqueued: int = 0  # bytes ever put in the outbox
    written: int = 0  # bytes ever written to the socket
    arrived: collections.deque[_Arrival] = field(default_factory=collections.deque)
    reason: str = ""  # why the link ended; "" while it is open
    discard: bool = False  # retired by us (close_link, close(), replaced): spools go too
    registered: int = 0  # selector events the link thread registered
    write_wants_read: bool = False
    released: threading.Event = field(default_factory=threading.Event)
    spool: BinaryIO | None = None
    spool_path: str = ""
    last_frame: bytes = b""
    files: int = 0


class Links:
    """The named links of one invocation and the thread that owns their sockets.

    Args:
        tmpdir: the invocation's private directory (spools go in ``<tmpdir>/.links``).
        send: queues a message for the coordinator (thread-safe).
        context: client TLS context (the relay must chain to the run's CA); ``None``: TCP.
        token: the run token, sent as ``<run>`` in each hello.
        relay: the payload's ``relay`` field (``host:port``), or ``""``.
        recv_timeout: default bound on a ``recv`` wait, in seconds.
        connect_timeout: bound on the TCP connect and TLS handshake with the relay.
    """

    def __init__(
        self,
        tmpdir: str,
        send: Callable[[str], None],
        context: ssl.SSLContext | None,
        token: str,
        relay: str = "",
        *,
        recv_timeout: float = 300.0,
        connect_timeout: float = 30.0,
    ) -> None:
        self.tmpdir = tmpdir
        self.spool_root = os.path.join(tmpdir, ".links")
        self._send = send
        self.context = context
        self.token = token
        self.relay = relay
        self.recv_timeout = recv_timeout
        self.connect_timeout = connect_timeout
        self._cond = threading.Condition()
        self._links: dict[str, _Link] = {}
        self._retired: list[_Link] = []  # ended by us, for the link thread to release
        self._stopping = False
        self._seq = 0
        self._thread: threading.Thread | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

    # ------------------------------------------------------------------ commands

    def open(self, name: str, host: str | None, port: int, me: int, partner: int) -> None:
        """Open link ``name`` to the relay (the payload's when ``host`` is ``None``) and answer
        ``OK:LINK(name)``: here, before the link thread sees the link, so that the answer
        comes before any ``INFO`` about it.

        Raises:
            LinkError: a bad name, no relay known, a name in use, or the relay unreachable.
        """
        if not _NAME.fullmatch(name):
            raise LinkError(f"link: bad link name {name!r} (1-64 of A-Z a-z 0-9 _ . -)")
        if host is None:
            if not self.relay:
                raise LinkError(
                    "link: this invocation's payload names no relay; "
                    "use link:NAME:host:port:me:partner"
                )
            host, port = parse_relay(self.relay)
        with self._cond:
            if self._stopping:
                raise LinkError("link: the invocation is ending")
            old = self._links.get(name)
            if old is not None and not old.reason:
                raise LinkError(f"link: a link named {name} is already open")
        try:
            sock = _dial(
                host, port, f"HELLO_STATE:{self.token}:{me}:{partner}", self.context,
                self.connect_timeout,
            )
        except OSError as exc:
            what = exc.strerror or str(exc) or type(exc).__name__
            raise LinkError(
                f"link: cannot open {name} to the relay at {host}:{port}: {what}"
            ) from exc
        sock.setblocking(False)
        with self._cond:
            if self._stopping:
                sock.close()
                raise LinkError("link: the invocation is ending")
            old = self._links.pop(name, None)
            if old is not None:  # ended by the relay: its unreceived files go
                self._retire(old, old.reason)
            self._seq += 1
            spool_dir = os.path.join(self.spool_root, str(self._seq))
            os.makedirs(spool_dir, 0o700)
            peer = f"link {name} (relay {host}:{port})"
            self._send(f"OK:LINK({name})")
            self._links[name] = _Link(
                name, sock, spool_dir,
                FrameDecoder(FILE_FRAME, peer, keep=2 * (HEADER_LEN + FILE_FRAME) + _RECV_SIZE),
                FileAssembler(peer),
            )
            self._ensure_thread()
        self._wake()
        log.info("link %s to relay %s:%d open (me %d, partner %d)", name, host, port, me, partner)

    def close_link(self, name: str) -> None:
        """End link ``name`` (no ``INFO``), delete its spooled files and answer
        ``OK:CLOSE_LINK(name)``: before a ``send``/``recv`` waiting on the link answers.

        Raises:
            LinkError: no link of that name.
        """
        with self._cond:
            link = self._links.pop(name, None)
            if link is None:
                raise LinkError(f"close_link: no link named {name}")
            self._send(f"OK:CLOSE_LINK({name})")
            self._retire(link, "closed by close_link")
        self._wake()
        self._await_release(link)
        # released: the link thread writes no more spool (it may remove it too: idempotent)
        shutil.rmtree(link.spool_dir, ignore_errors=True)

    def check(self, command: str, name: str) -> None:
        """Raise ``LinkError("<command>: no link named NAME")`` unless the link exists."""
        with self._cond:
            if name not in self._links:
                raise LinkError(f"{command}: no link named {name}")

    def send_file(self, name: str, path: str) -> str:
        """Send the file at ``path`` on link ``name``; return the final response.

        Waits until the last frame is written to the socket (not for the peer to receive it).
        """
        where = f"send {name}"
        link = self._get(name)
        if link is None:
            return f"FAIL(send: no link named {name})"
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed below, also on failure
        except OSError as exc:
            return f"FAIL({where}: cannot read {path}: {exc.strerror or exc})"
        with handle, link.send_lock:
            # Every MB of new memory costs its first touch, which on a host short of free
            # pages is more than TLS: the file goes through a few reused buffers (the first
            # also serves the digest's pass), each read into again once the link thread has
            # written it, and each frame's header is queued before its payload, not copied
            # with it.
            first = memoryview(bytearray(FILE_FRAME))
            buffers = collections.deque([(first, 0)])  # and the bytes queued once each is out

            def read(n: int) -> memoryview:
                if len(buffers) == _SEND_BUFFERS or buffers[0][1] <= link.written:
                    buffer, written_at = buffers.popleft()
                    failure = self._wait_written(link, written_at)
                    if failure:
                        raise _Unsent(failure)
                else:
                    buffer = memoryview(bytearray(FILE_FRAME))
                got = handle.readinto(buffer[:n])
                # out once its frame, queued next (by this thread alone), is written
                buffers.append((buffer, link.enqueued + HEADER_LEN + got))
                return buffer[:got]

            try:
                digest = hashlib.sha256()
                size = 0
                while n := handle.readinto(first):
                    digest.update(first[:n])
                    size += n
                sha256 = digest.hexdigest()
                handle.seek(0)
                for payload in file_frames(read, size, sha256):
                    failure = (self._enqueue(link, frame_header(len(payload)))
                               or self._enqueue(link, payload))
                    if failure:
                        return f"FAIL({where}: {failure})"
            except _Unsent as exc:
                return f"FAIL({where}: {exc})"
            except OSError as exc:
                # Frames may be out already: the peer's framing is lost, so the link ends.
                reason = f"cannot read {path}: {exc.strerror or exc}"
                self._end_by_us(link, reason)
                return f"FAIL({where}: {reason})"
            failure = self._wait_written(link)
        if failure:
            return f"FAIL({where}: {failure})"
        return f"OK:SEND({name}:{size}:{sha256})"

    def recv_file(self, name: str, path: str, timeout: float) -> str:
        """Move the next file arriving on link ``name`` to ``path``; return the final response.

        Args:
            name: the link.
            path: the target, already confined to the private directory.
            timeout: seconds to wait for a file.
        """
        where = f"recv {name}"
        deadline = time.monotonic() + timeout
        with self._cond:
            link = self._links.get(name)
            if link is None:
                return f"FAIL(recv: no link named {name})"
            while not link.arrived and not link.reason:
                left = deadline - time.monotonic()
                if left <= 0:
                    return f"FAIL({where}: no file within {timeout:g} s)"
                self._cond.wait(left)
            if not link.arrived or link.discard:  # discard: close_link took its files
                return f"FAIL({where}: link closed: {link.reason})"
            arrival = link.arrived.popleft()
            try:
                os.replace(arrival.path, path)
            except OSError as exc:
                link.arrived.appendleft(arrival)  # still there for a later recv
                return f"FAIL({where}: cannot write {path}: {exc.strerror or exc})"
        return f"OK:RECV({name}:{arrival.size}:{arrival.sha256})"

    def close(self, timeout: float = 5.0) -> None:
        """End every link (no ``INFO``), wake every waiting ``send``/``recv``, join the link
        thread, close every socket and delete the spools. Idempotent."""
        with self._cond:
            self._stopping = True
            links = list(self._links.values())
            self._links.clear()
            for link in links:
                self._retire(link, "the invocation ended")
            thread = self._thread
        self._wake()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the link thread did not end within %g s", timeout)
        with self._cond:
            leftovers, self._retired = self._retired, []
        if thread is None or not thread.is_alive():
            for link in leftovers:
                self._release(link)
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        shutil.rmtree(self.spool_root, ignore_errors=True)

    # ------------------------------------------------------------------ helpers (any thread)

    def _get(self, name: str) -> _Link | None:
        with self._cond:
            return self._links.get(name)

    def _retire(self, link: _Link, reason: str) -> None:
        """Hand ``link`` to the link thread for release (``self._cond`` held)."""
        if not link.reason:
            link.reason = reason  # set before the link thread sees an end: no INFO
        link.discard = True
        self._retired.append(link)
        self._cond.notify_all()

    def _end_by_us(self, link: _Link, reason: str) -> None:
        with self._cond:
            if self._links.get(link.name) is link:
                del self._links[link.name]
            if not link.discard:
                self._retire(link, reason)
        self._wake()

    def _await_release(self, link: _Link, timeout: float = 5.0) -> None:
        if not link.released.wait(timeout):
            log.warning("link %s was not released within %g s", link.name, timeout)

    def _enqueue(self, link: _Link, data: bytes | memoryview) -> str:
        """Queue ``data`` for writing, waiting while the outbox is full; "" or why not."""
        with self._cond:
            while link.queued >= OUTBOX_LIMIT and not link.reason:
                self._cond.wait()
            if link.reason:
                return f"link closed: {link.reason}"
            link.outbox.append(memoryview(data))
            link.queued += len(data)
            link.enqueued += len(data)
        self._wake()
        return ""

    def _wait_written(self, link: _Link, target: int | None = None) -> str:
        """Wait until ``target`` bytes (all that were queued) were written; "" or why not."""
        with self._cond:
            if target is None:
                target = link.enqueued
            while link.written < target and not link.reason:
                self._cond.wait()
            if link.written < target:
                return f"link closed: {link.reason}"
        return ""

    def _wake(self) -> None:
        if self._wake_w is not None:
            # BlockingIOError: the pair is full, so a wake-up is pending; OSError: closed.
            with contextlib.suppress(OSError):
                self._wake_w.send(b"\0")

    def _ensure_thread(self) -> None:
        """Start the link thread at the first link (``self._cond`` held)."""
        if self._thread is not None:
            return
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._serve, name="mu-links", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the link thread

    def _serve(self) -> None:
        selector = self._selector
        assert selector is not None and self._wake_r is not None
        try:
            while True:
                with self._cond:
                    if self._stopping and not self._links:
                        retired, self._retired = self._retired, []
                        break
                    retired, self._retired = self._retired, []
                    links = list(self._links.values())
                for link in retired:
                    self._release(link)
                for link in links:
                    self._arm(selector, link)
                for key, mask in selector.select():
                    if key.data is None:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                        continue
                    link = key.data
                    if mask & selectors.EVENT_READ:
                        link.write_wants_read = False
                        self._read(link)
                    if mask & selectors.EVENT_WRITE and link.registered:
                        self._write(link)
        except Exception as exc:  # a bug: end every link with a reason, never hang a recv
            log.exception("the link thread failed")
            with self._cond:
                retired, self._retired = self._retired, []
                for link in self._links.values():
                    link.reason = link.reason or f"internal error: {type(exc).__name__}: {exc}"
                    retired.append(link)
                self._links.clear()
                self._cond.notify_all()
        for link in retired:
            self._release(link)
        selector.close()

    def _arm(self, selector: selectors.BaseSelector, link: _Link) -> None:
        with self._cond:
            if link.reason:
                return
            want_write = bool(link.outbox) and not link.write_wants_read
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
        if events == link.registered:
            return
        if link.registered:
            selector.modify(link.sock, events, link)
        else:
            selector.register(link.sock, events, link)
            link.registered = events
            self._read(link)  # bytes TLS buffered before registration would never wake us
            return
        link.registered = events

    def _read(self, link: _Link) -> None:
        while not link.reason:
            decoder = link.decoder
            try:
                # Into the decoder's reused buffer, and each frame handed on as a view of it:
                # no new memory per frame (its first touch costs more than TLS here).
                received = link.sock.recv_into(decoder.get_buffer(_RECV_SIZE), _RECV_SIZE)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return
            except OSError as exc:
                self._ended(link, f"connection lost: {exc.strerror or exc}")
                return
            try:
                if received:
                    decoder.buffer_updated(received)
                else:
                    decoder.receive_data(b"")
                while (frame := decoder.next_frame_view()) is not NEED_DATA:
                    if frame is CLOSED:
                        self._closed_by_relay(link)
                        return
                    assert isinstance(frame, memoryview)
                    self._frame(link, frame)
            except ProtocolError as exc:
                self._ended(link, str(exc))
                return
            except OSError as exc:
                self._ended(link, f"cannot spool in {link.spool_dir}: {exc.strerror or exc}")
                return

    def _frame(self, link: _Link, frame: memoryview) -> None:
        """Take one frame (a view, valid until the next read: written to the spool or
        copied before then)."""
        is_fail = frame[:5].tobytes() == b"FAIL("
        link.last_frame = frame.tobytes() if is_fail else b""  # only a FAIL is looked at
        if link.assembler.idle and is_fail:
            return  # the relay's last word; the link's end (EOF) follows and reports it
        for event in link.assembler.feed(frame):
            if isinstance(event, FileData):
                assert link.spool is not None
                link.spool.write(event.data)
            elif isinstance(event, FileStarted):
                link.files += 1
                link.spool_path = os.path.join(link.spool_dir, str(link.files))
                link.spool = open(link.spool_path, "wb")  # noqa: SIM115 - closed at FileDone
            else:
                assert link.spool is not None
                link.spool.close()
                link.spool = None
                with self._cond:
                    link.arrived.append(_Arrival(link.spool_path, event.size, event.sha256))
                    self._send(f"INFO:file:{link.name}:{event.size}:{event.sha256}")
                    self._cond.notify_all()

    def _closed_by_relay(self, link: _Link) -> None:
        got, size = link.assembler.progress
        if size:
            self._ended(link, f"closed in the middle of a file ({got} of {size} bytes)")
        else:
            self._ended(link, "the relay closed the link")

    def _ended(self, link: _Link, reason: str) -> None:
        """The link ended on its own (``reason``); the relay's FAIL text wins if it sent one."""
        relay_fail = _RELAY_FAIL.fullmatch(link.last_frame)
        if relay_fail is not None:
            reason = decode_text(relay_fail.group(1))
        with self._cond:
            if link.reason:
                return
            link.reason = reason
            # told before a waiting recv or send can answer, so INFO comes first
            self._send(f"INFO:link_closed:{link.name}:{reason}")
            self._cond.notify_all()
        log.warning("link %s ended: %s", link.name, reason)
        self._release(link)

    def _write(self, link: _Link) -> None:
        while True:
            with self._cond:
                if link.reason or not link.outbox:
                    self._cond.notify_all()
                    return
                data = link.outbox[0]
            try:
                sent = link.sock.send(data)
            except (ssl.SSLWantWriteError, BlockingIOError):
                return
            except ssl.SSLWantReadError:
                link.write_wants_read = True  # wait for readability, not writability
                return
            except OSError as exc:
                # A relay that ends a link while we write to it has sent its reason first:
                # read what is left, so that its FAIL frame is the reason when it arrived.
                self._read(link)
                self._ended(link, f"connection lost while sending: {exc.strerror or exc}")
                return
            with self._cond:
                link.written += sent
                link.queued -= sent
                if sent == len(data):
                    link.outbox.popleft()
                else:
                    link.outbox[0] = data[sent:]
                self._cond.notify_all()

    def _release(self, link: _Link) -> None:
        """Close the link's socket and partial spool (once; the link thread, or ``close``
        after it ended); a retired link's spooled files go too."""
        if not link.released.is_set():
            if link.registered and self._selector is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(link.sock)
                link.registered = 0
            _close_quietly(link.sock)
            if link.spool is not None:  # the link ended inside a file
                link.spool.close()
                link.spool = None
                with contextlib.suppress(OSError):
                    os.unlink(link.spool_path)
            with self._cond:
                link.outbox.clear()
                link.queued = 0
                self._cond.notify_all()
            link.released.set()
        if link.discard:
            shutil.rmtree(link.spool_dir, ignore_errors=True)


def _close_quietly(sock: socket.socket) -> None:
    """Close a link socket, sending a TLS close_notify first without waiting for the peer's."""
    if isinstance(sock, ssl.SSLSocket):
        with contextlib.suppress(OSError, ValueError):
            sock.setblocking(False)
            sock.unwrap()
    sock.close()
