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
more I/O). :meth:`Pipe.receive` reads once per call (see there why nothing is left behind).
"""

from __future__ import annotations

import contextlib
import socket

from OpenSSL import SSL

from mu.errors import TransportError

__all__ = ["Pipe"]

_READ_SIZE = 65536  # bytes per read; more than a TLS record's 16 KiB of plaintext


class Pipe:
    """One non-blocking connection, plain TCP or pyOpenSSL server-side TLS.

    Args:
        sock: the accepted socket (made non-blocking here).
        context: a server :class:`OpenSSL.SSL.Context`, or None for plain TCP.
        peer: the peer's name for error messages.
    """

    __slots__ = ("_conn", "_handshaken", "peer", "ragged", "sock", "wants_write")

    def __init__(self, sock: socket.socket, context: SSL.Context | None, peer: str) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.peer = peer
        self.ragged = False
        self.wants_write = False
        self._conn: SSL.Connection | None = None
        self._handshaken = context is None
        if context is not None:
            self._conn = SSL.Connection(context, sock)
            self._conn.set_accept_state()

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def tls_version(self) -> str | None:
        """The negotiated protocol ("TLSv1.3"), or None for plain TCP or before the handshake."""
        if self._conn is None or not self._handshaken:
            return None
        return self._conn.get_protocol_version_name()

    def handshake(self) -> bool:
        """Advance the TLS handshake; True once it is complete.

        Raises:
            TransportError: the handshake failed (wrong CA, no certificate, not TLS, EOF).
        """
        if self._handshaken:
            return True
        assert self._conn is not None
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
