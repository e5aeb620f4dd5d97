"""Relay throughput: pairs of TLS clients exchanging bytes through ``mu relay``.

The relay runs as it does for a user, ``mu relay -c -s -k --token T --port 0``, in its own
process, so that its CPU time and peak RSS (``/proc/PID``) are its own. Each pair is two
clients with the workers' certificate (mutual TLS on both legs) that say
``HELLO_STATE:T:<2i>:<2i+1>`` and ``HELLO_STATE:T:<2i+1>:<2i>``; once every client has said
hello, each sends ``--size`` bytes to its partner in frames of ``--frame`` bytes (1 MiB,
the worker's file frames) while reading what its partner sends, and checks every frame.
``relayed_mb_s`` is the payload both ways of every pair (2 x pairs x size) over the wall
time from the start signal until the last byte arrived; ``relay_cpu_s`` is the relay's CPU
in that time, ``relay_peak_rss_mb`` its peak RSS (VmHWM) over the whole run.

The clients are non-blocking TLS sockets (the stdlib's ``ssl``) under one ``selectors`` loop
per process, in ``--procs`` processes (the pairs split between them): each reads several
records per readiness and writes corked 256 KiB pieces, and checks each piece it reads in
place against the bytes its partner sent (a ``memcmp``), so that every byte is checked, in
order, at little cost. On a small machine they compete with the relay for the cores, so the
figure is a lower bound of what the relay alone would do.

Usage: python bench/relay.py [--pairs 1000] [--size 6MB] [--frame 1MiB] [--procs 1]
       [--client-buffer 64KiB]
Prints one JSON object, then a summary line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import resource
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mu.protocol import encode_frame, encode_text
from mu.relay_core import hello_text
from mu.tls import generate_keys

TOKEN = "bench-relay"
_PIECE = 256 * 1024  # bytes a client hands one TLS write
_READ_SIZE = 65536  # room for one TLS read (a record: 16 KiB at most)
_READS = 16  # reads per readiness of a client at most
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}


def size(text: str) -> int:
    """``6MB``, ``1MiB``, ``65536``: bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if not match or match[2].upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 6MB, 1MiB, 4096)")
    return int(match[1]) * _UNITS[match[2].upper()]


def client_context(keydir: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(os.path.join(keydir, "ca_cert.pem"))
    ctx.load_cert_chain(os.path.join(keydir, "worker_cert.pem"),
                        os.path.join(keydir, "worker_key.pem"))
    return ctx


class Stream:
    """The bytes one client sends (and its partner expects): ``total`` payload bytes in
    frames of ``frame``, every full frame the same bytes and the last one shorter."""

    def __init__(self, total: int, frame: int, block: bytes) -> None:
        self.full = encode_frame(block[:frame])
        self.count, rest = divmod(total, frame)
        self.last = encode_frame(block[:rest]) if rest else b""

    def frame_bytes(self, k: int) -> bytes:
        """Frame ``k`` as it goes on the wire (b"": past the end)."""
        if k < self.count:
            return self.full
        return self.last if k == self.count else b""


class Client:
    """One side of a pair over a non-blocking TLS socket: sends its stream and checks, byte
    for byte and in order, that its partner's arrives (each piece read is compared in place
    against the frame it should be, a ``memcmp``)."""

    __slots__ = ("me", "recv_frame", "recv_k", "recv_off", "send_frame", "send_k",
                 "send_off", "send_piece", "sock", "stream")

    def __init__(self, me: int, sock: ssl.SSLSocket, stream: Stream) -> None:
        self.me, self.sock, self.stream = me, sock, stream
        self.send_k = self.recv_k = 0
        self.send_frame = memoryview(stream.frame_bytes(0))
        self.recv_frame = stream.frame_bytes(0)
        self.send_off = self.recv_off = 0
        # A TLS write that could not finish must be retried with the same bytes.
        self.send_piece: memoryview | None = None

    @property
    def sending(self) -> bool:
        return bool(self.send_frame)

    @property
    def receiving(self) -> bool:
        return bool(self.recv_frame)

    def send(self) -> None:
        """Write until the socket is full or the stream has all gone."""
        sock = self.sock
        # Corked: the 16 KiB records of a piece leave as one segment (as the relay does).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        try:
            self._send()
        finally:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)

    def _send(self) -> None:
        sock = self.sock
        while self.send_frame:
            piece = self.send_piece
            if piece is None:
                piece = self.send_frame[self.send_off:self.send_off + _PIECE]
            try:
                sock.send(piece)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                self.send_piece = piece
                return
            self.send_piece = None
            self.send_off += len(piece)
            if self.send_off == len(self.send_frame):
                self.send_k += 1
                self.send_off = 0
                self.send_frame = memoryview(self.stream.frame_bytes(self.send_k))

    def receive(self, view: memoryview) -> None:
        """Read what has arrived (into ``view``) and check it."""
        sock = self.sock
        for _ in range(_READS):
            try:
                n = sock.recv_into(view)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            if not n:
                raise RuntimeError(f"client {self.me}: the relay closed the connection")
            i = 0
            while i < n:
                frame = self.recv_frame
                if not frame:
                    raise RuntimeError(f"client {self.me}: more bytes than were sent")
                take = min(n - i, len(frame) - self.recv_off)
                if not frame.startswith(view[i:i + take], self.recv_off):  # a memcmp
                    raise RuntimeError(f"client {self.me}: frame {self.recv_k} differs "
                                       f"from what was sent at byte {self.recv_off}")
                i += take
                self.recv_off += take
                if self.recv_off == len(frame):
                    self.recv_k += 1
                    self.recv_off = 0
                    self.recv_frame = self.stream.frame_bytes(self.recv_k)


