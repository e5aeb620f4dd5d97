"""Emulator start latency: time from sending an Event invoke to the handler starting.

Theory of operation
-------------------
The emulator runs in its own process (``python -m emulator``), as under ``mu emulator``, so
that the load generator does not share its interpreter. The handler imports boto3 (like a mu
worker) and, when it starts, appends its index and ``time.time()`` to one shared file.

The load generator signs every Invoke request (SigV4, the way mu's launcher does) before the
clock starts, then writes them over 16 keep-alive HTTP/1.1 connections, pipelined, and notes
the wall-clock time just before each request's bytes go out. A request's latency is its
handler's start time minus that send time. For 1, 100 and 500 concurrent Event invocations,
with the fork server and with plain spawn, it prints one JSON line per run (p50, p99, and
the time from the first send until every handler had started), then a one-line summary.

After the warm-up invocation it waits (up to 30 s) until the fork server has forked its
spares, so that every run starts from the same state.

Usage: python bench/emulator.py [--n 1,100,500] [--modes fork,spawn] [--spawn-max N]
                                [--spares N]
Plain spawn pays a full boto3 import per invocation (~0.4 s of CPU), so it is measured up to
100 concurrent by default; pass --spawn-max to go further.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# This script is named like the package it measures: drop its own folder from the import
# path so that ``import emulator`` (in the child) and boto3 resolve normally.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]

import boto3  # noqa: E402
from botocore.auth import SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.credentials import ReadOnlyCredentials  # noqa: E402

from emulator.runner import SPARES  # noqa: E402
from emulator.runner import _children as children  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 16
CREDS = ReadOnlyCredentials("testing", "testing", None)

HANDLER = b'''
import os, time
import boto3  # what a mu worker imports; the fork server has it loaded already

def handler(event, context):
    started = time.time()
    # One short O_APPEND write to a file that exists: no file created or renamed per
    # invocation, so the recording does not queue later starts on a directory's lock.
    fd = os.open(event["log"], os.O_WRONLY | os.O_APPEND)
    os.write(fd, ("%s %r\\n" % (event["i"], started)).encode())
    os.close(fd)
    return {}
'''


def bundle() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("handler.py", HANDLER)
    return buf.getvalue()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def signed_event(url: str, name: str, payload: bytes) -> bytes:
    """The raw bytes of one signed Event Invoke request."""
    path = f"/2015-03-31/functions/{name}/invocations"
    request = AWSRequest(method="POST", url=url + path, data=payload,
                         headers={"X-Amz-Invocation-Type": "Event",
                                  "Content-Type": "application/json"})
    SigV4Auth(CREDS, "lambda", "us-east-1").add_auth(request)
    lines = [f"POST {path} HTTP/1.1", f"Host: {urlsplit(url).netloc}"]
    lines += [f"{k}: {v}" for k, v in request.headers.items() if k.lower() != "host"]
    lines += [f"Content-Length: {len(payload)}", "", ""]
    return "\r\n".join(lines).encode("latin-1") + payload


def read_responses(sock: socket.socket, count: int) -> list[int]:
    """Read ``count`` HTTP responses (bodies skipped); their status codes."""
    buf, statuses = b"", list[int]()
    while len(statuses) < count:
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed after {len(statuses)} of {count} responses")
            buf += data
        head, _, buf = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-length":
                length = int(value)
        while len(buf) < length:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed inside a response body")
            buf += data
        buf = buf[length:]
        statuses.append(int(lines[0].split()[1]))
    return statuses


class Emulator:
    """``python -m emulator`` in a child process; ``url`` once it serves."""

    def __init__(self, state_dir: Path, fork: bool, spares: int | None = None) -> None:
        cmd = [sys.executable, "-m", "emulator", "--state-dir", str(state_dir)]
        if not fork:
            cmd.append("--no-fork-server")
        if spares is not None:
            cmd += ["--spares", str(spares)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()  # "Lambda API: http://127.0.0.1:PORT"
        if not first.startswith("Lambda API:"):
            self.stop()
            raise RuntimeError(f"the emulator did not start: {first!r}")
        self.url = first.split()[-1]

    def wait_spares(self, count: int, timeout: float = 30.0) -> int:
        """Wait until the fork server has ``count`` idle children (or ``timeout``); how many."""
        deadline, found = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            helpers = [p for p in children(self.proc.pid) if b"serve" in cmdline(p)]
            found = sum(len(children(p)) for p in helpers)
            if found >= count:
                break
            time.sleep(0.05)
        time.sleep(0.2)  # the last spares finish their idle-time preparation
        return found

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def starts_in(log: Path) -> dict[str, float]:
    """The start times recorded so far: invocation index (or "warm") -> time.time()."""
    found = {}
    for line in log.read_text().splitlines():
        index, _, started = line.partition(" ")
        found[index] = float(started)
    return found


def measure(n: int, fork: bool, tmp: Path, spares: int | None = None) -> dict[str, Any]:
    tag = f"{n}-{'fork' if fork else 'spawn'}"
    emulator = Emulator(tmp / f"state-{tag}", fork, spares)
    try:
        client = boto3.client(
            "lambda", endpoint_url=emulator.url, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
            config=Config(retries={"max_attempts": 1}, read_timeout=300),
        )
        client.create_function(FunctionName="bench", Runtime="python3.12",
                               Role="arn:aws:iam::123456789012:role/r",
                               Handler="handler.handler", Code={"ZipFile": bundle()},
                               Timeout=300, MemorySize=1024)
        log = tmp / f"starts-{tag}"
        log.touch()
        # Warm up: the first invocation starts the fork server (a one-time cost per function).
        client.invoke(FunctionName="bench", Payload=json.dumps({"log": str(log), "i": "warm"}))
        client.close()
        ready = emulator.wait_spares(SPARES if spares is None else spares) if fork else 0
        requests = [signed_event(emulator.url, "bench",
                                 json.dumps({"log": str(log), "i": str(i)}).encode())
                    for i in range(n)]
        host, port = urlsplit(emulator.url).hostname, urlsplit(emulator.url).port
        socks = [socket.create_connection((host or "127.0.0.1", port or 80))
                 for _ in range(min(CONNECTIONS, n))]
        sent: list[float] = [0.0] * n
        statuses: list[int] = []
        lock = threading.Lock()
        go = threading.Barrier(len(socks))

        def fire(k: int, sock: socket.socket) -> None:
            mine = range(k, n, len(socks))
            go.wait()
            for i in mine:
                sent[i] = time.time()
                sock.sendall(requests[i])
            got = read_responses(sock, len(mine))
            with lock:
                statuses.extend(got)

        threads = [threading.Thread(target=fire, args=(k, s)) for k, s in enumerate(socks)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for s in socks:
            s.close()
        first = min(sent)
        deadline = time.monotonic() + 600
        while len(starts_in(log)) < n + 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # the handlers are separate processes: watch their records
        starts = {int(i): t for i, t in starts_in(log).items() if i != "warm"}
        latencies = [starts[i] - sent[i] for i in starts]
        return {
            "mode": "fork-server" if fork else "spawn", "concurrent": n,
            "accepted": statuses.count(202), "started": len(starts),
            "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p99_ms": round(percentile(latencies, 99) * 1000, 1),
            "all_started_s": round(max(starts.values()) - first, 2), "spares": ready,
            "load_average_1min": round(os.getloadavg()[0], 1),
        }
    finally:
        emulator.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", default="1,100,500", help="concurrent invocations per run")
    parser.add_argument("--modes", default="fork,spawn", help="fork and/or spawn")
    parser.add_argument("--spawn-max", type=int, default=100,
                        help="largest run measured with plain spawn")
    parser.add_argument("--spares", type=int, default=None,
                        help=f"the emulator's --spares (default: its own, {SPARES})")
    args = parser.parse_args()
    sizes = [int(x) for x in args.n.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            for n in sizes:
                if mode == "spawn" and n > args.spawn_max:
                    continue
                row = measure(n, mode == "fork", Path(tmp), args.spares)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("emulator: " + "; ".join(
        f"{r['mode']} x{r['concurrent']}: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
        f"all started in {r['all_started_s']} s (load {r['load_average_1min']})" for r in rows))
    return 0 if all(r["started"] == r["concurrent"] == r["accepted"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
