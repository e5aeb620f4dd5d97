"""What hostile clients can make the emulator hold: connections, bodies, processes, zips.

Theory of operation
-------------------
Each scenario starts ``python -m emulator`` in a process of its own (state and TMPDIR in a
private temp dir), plays the client, measures the emulator from outside (``/proc``: its
resident size, its descriptors, its descendants' count and proportional set size) and
stops it. It prints one JSON line per scenario, then a one-line summary:

* ``connections``: N connections that never send a byte are opened and held (by holder
  processes of 10,000 each), then a fresh connection asks ``ListFunctions``: answered or
  not (within 30 s), how long it took, and the descriptors the emulator holds;
* ``bodies``: 8 connections each declare a 64 MiB CreateFunction body and send 60 MiB of it,
  then hold; the emulator's resident size before and after, and how many were refused;
* ``processes``: 8 functions are created and each invoked once; the processes the emulator
  keeps (its descendants, once quiet) and their proportional set size in all;
* ``zip``: a 1 GiB file of zeros zipped (about 1 MiB) is uploaded; whether it is refused,
  and what is left in the state dir.

Usage: python bench/emulator_bounds.py [--connections N] [--only NAME,...]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# This script's folder holds bench/emulator.py: keep it off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
         "region_name": "us-east-1"}
HANDLER = b"def handler(event, context):\n    return event\n"
LISTING = b"GET /2015-03-31/functions/ HTTP/1.1\r\nHost: x\r\n\r\n"


@contextlib.contextmanager
def emulator(folder: Path) -> Iterator[tuple[subprocess.Popen[str], tuple[str, int]]]:
    """``python -m emulator`` on a free port, its TMPDIR and state under ``folder``."""
    tmp = folder / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulator", "--state-dir", str(folder / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=dict(os.environ, TMPDIR=str(tmp)),
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        host, port = url.removeprefix("http://").split(":")
        yield proc, (host, int(port))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError, ValueError):
                    with open(f"/proc/{p}/task/{task}/children") as f:
                        kids = [int(c) for c in f.read().split()]
                    found.extend(kids)
                    todo.extend(kids)
    return found


def ask(address: tuple[str, int], timeout: float = 30) -> tuple[bool, float]:
    """ListFunctions on a fresh connection: (answered 200, seconds)."""
    start = time.perf_counter()
    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.sendall(LISTING)
            ok = sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
    except OSError:
        ok = False
    return ok, time.perf_counter() - start


def hold(port: int, count: int) -> None:
    """In a holder process: open ``count`` connections, say how many, hold them until
    standard input closes."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held = []
    for _ in range(min(count, hard - 50)):
        try:
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        except OSError:
            break
    print(len(held), flush=True)
    sys.stdin.read()


