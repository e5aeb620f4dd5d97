"""moto's S3 server, pinned to 127.0.0.1 on a free port (moto's default is 0.0.0.0:5000)."""

from __future__ import annotations

import logging
from types import TracebackType

from moto.server import ThreadedMotoServer

__all__ = ["S3Server"]


class S3Server:
    """A moto server for S3 on loopback. ``start()`` returns once it listens."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the embedded S3 listens on loopback only, not {host!r}")
        self._server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        self._started = False

    def start(self) -> None:
        # moto's server logs every request through werkzeug; a run is not a web log.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server.start()
        self._started = True

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.get_host_and_port()
        return host, port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._server.stop()
        inner = getattr(self._server, "_server", None)
        if inner is not None:
            inner.server_close()

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
