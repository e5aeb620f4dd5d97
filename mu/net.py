"""Non-blocking byte pumps between a socket (optionally pyOpenSSL) and the rest of mu.

Theory of operation
-------------------
A :class:`Pipe` owns one accepted socket. It knows nothing of frames or states: it moves
bytes. Each call reports what happened instead of raising for the ordinary outcomes of
non-blocking I/O, mapped once here, urllib3-style:

=====================================  ==========================================
socket / pyOpenSSL outcome             result
=====================================  ==========================================
data                                   the bytes
``BlockingIOError``, ``WantReadError``   ``None`` (wait for readability)
``WantWriteError``                     ``None``, and :attr:`Pipe.wants_write`
``ZeroReturnError``, ``recv() == b""``  ``b""`` (clean EOF)
``SysCallError`` (-1, "Unexpected EOF") ``b""`` with :attr:`Pipe.ragged` set
``ECONNRESET`` and other ``OSError``    :class:`~mu.errors.TransportError`
any other ``SSL.Error``                 :class:`~mu.errors.TransportError`
=====================================  ==========================================

A TLS pipe must first finish :meth:`Pipe.handshake` (which returns False while it needs
more I/O); its pyOpenSSL connection is made then, so a peer that never sends costs a socket
only. :meth:`Pipe.client_hello_waiting` peeks whether a whole ClientHello record waits in the
socket, untouched: the coordinator starts a handshake (CPU-bound work and full-size buffers)
only for those, a bounded number at a time. :meth:`Pipe.receive` reads once per call (see there why nothing is left behind).

:class:`Admission` is the pure policy for connections not yet authenticated (no sockets, no
clock): it holds at most ``total`` of them, and at most ``per_address`` from one source
address, and when a newcomer would exceed a bound it names the *oldest* connection to drop
(from that address, else overall). A stranger therefore never locks a worker out: a
connection is dropped only after that many others arrived behind it, and a worker finishes
its handshake in a round trip or two.

:class:`Server` is the skeleton the coordinator and the relay share around their policies:
one ``selectors`` selector, the listening socket (registered with data None), a wake-up
socket pair (data :data:`WAKE`) that another thread writes to, and a heap of per-connection
deadlines ``(when, seq, id, kind)`` whose stale entries the owner skips. A connection it
watches is any object with ``events`` (what the selector watches, 0: unregistered) and
``pipe``; it is registered with itself as the selector's data.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import selectors
import socket
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Final, Generic, Protocol, TypeVar

from OpenSSL import SSL

from mu.errors import TransportError

__all__ = ["WAKE", "Admission", "Pipe", "Server", "listen"]

K = TypeVar("K", bound=Hashable)

_READ_SIZE = 65536  # bytes per read; more than a TLS record's 16 KiB of plaintext
_RECORD_MAX = 5 + 16384 + 256  # a TLS record's header and its largest body

WAKE: Final = "wake"
"""The selector data of :class:`Server`'s wake-up socket."""


