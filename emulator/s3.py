"""moto's S3 server, pinned to 127.0.0.1 on a free port (moto's default is 0.0.0.0:5000).

Theory of operation
-------------------
This serves the same WSGI application as moto's ``ThreadedMotoServer`` (moto's domain
dispatcher and request handler), but binds in the caller's thread: a port already taken
raises ``OSError`` from :meth:`S3Server.start` at once, where moto's own ``start()`` would
wait forever for a server thread that died. The serving thread sets a ready event as it
enters its loop and ``start()`` waits for it for a bounded time (the socket already listens,
so clients that connect earlier are queued, not refused). :meth:`S3Server.stop` shuts the
loop down, closes the socket and joins the thread.
"""

from __future__ import annotations

import logging
import socket
import threading
from types import TracebackType
from typing import Any

from moto.moto_server import werkzeug_app
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

__all__ = ["S3Server", "served_here"]

_READY_TIMEOUT = 10.0
_SERVED: set[str] = set()  # endpoint URLs of the servers running in this process


class _Dispatcher(DomainDispatcherApplication):
    """moto's dispatcher, remembering which backend serves which host.

    moto finds a request's backend by listing its own package directory (a ``stat`` per
    service, about 200) and matching the host against every service's URL patterns, for
    every request; the answer for a host never changes while the server runs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._backends: dict[str | None, Any] = {}

    def get_backend_for_host(self, host: str | None) -> Any:
        # called with moto's lock held
        if host not in self._backends:
            self._backends[host] = super().get_backend_for_host(host)
        return self._backends[host]


def served_here(url: str | None) -> bool:
    """Whether ``url`` is a moto server of this process (whose backends are this process's)."""
    return url is not None and url.rstrip("/") in _SERVED


class S3Server:
    """A moto server for S3 on loopback. ``start()`` returns once it serves.

    Args:
        host: a loopback address (anything else is refused).
        port: 0 picks a free port.

    Raises:
        ValueError: ``host`` is not a loopback address.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the embedded S3 listens on loopback only, not {host!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is outside 0-65535")
        self._host, self._port = host, port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._served = ""

    def start(self) -> None:
        """Bind and serve; return once serving.

        Raises:
            OSError: the address cannot be bound.
            RuntimeError: the serving thread did not start within a bounded time.
        """
        # moto's server logs every request through werkzeug; a run is not a web log.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        app = _Dispatcher(create_backend_app)
        # Newer moto ships a request handler that keeps S3 metadata headers spelt with
        # underscores; older releases have none, and werkzeug's default serves them.
        handler: type[WSGIRequestHandler] | None = getattr(
            werkzeug_app, "MotoRequestHandler", None)
        if self._port:
            # werkzeug prints its own lines on stderr for a port taken, then exits: find
            # out first, so the caller gets the OSError alone.
            with socket.create_server((self._host, self._port)):
                pass
        try:
            self._server = make_server(self._host, self._port, app, threaded=True,
                                       request_handler=handler)
        except SystemExit:  # werkzeug reports a failed bind on stderr and exits
            raise OSError(f"the S3 server cannot bind {self._host}:{self._port}") from None
        self._thread = threading.Thread(target=self._serve, name="mu-emulator-s3", daemon=True)
        self._thread.start()
        if not self._ready.wait(_READY_TIMEOUT):
            self.stop()
            raise RuntimeError("the S3 server did not start serving")
        self._served = self.endpoint_url
        _SERVED.add(self._served)

    def _serve(self) -> None:
        assert self._server is not None
        self._ready.set()
        self._server.serve_forever(poll_interval=0.2)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` actually bound."""
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        host, port = self.address
        return f"http://{host}:{port}"

    url = endpoint_url

    def stop(self) -> None:
        """Stop serving, close the socket and join the thread (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        _SERVED.discard(self._served)
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._ready.clear()

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
