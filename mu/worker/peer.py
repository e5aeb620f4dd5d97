"""A worker-to-peer link (``connect:host:port:first`` / ``close_connect:``).

Theory of operation
-------------------
:func:`open_link` dials ``host:port``, wraps the socket with the session's client TLS context
(the peer must present a certificate from the run's CA; plain TCP when the session has no
TLS), sends ``first`` as one frame and starts a reader thread. Every frame that arrives on the
link is surfaced to the coordinator as ``INFO:peer:<text>`` through the session's thread-safe
``send``. The reader is the only thread that reads the socket; :meth:`PeerLink.close` shuts
the socket down (which ends the reader's blocking read), joins the reader, then closes it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable

from mu.errors import ProtocolError
from mu.protocol import CLOSED, NEED_DATA, FrameDecoder, decode_text, encode_text

__all__ = ["PeerLink", "open_link"]

log = logging.getLogger("mu.worker")


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
    raw = socket.create_connection((host, port), timeout=timeout)
    sock: socket.socket = raw
    try:
        if context is not None:
            sock = context.wrap_socket(raw)
        sock.sendall(encode_text(first))
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raw.close()
        raise
    log.info("peer link to %s:%d open", host, port)
    return PeerLink(sock, f"{host}:{port}", send)