def connect(address: tuple[str, int], ctx: ssl.SSLContext, me: int, partner: int,
            buffer: int | None) -> ssl.SSLSocket:
    """A client's TLS connection to the relay, its hello sent; non-blocking."""
    sock = socket.socket()
    if buffer:  # before connecting, so that the window scale fits it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(30)
    sock.connect(address)
    tls = ctx.wrap_socket(sock, server_hostname="mu")
    tls.sendall(encode_text(hello_text(TOKEN, me, partner)))
    tls.setblocking(False)
    return tls


def run_pairs(first: int, pairs: int, address: tuple[str, int], keydir: str, total: int,
              frame: int, buffer: int | None, ready: Any, start: Any) -> float:
    """Connect this process's pairs, wait for the start signal, exchange; the seconds."""
    ctx = client_context(keydir)
    stream = Stream(total, frame, os.urandom(frame))
    clients = [Client(me, connect(address, ctx, me, me ^ 1, buffer), stream)
               for me in range(2 * first, 2 * (first + pairs))]
    selector = selectors.DefaultSelector()
    for client in clients:
        selector.register(client.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)
    view = memoryview(bytearray(_READ_SIZE))
    ready.set()
    start.wait()
    t0 = time.perf_counter()
    busy = len(clients)
    while busy:
        for key, mask in selector.select():
            client = key.data
            if mask & selectors.EVENT_READ:
                client.receive(view)
            if mask & selectors.EVENT_WRITE:
                client.send()
            events = ((selectors.EVENT_READ if client.receiving else 0)
                      | (selectors.EVENT_WRITE if client.sending else 0))
            if events != key.events:
                if events:
                    selector.modify(client.sock, events, client)
                else:
                    selector.unregister(client.sock)
                    busy -= 1
    elapsed = time.perf_counter() - t0
    for client in clients:
        client.sock.close()
    return elapsed


def client_process(first: int, pairs: int, address: tuple[str, int], keydir: str, total: int,
                   frame: int, buffer: int | None, ready: Any, start: Any,
                   results: Any) -> None:
    try:
        seconds = run_pairs(first, pairs, address, keydir, total, frame, buffer, ready, start)
        results.put(("ok", seconds))
    except Exception as exc:  # reported by the parent as the run's failure
        ready.set()
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB -> MB
    raise KeyError(key)