class Pipe:
    """One non-blocking connection, plain TCP or pyOpenSSL server-side TLS.

    Args:
        sock: the accepted socket (made non-blocking here).
        context: a server :class:`OpenSSL.SSL.Context`, or None for plain TCP.
        peer: the peer's name for error messages.
    """

    __slots__ = ("_conn", "_context", "_handshaken", "peer", "ragged", "sock", "wants_write")

    def __init__(self, sock: socket.socket, context: SSL.Context | None, peer: str) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.peer = peer
        self.ragged = False
        self.wants_write = False
        self._conn: SSL.Connection | None = None  # made by the first handshake() call
        self._context = context
        self._handshaken = context is None

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def tls_version(self) -> str | None:
        """The negotiated protocol ("TLSv1.3"), or None for plain TCP or before the handshake."""
        if self._conn is None or not self._handshaken:
            return None
        return self._conn.get_protocol_version_name()

    @property
    def client_hello_received(self) -> bool:
        """Whether the peer's whole TLS ClientHello has arrived (True for plain TCP): OpenSSL
        picks the cipher when it has read the ClientHello, not before."""
        if self._context is None:
            return True
        return self._conn is not None and self._conn.get_cipher_name() is not None

    def client_hello_waiting(self) -> bool:
        """Whether a whole TLS handshake record (a ClientHello) waits in the socket, unread.

        False for a partial record, EOF or an error: :meth:`handshake` then reads and reports.
        """
        try:
            head = self.sock.recv(_RECORD_MAX, socket.MSG_PEEK)
        except OSError:
            return False
        return len(head) >= 5 and len(head) >= 5 + int.from_bytes(head[3:5], "big")

    def handshake(self) -> bool:
        """Advance the TLS handshake; True once it is complete.

        Raises:
            TransportError: the handshake failed (wrong CA, no certificate, not TLS, EOF).
        """
        if self._handshaken:
            return True
        if self._conn is None:
            assert self._context is not None
            self._conn = SSL.Connection(self._context, self.sock)
            self._conn.set_accept_state()
        self.wants_write = False
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.WantWriteError:
            self.wants_write = True
            return False
        except (OSError, SSL.Error) as exc:
            raise TransportError(f"TLS handshake with {self.peer}: {exc}") from exc
        self._handshaken = True
        return True

    def receive(self) -> bytes | None:
        """What one read gives now: bytes, ``b""`` at EOF, or None if nothing yet.

        One read is enough, because the selector is level-triggered: bytes still in the socket
        make it report the connection again. Nothing stays behind inside pyOpenSSL either: a
        TLS record carries at most 16 KiB of plaintext, one ``SSL_read`` of up to
        :data:`_READ_SIZE` returns all of it, and OpenSSL (no read-ahead) takes from the
        socket no more than the record it decrypts.

        Raises:
            TransportError: the connection broke (reset, TLS error).
        """
        if self._conn is None:
            try:
                return self.sock.recv(_READ_SIZE)
            except BlockingIOError:
                return None
            except OSError as exc:
                raise TransportError(f"connection with {self.peer} failed: {exc}") from exc
        try:
            return self._conn.recv(_READ_SIZE)
        except SSL.WantReadError:
            return None
        except SSL.WantWriteError:
            self.wants_write = True
            return None
        except SSL.ZeroReturnError:
            return b""
        except SSL.SysCallError as exc:
            if exc.args and exc.args[0] == -1:
                self.ragged = True
                return b""
            raise TransportError(f"connection with {self.peer} failed: {exc}") from exc
        except SSL.Error as exc:
            raise TransportError(f"TLS error with {self.peer}: {exc}") from exc

    def send(self, data: bytes | memoryview) -> int:
        """Send what the socket takes now; return the number of bytes sent.

        Raises:
            TransportError: the connection broke.
        """
        self.wants_write = False
        try:
            if self._conn is None:
                return self.sock.send(data)
            return self._conn.send(data[:_READ_SIZE])
        except (BlockingIOError, SSL.WantReadError):
            return 0
        except SSL.WantWriteError:
            self.wants_write = True
            return 0
        except (OSError, SSL.Error) as exc:
            raise TransportError(f"sending to {self.peer} failed: {exc}") from exc

    def close(self) -> None:
        """Close without waiting for the peer (a best-effort TLS close_notify first)."""
        if self._conn is not None and self._handshaken:
            with contextlib.suppress(SSL.Error, OSError):
                self._conn.shutdown()
        self.sock.close()


class Admission(Generic[K]):
    """Which connections not yet authenticated to keep (a pure policy; see the module doc).

    Args:
        total: connections held at once, from every address.
        per_address: connections held at once from one source address.
    """

    __slots__ = ("_all", "_by_address", "per_address", "total")

    def __init__(self, total: int, per_address: int) -> None:
        if total < 1 or per_address < 1:
            raise ValueError(f"bounds must be >= 1, got total={total}, "
                             f"per_address={per_address}")
        self.total = total
        self.per_address = per_address
        self._all: OrderedDict[K, str] = OrderedDict()  # key -> address, oldest first
        self._by_address: dict[str, OrderedDict[K, None]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, key: object) -> bool:
        return key in self._all

    def count(self, address: str) -> int:
        """Connections held from ``address``."""
        return len(self._by_address.get(address, ()))

    def oldest(self) -> K | None:
        """The connection held longest, or None."""
        return next(iter(self._all), None)

    def admit(self, key: K, address: str) -> list[K]:
        """Hold ``key`` (from ``address``); return the connections to drop for it, oldest
        first (already forgotten here). ``key`` itself is never among them."""
        evicted: list[K] = []
        same = self._by_address.get(address)
        if same is not None and len(same) >= self.per_address:
            evicted.append(next(iter(same)))
            self.forget(evicted[-1])
        while len(self._all) >= self.total:
            evicted.append(next(iter(self._all)))
            self.forget(evicted[-1])
        self._all[key] = address
        self._by_address.setdefault(address, OrderedDict())[key] = None
        return evicted

    def forget(self, key: K) -> None:
        """Stop holding ``key`` (it authenticated, or it is gone); unknown keys are fine."""
        address = self._all.pop(key, None)
        if address is None:
            return
        same = self._by_address[address]
        del same[key]
        if not same:
            del self._by_address[address]


