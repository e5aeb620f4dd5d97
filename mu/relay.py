"""The relay's socket pump: one thread, one ``selectors`` loop, around :mod:`mu.relay_core`.

Theory of operation
-------------------
:class:`Relay` listens beside the coordinator (or alone, as ``mu relay``) and owns the
sockets, TLS, the selector and the clock; :class:`~mu.relay_core.RelayCore` decides
everything else (pairing, holding, bounds, hello deadline). The selector, listener, wake-up
pair and deadline heap are a :class:`mu.net.Server`, as the coordinator's. Each turn of the
loop:

1. **Accept** a batch of connections. Each gets a :class:`~mu.net.Pipe`, the coordinator's
   non-blocking pyOpenSSL adapter (mutual TLS against the run's CA with
   :func:`mu.tls.server_context`, or plain TCP without keys), and a handshake deadline.
   Connections still in their handshake are bounded in all and per source address
   (:class:`~mu.net.Admission`, as the coordinator's): when full, the oldest goes for the
   newcomer, so a crowd of strangers cannot lock workers out. Over
   :attr:`~mu.relay_core.RelayLimits.max_connections` the oldest such goes too, or, with
   none, the newcomer.
2. **Handshake** until the pipe says it is done; then the core hears ``connected`` and its
   hello deadline starts.
3. **Read** what the socket has (up to :data:`_READS` TLS records per readiness; the
   selector is level-triggered) and hand it to the core; apply its actions:
   :class:`~mu.relay_core.Deliver` queues bytes for a connection, written after the last of
   those reads (what its socket takes now), :class:`~mu.relay_core.Pause` /
   :class:`~mu.relay_core.Resume` take a sender's read interest away and back,
   :class:`~mu.relay_core.Close` writes the connection's last frame, ends the sending side
   once that is out, and closes when the peer has closed (or after :data:`LINGER` seconds),
   reading and dropping what still comes: closing with unread bytes would reset the
   connection, and the reset could discard the last frame before the peer reads it.
4. **Write** queued bytes where the socket is writable, telling the core how many went
   (``written``), which may resume paused senders. Several records are written corked
   (``TCP_CORK``): OpenSSL sends each 16 KiB record with its own ``send()``, and corked they
   leave as one segment, which the receiving end handles once.
5. **Time**: the core's ``tick`` and the pump's handshake and linger deadlines.

A connection that fails (reset, TLS error) ends that connection only. :meth:`Relay.stats`
merges the core's counts with the pump's own drops (``tls_failed``,
``handshake_timeout``, ``evicted``, ``over_max_connections``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Final

from OpenSSL import SSL

from mu.errors import ConfigError, TransportError
from mu.net import WAKE, Admission, Pipe, Server, listen
from mu.relay_core import (
    DEFAULT_RELAY_PORT,
    Action,
    Close,
    Deliver,
    Pause,
    RelayCore,
    RelayLimits,
    RelayStats,
    Resume,
)
from mu.tls import KeySet

__all__ = ["DEFAULT_RELAY_PORT", "LINGER", "Relay", "RelayLimits", "RelayStats", "check_port"]

log = logging.getLogger(__name__)

LINGER: Final = 5.0
"""Seconds a connection the relay ends may take to receive its last frame."""

_ACCEPT_BATCH: Final = 256
_READS: Final = 8  # reads per readiness of a connection at most
_SEND_MAX: Final = 65536  # what one pyOpenSSL send takes at most (mu.net.Pipe)
_RECORD: Final = 16384  # a TLS record's payload at most


def _listen(host: str, port: int, buffer: int | None = None) -> socket.socket:
    """A listening socket on ``host:port`` (:func:`mu.net.listen`).

    Raises:
        ConfigError: it cannot be bound (the message names the address and why).
    """
    try:
        return listen(host, port, 4096, buffer)
    except OSError as exc:
        raise ConfigError(
            f"the relay cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from exc


def check_port(host: str, port: int) -> str | None:
    """Why the relay could not listen on ``host:port`` now (None: it could)."""
    try:
        _listen(host, port).close()
    except ConfigError as exc:
        return str(exc)
    return None


class _Conn:
    """One connection: its pipe, its queued output and what the selector watches."""

    __slots__ = ("closing", "draining", "events", "id", "offset", "out", "paused", "pipe",
                 "tls_done")

    def __init__(self, cid: int, pipe: Pipe, tls_done: bool) -> None:
        self.id = cid
        self.pipe = pipe
        self.tls_done = tls_done
        self.out: deque[bytes] = deque()
        self.offset = 0  # bytes of out[0] already sent
        self.paused = False
        self.closing = False  # ended by the relay: its last frame goes out, then it closes
        self.draining = False  # that frame is out: read and discard until the peer closes
        self.events = 0  # what the selector watches for (mu.net.Server.watch)


class Relay:
    """The relay server (see the module docstring).

    Args:
        keys: the run's keys (server side: its certificate; clients must present a
            certificate from its CA); None: plain TCP (a ``--no-tls`` run).
        token: the run token every hello must carry; None: any ``<run>`` (standalone).
        host: the address to listen on.
        port: the port (0: a free one).
        limits: the bounds (default :class:`~mu.relay_core.RelayLimits`).
        clock: monotonic time source.
    """

    def __init__(
        self,
        keys: KeySet | None,
        token: str | None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        limits: RelayLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"relay port {port} is not between 0 and 65535")
        self.host = host
        self.port = port
        self.limits = limits or RelayLimits()
        self.clock = clock
        self._core = RelayCore(token, self.limits)
        self._ctx: SSL.Context | None = None
        if keys is not None:
            from mu.tls import server_context

            self._ctx = server_context(keys)
        self._io = Server(clock)
        self._bound: tuple[str, int] | None = None
        self._conns: dict[int, _Conn] = {}
        self._ids = itertools.count()
        self._drops: dict[str, int] = {}
        # Connections whose TLS handshake has not finished (mu.net.Admission, as the
        # coordinator's): when full, the oldest is dropped for a newcomer.
        self._admission: Admission[int] = Admission(
            self.limits.max_unauthenticated, self.limits.max_unauthenticated_per_address)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified after each turn
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stopped = False
        self._error: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port).

        Raises:
            RuntimeError: the relay was not started.
        """
        if self._bound is None:
            raise RuntimeError("the relay is not started")
        return self._bound

    def start(self) -> None:
        """Bind and listen, then serve in a daemon thread.

        Raises:
            ConfigError: the address cannot be bound (the message names it and why).
        """
        if self._thread is not None:
            return
        self._bound = self._io.open(_listen(self.host, self.port, self.limits.socket_buffer))
        self._thread = threading.Thread(target=self._serve, name="mu-relay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close every connection and the listener; join the thread. Idempotent."""
        if self._stopped:
            return
        self._stopping = True
        self._io.wake()
        if self._thread is not None:
            self._thread.join()
        self._stopped = True
        self._close_all()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait until the loop has ended (:meth:`stop` from another thread, or a bug: see
        :attr:`error`); True if it has. Signals interrupt the wait in the main thread."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> Relay:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stats(self) -> RelayStats:
        """The core's counts, with the pump's drops among the refusals."""
        with self._lock:
            return self._stats()

    def wait_stats(self, predicate: Callable[[RelayStats], bool],
                   timeout: float) -> RelayStats:
        """Wait until ``predicate(stats)`` holds (checked after each turn of the loop).

        Raises:
            TimeoutError: it did not within ``timeout`` seconds (the message shows the
                last statistics).
        """
        with self._changed:
            if self._changed.wait_for(lambda: predicate(self._stats()), timeout):
                return self._stats()
            raise TimeoutError(f"relay statistics not as awaited within {timeout:g} s: "
                               f"{self._stats()}")

    def _stats(self) -> RelayStats:
        core = self._core.stats()
        drops = dict(self._drops)
        reasons = dict(core.reasons)
        for kind, n in drops.items():
            reasons[kind] = reasons.get(kind, 0) + n
        return dataclasses.replace(core, refused=core.refused + sum(drops.values()),
                                   connections=len(self._conns),
                                   reasons=tuple(sorted(reasons.items())))

    @property
    def error(self) -> BaseException | None:
        """What ended the loop, if it was not :meth:`stop` (a bug)."""
        return self._error

    # -- the loop -------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug: keep it for the owner, end the relay
            self._error = exc
            log.exception("the relay stopped")

    def _loop(self) -> None:
        io = self._io
        select = io.selector.select
        core = self._core
        while not self._stopping:
            timeout = 1.0
            wake_at = io.earliest(core.wake_at)
            if wake_at is not None:
                timeout = max(0.0, min(timeout, wake_at - self.clock()))
            ready = select(timeout)
            with self._lock:
                for key, mask in ready:
                    data = key.data
                    if data is None:
                        self._accept()
                    elif data is WAKE:
                        io.drain_wake()
                    else:
                        self._service(data, mask)
                now = self.clock()
                self._apply(core.tick(now))
                self._expire(now)
                self._changed.notify_all()

    def _accept(self) -> None:
        listener = self._io.listener
        assert listener is not None
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: the rest wait in the backlog
                self._count("accept_errors")
                log.warning("relay: accept failed: %s", exc)
                return
            if len(self._conns) >= self.limits.max_connections:
                oldest = self._admission.oldest()
                if oldest is None:  # every connection is a worker's: the newcomer goes
                    self._count("over_max_connections")
                    sock.close()
                    continue
                self._count("evicted")
                self._drop(self._conns[oldest])
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            cid = next(self._ids)
            conn = _Conn(cid, Pipe(sock, self._ctx, f"{addr[0]}:{addr[1]}"), self._ctx is None)
            if not conn.tls_done:  # not authenticated yet: the oldest such may go for it
                for old in self._admission.admit(cid, str(addr[0])):
                    self._count("evicted")
                    self._drop(self._conns[old])
            self._conns[cid] = conn
            self._io.watch(conn, selectors.EVENT_READ)
            if conn.tls_done:
                self._apply(self._core.connected(cid, self.clock()))
            else:
                self._io.at(self.limits.handshake_timeout, cid, "handshake")

    def _service(self, conn: _Conn, mask: int) -> None:
        if conn.id not in self._conns:
            return
        if not conn.tls_done:
            self._handshake(conn)
            return
        if conn.draining:
            self._drain(conn)
            return
        if mask & selectors.EVENT_READ and not conn.paused and not conn.closing:
            self._read(conn)
        if conn.id in self._conns and conn.out:
            self._flush(conn)

    def _handshake(self, conn: _Conn) -> None:
        try:
            done = conn.pipe.handshake()
        except TransportError as exc:
            self._count("tls_failed")
            log.info("relay: %s", exc)
            self._drop(conn)
            return
        if done:
            conn.tls_done = True
            self._admission.forget(conn.id)
            self._apply(self._core.connected(conn.id, self.clock()))
            self._read(conn)  # the hello may have come with the last flight
        elif conn.pipe.wants_write:
            self._io.watch(conn, selectors.EVENT_READ | selectors.EVENT_WRITE)
        else:
            self._io.watch(conn, selectors.EVENT_READ)

    def _read(self, conn: _Conn) -> None:
        # A few reads per wake-up (a TLS read gives one 16 KiB record): fewer turns of the
        # loop per byte, and still a bounded share for one connection. What they deliver is
        # written after the last, so that a partner's socket takes it in one corked batch.
        flush: list[_Conn] = []
        for _ in range(_READS):
            try:
                data = conn.pipe.receive()
            except TransportError as exc:
                self._apply(self._core.closed(conn.id, str(exc)), flush)
                self._drop(conn)
                break
            if data is None:
                self._update(conn)
                break
            self._apply(self._core.received(conn.id, data, self.clock()), flush)
            if not data or conn.paused or conn.closing or conn.id not in self._conns:
                break
        self._flush_each(flush)

    def _flush(self, conn: _Conn) -> None:
        out = conn.out
        pipe = conn.pipe
        total = 0
        # OpenSSL writes each 16 KiB record with its own send(): corked, the kernel sends
        # them as one segment, and the receiving end (its softirq, its wake-up) handles
        # one instead of several.
        corked = len(out) > 1 or len(out[0]) - conn.offset > _RECORD
        if corked:
            with contextlib.suppress(OSError):
                pipe.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        try:
            while out:
                head = out[0]
                view = memoryview(head)[conn.offset:conn.offset + _SEND_MAX]
                sent = pipe.send(view)
                if not sent:
                    break
                total += sent
                conn.offset += sent
                if conn.offset == len(head):
                    out.popleft()
                    conn.offset = 0
        except TransportError as exc:
            if not conn.closing:
                self._apply(self._core.closed(conn.id, str(exc)))
            self._drop(conn)
            return
        if corked:
            with contextlib.suppress(OSError):
                pipe.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        if total and not conn.closing:
            self._apply(self._core.written(conn.id, total))
        if conn.id not in self._conns:
            return
        if conn.closing and not out:
            # A close with unread bytes from the peer would reset the connection, and a
            # reset can discard the last frame before the peer reads it: end our side of
            # the stream, then read what comes until the peer closes (or the linger ends).
            conn.draining = True
            with contextlib.suppress(OSError):
                pipe.sock.shutdown(socket.SHUT_WR)
            self._io.watch(conn, selectors.EVENT_READ)
        else:
            self._update(conn)

    def _drain(self, conn: _Conn) -> None:
        for _ in range(_READS):
            try:
                data = conn.pipe.receive()
            except TransportError:
                data = b""
            if data is None:
                return
            if not data:
                self._drop(conn)
                return

    def _apply(self, actions: Sequence[Action], flush: list[_Conn] | None = None) -> None:
        """Apply the core's ``actions``; the connections with new output are written to at
        the end, or left in ``flush`` for the caller to write to (:meth:`_flush_each`)."""
        # Writes wait until the whole batch is applied: a write makes the core act again
        # (written -> Resume), which must come after this batch's Pause, not before it.
        mine = flush is None
        if flush is None:
            flush = []
        for action in actions:
            conn = self._conns.get(action.cid)
            if conn is None:
                continue
            if isinstance(action, Deliver):
                conn.out.append(action.data)
                if len(conn.out) == 1:
                    flush.append(conn)
            elif isinstance(action, Pause):
                conn.paused = True
                self._update(conn)
            elif isinstance(action, Resume):
                conn.paused = False
                self._update(conn)
            elif isinstance(action, Close):
                conn.closing = True
                if not action.farewell:  # the peer has gone
                    self._drop(conn)
                    continue
                log.info("relay: ending %s: %s", conn.pipe.peer, action.reason)
                conn.out.append(action.farewell)
                self._io.at(LINGER, conn.id, "linger")
                flush.append(conn)
        if mine:
            self._flush_each(flush)

    def _flush_each(self, conns: list[_Conn]) -> None:
        for conn in conns:
            if conn.id in self._conns and conn.out:
                self._flush(conn)

    def _update(self, conn: _Conn) -> None:
        events = 0
        if not conn.paused and not conn.closing:
            events |= selectors.EVENT_READ
        if conn.out or conn.pipe.wants_write:
            events |= selectors.EVENT_WRITE
        self._io.watch(conn, events)

    def _drop(self, conn: _Conn) -> None:
        """Close ``conn`` (the core has forgotten it, or never knew it)."""
        if self._conns.pop(conn.id, None) is None:
            return
        self._admission.forget(conn.id)
        self._io.close_conn(conn)

    def _count(self, kind: str) -> None:
        self._drops[kind] = self._drops.get(kind, 0) + 1

    def _expire(self, now: float) -> None:
        for _, _, cid, kind in self._io.due(now):
            conn = self._conns.get(cid)
            if conn is None:
                continue
            if kind == "handshake" and not conn.tls_done:
                self._count("handshake_timeout")
                self._drop(conn)
            elif kind == "linger":
                self._drop(conn)

    def _close_all(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn)
        self._io.close()
