"""A Lambda Invoke endpoint that answers every request with 202 at once.

Used by ``bench/launch.py`` to measure how fast the launcher itself can go: it parses
pipelined HTTP/1.1 requests (headers + Content-Length body) on keep-alive connections and
answers each with a fixed ``202 Accepted``, counting requests. It runs in its own process so
that its CPU is not charged to the launcher.

Usage: ``python3 bench/instant_endpoint.py`` prints ``PORT`` on stdout once listening on
127.0.0.1, then serves until stdin closes; on exit it prints the request count.
"""

from __future__ import annotations

import asyncio
import sys

RESPONSE = (
    b"HTTP/1.1 202 Accepted\r\n"
    b"Content-Type: application/json\r\n"
    b"x-amzn-RequestId: 00000000-0000-0000-0000-000000000000\r\n"
    b"Content-Length: 0\r\n\r\n"
)


class Counter:
    requests = 0


class InstantProtocol(asyncio.Protocol):
    """Parse requests from the byte stream; answer each with :data:`RESPONSE`."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        answered = 0
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(self.buf[:end]).lower()
            at = head.find(b"content-length:")
            length = 0
            if at >= 0:
                eol = head.find(b"\r\n", at)
                length = int(head[at + 15 : eol if eol >= 0 else None])
            if len(self.buf) < end + 4 + length:
                break
            del self.buf[: end + 4 + length]
            answered += 1
        if answered and self.transport is not None:
            Counter.requests += answered
            self.transport.write(RESPONSE * answered)


async def serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(InstantProtocol, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()
    await server.wait_closed()


def main() -> None:
    asyncio.run(serve())
    print(Counter.requests, flush=True)


if __name__ == "__main__":
    main()
