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

The clients are asyncio TLS streams in ``--procs`` processes (the pairs split between
them); on a small machine they compete with the relay for the cores, so the figure is a
lower bound of what the relay alone would do.

Usage: python bench/relay.py [--pairs 1000] [--size 6MB] [--frame 1MiB] [--procs 1]
       [--handshakes 64] [--client-buffer 256KiB]
Prints one JSON object, then a summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mu.protocol import NEED_DATA, FrameDecoder, encode_frame, encode_text
from mu.relay_core import hello_text
from mu.tls import generate_keys

TOKEN = "bench-relay"
_PIECE = 64 * 1024  # bytes a client hands its transport at a time
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


class Client:
    """One side of a pair: sends ``total`` bytes in frames, receives as many."""

    def __init__(self, me: int, partner: int, total: int, frame: int, block: bytes) -> None:
        self.me, self.partner = me, partner
        self.total, self.frame, self.block = total, frame, block
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self, address: tuple[str, int], ctx: ssl.SSLContext,
                      gate: asyncio.Semaphore, buffer: int | None) -> None:
        async with gate:
            sock = socket.socket()
            if buffer:  # a worker's buffers are on its own machine, not the relay's
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, address)
            self.reader, self.writer = await asyncio.open_connection(
                sock=sock, ssl=ctx, server_hostname="mu")
            self.writer.write(encode_text(hello_text(TOKEN, self.me, self.partner)))
            await self.writer.drain()

    async def send(self) -> None:
        assert self.writer is not None
        left = self.total
        whole = memoryview(encode_frame(self.block[:self.frame]))
        while left:
            n = min(left, self.frame)
            frame = whole if n == self.frame else memoryview(encode_frame(self.block[:n]))
            # In pieces: asyncio's transport buffer is a bytearray consumed from the front,
            # so a whole 1 MiB frame written at once costs a copy of the rest per send().
            for i in range(0, len(frame), _PIECE):
                self.writer.write(frame[i:i + _PIECE])
                await self.writer.drain()
            left -= n

    async def receive(self) -> None:
        assert self.reader is not None
        decoder = FrameDecoder(max_frame=self.frame)
        got = 0
        while got < self.total:
            data = await self.reader.read(1 << 20)
            if not data:
                raise RuntimeError(f"client {self.me}: the relay closed after {got} bytes")
            decoder.receive_data(data)
            while (payload := decoder.next_frame()) is not NEED_DATA:
                assert isinstance(payload, bytes)
                if payload != self.block[:len(payload)]:
                    text = payload[:80].decode("utf-8", "replace")
                    raise RuntimeError(f"client {self.me}: frame {text!r} is not the pattern")
                got += len(payload)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await self.writer.wait_closed()


async def run_pairs(first: int, pairs: int, address: tuple[str, int], keydir: str,
                    total: int, frame: int, handshakes: int, buffer: int | None, ready: Any,
                    start: Any) -> float:
    """Connect this process's pairs, wait for the start signal, exchange; the seconds."""
    ctx = client_context(keydir)
    block = os.urandom(frame)
    clients = []
    for i in range(first, first + pairs):
        clients += [Client(2 * i, 2 * i + 1, total, frame, block),
                    Client(2 * i + 1, 2 * i, total, frame, block)]
    gate = asyncio.Semaphore(handshakes)
    await asyncio.gather(*(c.connect(address, ctx, gate, buffer) for c in clients))
    ready.set()
    await asyncio.get_running_loop().run_in_executor(None, start.wait)
    t0 = time.perf_counter()
    await asyncio.gather(*(c.send() for c in clients), *(c.receive() for c in clients))
    elapsed = time.perf_counter() - t0
    await asyncio.gather(*(c.close() for c in clients))
    return elapsed


def client_process(first: int, pairs: int, address: tuple[str, int], keydir: str, total: int,
                   frame: int, handshakes: int, buffer: int | None, ready: Any, start: Any,
                   results: Any) -> None:
    try:
        seconds = asyncio.run(run_pairs(first, pairs, address, keydir, total, frame,
                                        handshakes, buffer, ready, start))
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


def bench(pairs: int, total: int, frame: int, procs: int, handshakes: int,
          buffer: int | None) -> dict[str, Any]:
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
                    first, n, address, keydir, total, frame, handshakes, buffer, ready,
                    start, results))
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
            relay.send_signal(signal.SIGINT)
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
    parser.add_argument("--handshakes", type=int, default=64,
                        help="TLS connects in progress at once per client process (64)")
    parser.add_argument("--client-buffer", type=size, default=size("256KiB"),
                        help="the clients' kernel socket buffers (256KiB; 0: autotuned). On "
                        "AWS each worker's buffers are on its own machine; here they would "
                        "push the host's TCP memory into pressure")
    args = parser.parse_args()
    row = bench(args.pairs, args.size, args.frame, args.procs, args.handshakes,
                args.client_buffer or None)
    print(json.dumps(row), flush=True)
    print(f"relay: {row['pairs']} pairs x {row['size_each_way'] / 1e6:g} MB each way: "
          f"{row['relayed_mb_s']} MB/s relayed ({row['transfer_s']} s), relay CPU "
          f"{row['relay_cpu_s']} s ({row['relay_mb_per_cpu_s']} MB per CPU-second), peak "
          f"RSS {row['relay_peak_rss_mb']} MB, clients' CPU {row['clients_cpu_s']} s, setup "
          f"{row['setup_s']} s")


if __name__ == "__main__":
    main()