def listen(host: str, port: int, backlog: int, buffer: int | None = None) -> socket.socket:
    """A listening TCP socket on ``host:port``; ``buffer``: the kernel's send and receive
    buffers of every connection accepted (set before listening, so that they inherit it and
    the TCP window scale fits it).

    Raises:
        OSError: it cannot be bound (the socket is closed).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class Watched(Protocol):
    """A connection :class:`Server` watches: its pipe and the events registered for it."""

    events: int
    pipe: Pipe


class Server:
    """A one-thread server's selector, listener, wake-up pair and deadlines (see the module
    doc); the owner decides what its connections and deadlines mean.

    Args:
        clock: monotonic time source (deadlines are ``clock() + delay``).
    """

    __slots__ = ("_seq", "_wake_r", "_wake_w", "clock", "heap", "listener", "selector")

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.selector = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self.heap: list[tuple[float, int, int, str]] = []
        self._seq = itertools.count()

    def open(self, listener: socket.socket) -> tuple[str, int]:
        """Serve ``listener`` (made non-blocking) and make the wake-up pair; return the
        bound (host, port)."""
        listener.setblocking(False)
        self.listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, None)
        self.selector.register(self._wake_r, selectors.EVENT_READ, WAKE)
        host, port = listener.getsockname()[:2]
        return str(host), int(port)

    def wake(self) -> None:
        """Make the selector report :data:`WAKE` (from any thread). If the loop is gone or
        the pair is full, it wakes anyway."""
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"!")

    def drain_wake(self) -> None:
        """Read what :meth:`wake` wrote (the selector reported :data:`WAKE`)."""
        assert self._wake_r is not None
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)

    def watch(self, conn: Watched, events: int) -> None:
        """Have the selector watch ``conn`` for ``events`` (0: not at all)."""
        # Most calls leave the events as they were: no selector call then.
        if events == conn.events:
            return
        sock = conn.pipe.sock
        if conn.events and events:
            self.selector.modify(sock, events, conn)
        elif events:
            self.selector.register(sock, events, conn)
        else:
            self.selector.unregister(sock)
        conn.events = events

    def close_conn(self, conn: Watched) -> None:
        """Stop watching ``conn`` and close its pipe."""
        if conn.events:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(conn.pipe.sock)
        conn.pipe.close()

    def at(self, delay: float, cid: int, kind: str) -> None:
        """A ``kind`` deadline for connection ``cid``, ``delay`` seconds from now."""
        heapq.heappush(self.heap, (self.clock() + delay, next(self._seq), cid, kind))

    def earliest(self, wake_at: float | None) -> float | None:
        """The earlier of ``wake_at`` and the next deadline (None: neither)."""
        heap = self.heap
        if heap and (wake_at is None or heap[0][0] < wake_at):
            return heap[0][0]
        return wake_at

    def due(self, now: float) -> Iterator[tuple[float, int, int, str]]:
        """Take the deadlines reached at ``now`` off the heap, earliest first (deadlines
        added meanwhile are taken too once due)."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            yield heapq.heappop(heap)

    def close(self) -> None:
        """Close the selector, the listener and the wake-up pair (the owner closes its
        connections first)."""
        self.selector.close()
        for sock in (self.listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self.listener = self._wake_r = self._wake_w = None