def bench(pairs: int, total: int, frame: int, procs: int, buffer: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as keydir:
        generate_keys(days=1).write(keydir)
        relay = subprocess.Popen(
            [sys.executable, "-m", "mu.cli", "relay", "-c", f"{keydir}/ca_cert.pem",
             "-s", f"{keydir}/server_cert.pem", "-k", f"{keydir}/server_key.pem",
             "--token", TOKEN, "--port", "0"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert relay.stdout is not None
            line = relay.stdout.readline()
            match = re.fullmatch(r"mu relay: listening on (.+):(\d+)\n", line)
            if not match:
                raise RuntimeError(f"mu relay did not start: {line!r}")
            address = (match[1], int(match[2]))
            ctx = mp.get_context("fork")
            start, results = ctx.Event(), ctx.Queue()
            readies, workers = [], []
            t_setup = time.perf_counter()
            children0 = sum(getattr(resource.getrusage(resource.RUSAGE_CHILDREN), f)
                            for f in ("ru_utime", "ru_stime"))
            share = [pairs // procs + (1 if k < pairs % procs else 0) for k in range(procs)]
            first = 0
            for n in share:
                ready = ctx.Event()
                worker = ctx.Process(target=client_process, args=(
                    first, n, address, keydir, total, frame, buffer, ready, start,
                    results))
                worker.start()
                readies.append(ready)
                workers.append(worker)
                first += n
            for ready in readies:
                ready.wait()
            setup = time.perf_counter() - t_setup
            cpu0 = proc_cpu(relay.pid)
            start.set()
            outcomes = [results.get() for _ in workers]
            cpu = proc_cpu(relay.pid) - cpu0
            peak_rss = proc_status(relay.pid, "VmHWM")
            for worker in workers:
                worker.join()
            clients_cpu = sum(getattr(resource.getrusage(resource.RUSAGE_CHILDREN), f)
                              for f in ("ru_utime", "ru_stime")) - children0
            errors = [text for kind, text in outcomes if kind == "error"]
            if errors:
                raise RuntimeError(errors[0])
            relay.send_signal(signal.SIGTERM)  # as a service manager stops it
            stats, _ = relay.communicate(timeout=60)
        finally:
            if relay.poll() is None:
                relay.kill()
                relay.wait()
    seconds = max(s for _, s in outcomes)
    relayed = 2 * pairs * total
    return {
        "pairs": pairs, "size_each_way": total, "frame": frame, "client_procs": procs,
        "client_buffer": buffer,
        "connections": 2 * pairs, "setup_s": round(setup, 3), "transfer_s": round(seconds, 3),
        "relayed_bytes": relayed, "relayed_mb_s": round(relayed / seconds / 1e6, 1),
        "relay_cpu_s": round(cpu, 2),
        "relay_mb_per_cpu_s": round(relayed / cpu / 1e6, 1) if cpu else None,
        "relay_peak_rss_mb": round(peak_rss, 1),
        "clients_cpu_s": round(clients_cpu, 2),
        "relay_stats": stats.strip().removeprefix("mu relay: "),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--size", type=size, default=size("6MB"),
                        help="bytes each client sends its partner (6MB)")
    parser.add_argument("--frame", type=size, default=size("1MiB"),
                        help="payload bytes per frame (1MiB)")
    parser.add_argument("--procs", type=int, default=1, help="client processes (1)")
    parser.add_argument("--client-buffer", type=size, default=size("64KiB"),
                        help="the clients' kernel socket buffers (64KiB; 0: autotuned). On "
                        "AWS each worker's buffers are on its own machine; here they share "
                        "the host's TCP memory with the relay's, and larger ones push it "
                        "into pressure (drops, retransmits)")
    args = parser.parse_args()
    row = bench(args.pairs, args.size, args.frame, args.procs,
                args.client_buffer or None)
    print(json.dumps(row), flush=True)
    print(f"relay: {row['pairs']} pairs x {row['size_each_way'] / 1e6:g} MB each way: "
          f"{row['relayed_mb_s']} MB/s relayed ({row['transfer_s']} s), relay CPU "
          f"{row['relay_cpu_s']} s ({row['relay_mb_per_cpu_s']} MB per CPU-second), peak "
          f"RSS {row['relay_peak_rss_mb']} MB, clients' CPU {row['clients_cpu_s']} s, setup "
          f"{row['setup_s']} s")


if __name__ == "__main__":
    main()
