"""Simulated workers for bench/coordinator.py: N connections answering like mu workers.

Usage: python bench/sim_workers.py HOST PORT TOKEN N [KEYDIR]   (no KEYDIR: plain TCP)
Each worker says hello, answers every command like the real worker, and stops at quit:.

The simulator shares the machine's cores with the coordinator it measures, so it is one
``selectors`` loop over non-blocking sockets, with stdlib ``ssl`` (the worker's TLS client)
doing the TLS in C: no per-message Python TLS layer as in asyncio's streams. At most
:data:`CONNECTING` connections are being set up (TCP connect and TLS handshake) at once.
"""

from __future__ import annotations

import os
import resource
import selectors
import socket
import ssl
import sys

from mu.protocol import NEED_DATA, FrameDecoder, encode_text

CONNECTING = 256


def answer(command: str) -> str | None:
    name, _, args = command.partition(":")
    key = args.partition(":")[0]
    if name == "set":
        return f"OK:SET({key})"
    if name == "seti":
        return f"OK:SETI({key})"
    if name == "retrieve":
        return "OK:RETRIEVE(bucket/key)"
    if name == "run":
        return "OK:RETVAL(0):OUTPUT():COMMAND(./png2y4m)"
    if name == "upload":
        return "OK:UPLOAD(bucket/key)"
    return None


class Worker:
    """One simulated worker: connecting, then handshaking (TLS), then answering."""

    __slots__ = ("decoder", "out", "sock", "stage")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.stage = "connect"
        self.decoder = FrameDecoder()
        self.out = bytearray()


class Simulator:
    def __init__(self, address: tuple[str, int], token: str, n: int,
                 ctx: ssl.SSLContext | None) -> None:
        self.address = address
        self.hello = encode_text(f"OK:HELLO:{token}")
        self.ctx = ctx
        self.to_start = n
        self.connecting = 0
        self.open = 0
        self.finished = 0
        self.sel = selectors.DefaultSelector()

    def run(self) -> int:
        """Serve every worker to its end; return how many got their quit:."""
        self._start_more()
        while self.open:
            for key, mask in self.sel.select():
                self._service(key.data, mask)
            self._start_more()
        return self.finished

    def _start_more(self) -> None:
        while self.to_start and self.connecting < CONNECTING:
            self.to_start -= 1
            self.connecting += 1
            self.open += 1
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.connect_ex(self.address)  # EINPROGRESS: writable once connected
            worker = Worker(sock)
            self.sel.register(sock, selectors.EVENT_WRITE, worker)

    def _service(self, worker: Worker, mask: int) -> None:
        try:
            if worker.stage == "connect":
                self._connected(worker)
            elif worker.stage == "handshake":
                self._handshake(worker)
            else:
                if mask & selectors.EVENT_READ:
                    self._read(worker)
                if worker.stage == "answer" and worker.out:
                    self._flush(worker)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            print(f"simulated worker failed: {exc}", file=sys.stderr)
            self._end(worker)

    def _connected(self, worker: Worker) -> None:
        error = worker.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))
        worker.out += self.hello
        if self.ctx is None:
            self._established(worker)
            return
        self.sel.unregister(worker.sock)  # wrapping detaches the plain socket object
        worker.sock = self.ctx.wrap_socket(worker.sock, do_handshake_on_connect=False)
        worker.stage = "handshake"
        self.sel.register(worker.sock, selectors.EVENT_READ, worker)
        self._handshake(worker)

    def _handshake(self, worker: Worker) -> None:
        assert isinstance(worker.sock, ssl.SSLSocket)
        try:
            worker.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.sel.modify(worker.sock, selectors.EVENT_READ, worker)
            return
        except ssl.SSLWantWriteError:
            self.sel.modify(worker.sock, selectors.EVENT_WRITE, worker)
            return
        self._established(worker)

    def _established(self, worker: Worker) -> None:
        self.connecting -= 1
        worker.stage = "answer"
        self.sel.modify(worker.sock, selectors.EVENT_READ, worker)
        self._flush(worker)

    def _read(self, worker: Worker) -> None:
        try:
            data = worker.sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError):
            return  # e.g. a record carrying only a TLS 1.3 session ticket
        if not data:
            raise OSError("the coordinator closed the connection before quit:")
        decoder = worker.decoder
        decoder.receive_data(data)
        while (frame := decoder.next_frame()) is not NEED_DATA:
            assert isinstance(frame, bytes)
            command = frame.decode()
            if command == "quit:":
                self.finished += 1
                self._end(worker)
                return
            reply = answer(command)
            if reply is not None:
                worker.out += encode_text(reply)

    def _flush(self, worker: Worker) -> None:
        try:
            sent = worker.sock.send(worker.out)
        except (BlockingIOError, ssl.SSLWantWriteError):
            sent = 0
        del worker.out[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if worker.out else 0)
        self.sel.modify(worker.sock, events, worker)

    def _end(self, worker: Worker) -> None:
        if worker.stage == "done":
            return
        if worker.stage != "answer":
            self.connecting -= 1
        worker.stage = "done"
        self.open -= 1
        self.sel.unregister(worker.sock)
        worker.sock.close()


def main() -> int:
    host, port, token, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    ctx = None
    if len(sys.argv) > 5:
        keydir = sys.argv[5]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(os.path.join(keydir, "ca_cert.pem"))
        ctx.load_cert_chain(os.path.join(keydir, "worker_cert.pem"),
                            os.path.join(keydir, "worker_key.pem"))
    ok = Simulator((host, port), token, n, ctx).run()
    print(f"{ok} of {n} simulated workers finished", file=sys.stderr)
    return 0 if ok == n else 1


if __name__ == "__main__":
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sys.exit(main())