def connections(folder: Path, count: int) -> dict[str, Any]:
    """``count`` idle connections, held by processes of 10,000 each (a process's own
    descriptor limit would stop one short of the emulator's)."""
    with emulator(folder) as (proc, address):
        holders = []
        opened_in = time.perf_counter()
        try:
            for start in range(0, count, 10_000):
                holders.append(subprocess.Popen(
                    [sys.executable, __file__, "--hold", str(address[1]),
                     "--connections", str(min(10_000, count - start))],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            held = 0
            for holder in holders:
                assert holder.stdout is not None
                held += int(holder.stdout.readline() or 0)
            opened_in = time.perf_counter() - opened_in
            answered, took = ask(address)
            fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
            rss = rss_mb(proc.pid)
        finally:
            for holder in holders:
                assert holder.stdin is not None
                holder.stdin.close()
                holder.wait(timeout=60)
                if holder.stdout is not None:
                    holder.stdout.close()
    return {"scenario": "connections", "held": held, "open_s": round(opened_in, 2),
            "answered": answered, "answer_s": round(took, 3), "emulator_fds": fds,
            "emulator_rss_mb": round(rss, 1)}


def bodies(folder: Path) -> dict[str, Any]:
    declared, sent = 64 << 20, 60 << 20
    with emulator(folder) as (proc, address):
        before = rss_mb(proc.pid)
        held: list[socket.socket] = []
        refused = 0
        try:
            for _ in range(8):
                sock = socket.create_connection(address, timeout=60)
                held.append(sock)
                sock.sendall(b"POST /2015-03-31/functions HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: %d\r\n\r\n" % declared)
                chunk = b" " * (1 << 20)
                try:
                    for _ in range(sent // len(chunk)):
                        sock.sendall(chunk)
                except OSError:
                    pass
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    if sock.recv(65536).startswith(b"HTTP/1.1 429"):
                        refused += 1
                sock.setblocking(True)
            time.sleep(1)  # a measurement, not synchronisation: let the reads land
            after = rss_mb(proc.pid)
            answered, _ = ask(address)
        finally:
            for sock in held:
                sock.close()
    return {"scenario": "bodies", "connections": 8, "declared_mb": 64, "sent_mb": 60,
            "refused": refused, "rss_before_mb": round(before, 1),
            "rss_after_mb": round(after, 1), "still_answers": answered}


def processes(folder: Path) -> dict[str, Any]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("handler.py", HANDLER)
    with emulator(folder) as (proc, address):
        lam = boto3.client("lambda", endpoint_url=f"http://{address[0]}:{address[1]}",
                           config=Config(retries={"max_attempts": 1}, read_timeout=300),
                           **CREDS)
        for i in range(8):
            lam.create_function(FunctionName=f"f{i}", Runtime="python3.12", Role="r",
                                Handler="handler.handler", MemorySize=512,
                                Code={"ZipFile": buf.getvalue()})
            lam.invoke(FunctionName=f"f{i}", Payload=b"{}")
        # Spares are forked after a pause: wait until the count stops growing (bounded).
        counts: list[int] = []
        for _ in range(60):
            counts.append(len(descendants(proc.pid)))
            if len(counts) > 5 and len(set(counts[-5:])) == 1:
                break
            time.sleep(0.5)
        kids = descendants(proc.pid)
        pss = sum(pss_mb(p) for p in kids) + pss_mb(proc.pid)
    return {"scenario": "processes", "functions": 8, "processes_kept": len(kids),
            "pss_mb": round(pss, 1)}


def zip_bomb(folder: Path) -> dict[str, Any]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z, z.open("zeros", "w") as f:
        chunk = bytes(1 << 20)
        for _ in range(1024):
            f.write(chunk)
    with emulator(folder) as (_, address):
        url = f"http://{address[0]}:{address[1]}"
        lam = boto3.client("lambda", endpoint_url=url, config=Config(
            retries={"max_attempts": 1}, read_timeout=300), **CREDS)
        start = time.perf_counter()
        try:
            lam.create_function(FunctionName="bomb", Runtime="python3.12", Role="r",
                                Handler="handler.handler", Code={"ZipFile": buf.getvalue()})
            outcome = "created"
        except lam.exceptions.ClientError as exc:
            outcome = exc.response["Error"]["Code"]
        took = time.perf_counter() - start
        left = sum(f.stat().st_size for f in (folder / "state").rglob("*") if f.is_file())
    return {"scenario": "zip", "zip_kb": len(buf.getvalue()) // 1024, "outcome": outcome,
            "seconds": round(took, 2), "left_in_state_mb": round(left / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=20_000)
    parser.add_argument("--only", default="connections,bodies,processes,zip")
    parser.add_argument("--hold", type=int, help=argparse.SUPPRESS)  # a holder process
    args = parser.parse_args()
    if args.hold:
        hold(args.hold, args.connections)
        return
    results = []
    for name in args.only.split(","):
        with tempfile.TemporaryDirectory(prefix="mu-bench-bounds-") as tmp:
            if name == "connections":
                result = connections(Path(tmp), args.connections)
            elif name == "bodies":
                result = bodies(Path(tmp))
            elif name == "processes":
                result = processes(Path(tmp))
            else:
                result = zip_bomb(Path(tmp))
        print(json.dumps(result), flush=True)
        results.append(result)
    print("summary: " + "; ".join(
        ", ".join(f"{k}={v}" for k, v in r.items()) for r in results))


if __name__ == "__main__":
    main()
