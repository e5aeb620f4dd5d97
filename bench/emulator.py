"""Emulator start latency, cold and warm, idle environment memory, and CPU per invocation.

Theory of operation
-------------------
The emulator runs in its own process (``python -m emulator``), as under ``mu emulator``, so
that the load generator does not share its interpreter. The handler imports boto3 (like a mu
worker) and, when it starts, sends its index and ``time.time()`` in one UDP datagram to the
load generator (a sandboxed handler cannot write the generator's files).

The load generator signs every Invoke request (SigV4, the way mu's launcher does) before the
clock starts, then writes them over 16 keep-alive HTTP/1.1 connections, pipelined, and notes
the wall-clock time just before each request's bytes go out. A request's latency is its
handler's start time minus that send time. For each size N: one warm-up invocation (the
zygote), then N concurrent Event invocations, each in a new execution environment (*cold*:
fork, Init under awslambdaric, the first invocation), then, once all have ended, N more,
which run in those environments (*warm*). Between the two waves it reads the proportional
set size (Pss) of each idle environment, and over each wave the CPU time of the emulator
process and of the environments, per invocation. One JSON line per run, then a summary.

With ``--spares N`` the emulator makes N spare environments after the warm-up invocation
(the ``mu emulator --spares`` option): the warm-up's own environment is killed and the cold
wave takes the spares (their Init was done before the clock started; its CPU is reported
apart, per environment), then the bench waits until the spares have been made again before
the warm wave.

With ``--waves W``, W warm waves follow one another (0.3 s apart) on the same environments:
the warm p50 reported is the median of their W p50s (each wave's own is listed), the CPU per
invocation is over all W waves, and the p99 is the last wave's.

Usage: python bench/emulator.py [--n 1,100] [--modes fork,spawn] [--spawn-max N]
                                [--spares 0,100] [--waves W]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
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

from emulator.runner import _children as children  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 16
CREDS = ReadOnlyCredentials("testing", "testing", None)

HANDLER = b'''
import socket, time
import boto3  # what a mu worker imports; the zygote has it loaded already

OUT = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

def handler(event, context):
    started = time.time()
    OUT.sendto(("%s %r" % (event["i"], started)).encode(), ("127.0.0.1", event["port"]))
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

    def __init__(self, state_dir: Path, fork: bool, spares: int = 0) -> None:
        cmd = [sys.executable, "-m", "emulator", "--state-dir", str(state_dir),
               "--spares", str(spares)]
        if not fork:
            cmd.append("--no-fork-server")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()  # "Lambda API: http://127.0.0.1:PORT"
        if not first.startswith("Lambda API:"):
            self.stop()
            raise RuntimeError(f"the emulator did not start: {first!r}")
        self.url = first.split()[-1]

    def environments(self) -> list[int]:
        """The environments' processes: descendants running the environment module that
        have no child (a zygote, and bubblewrap, have one)."""
        found, todo = [], list(children(self.proc.pid))
        while todo:
            pid = todo.pop()
            kids = children(pid)
            todo.extend(kids)
            if not kids and b"emulator.environment" in cmdline(pid):
                found.append(pid)
        return found

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def settle(emulator: Emulator, at_least: int) -> list[int]:
    """Wait (at most a minute) until at least ``at_least`` environments run and none has
    used the CPU for a quarter of a second (the spares have been made and are parked)."""
    deadline = time.monotonic() + 60
    last: dict[int, float] = {}
    while time.monotonic() < deadline:
        now = {p: run_seconds(p) for p in emulator.environments()}
        if len(now) >= at_least and now == last:
            break
        last = now
        time.sleep(0.25)
    return sorted(last)


def started_at(pid: int) -> int:
    """When ``pid`` started, in clock ticks since boot."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """Time the threads of ``pid`` running now have run on a CPU, in seconds, to the
    nanosecond (their ``schedstat``; ``/proc/PID/stat`` counts in 10 ms ticks, 0.1 ms per
    invocation of a wave of 100). The emulator's threads live as long as it does."""
    total = 0.0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            total += run_seconds(int(task), f"/proc/{pid}/task/{task}/schedstat")
    return total


def run_seconds(pid: int, path: str = "") -> float:
    """Time ``pid`` (a single-threaded process) has run on a CPU, in seconds, to the
    nanosecond (``/proc/PID/schedstat``, or ``path``; ``stat`` counts in 10 ms ticks)."""
    try:
        with open(path or f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def wave(emulator: Emulator, requests: list[bytes], inbox: socket.socket, n: int
         ) -> tuple[list[float], float, int]:
    """Send ``requests`` at once; (latencies, seconds until all started, accepted)."""
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
    starts: dict[int, float] = {}
    inbox.settimeout(120)
    while len(starts) < n:
        try:
            data = inbox.recv(256)
        except TimeoutError:
            break
        index, _, started = data.decode().partition(" ")
        starts[int(index)] = float(started)
    for t in threads:
        t.join()
    for s in socks:
        s.close()
    latencies = [starts[i] - sent[i] for i in starts]
    return latencies, max(starts.values(), default=0.0) - min(sent), statuses.count(202)


def measure(n: int, fork: bool, tmp: Path, spares: int = 0, waves: int = 1) -> dict[str, Any]:
    tag = f"{n}-{'fork' if fork else 'spawn'}-{spares}"
    emulator = Emulator(tmp / f"state-{tag}", fork, spares)
    inbox = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inbox.bind(("127.0.0.1", 0))
    inbox.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    port = inbox.getsockname()[1]
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
        # Warm up: the zygote (a one-time cost per function) and one environment.
        client.invoke(FunctionName="bench", Payload=json.dumps({"port": port, "i": -1}))
        inbox.recv(256)
        row: dict[str, Any] = {"mode": "fork-server" if fork else "spawn", "concurrent": n,
                               "spares": spares}
        for phase in ("cold", "warm"):
            if phase == "cold" and spares:
                # The warm-up's environment (the first made) would serve one warm: end it;
                # the spares the warm-up made stay, for the cold wave.
                envs = settle(emulator, spares + 1)
                spare_cpu = sum(run_seconds(p) for p in envs) / max(1, len(envs))
                row["spare_init_cpu_ms_per_environment"] = round(spare_cpu * 1000, 2)
                os.kill(min(envs, key=started_at), signal.SIGKILL)
                settle(emulator, spares)
            elif phase == "cold":  # the warm-up's environment would serve one warm: end it
                for pid in emulator.environments():
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 30
                while emulator.environments() and time.monotonic() < deadline:
                    time.sleep(0.05)
            elif spares:  # the spares made again after the cold wave took them
                settle(emulator, n + spares)
            count = waves if phase == "warm" else 1
            requests = [signed_event(emulator.url, "bench",
                                     json.dumps({"port": port, "i": i}).encode())
                        for i in range(n)]
            envs_before = {p: run_seconds(p) for p in emulator.environments()}
            cpu_before = cpu_seconds(emulator.proc.pid)
            p50s: list[float] = []
            started = accepted = n
            for k in range(count):
                if k:
                    time.sleep(0.3)  # every environment has answered and parked again
                latencies, all_started, took = wave(emulator, requests, inbox, n)
                p50s.append(statistics.median(latencies))
                started, accepted = min(started, len(latencies)), min(accepted, took)
            deadline = time.monotonic() + 60
            while len(emulator.environments()) < min(n, len(latencies)) and (
                    time.monotonic() < deadline):
                time.sleep(0.05)
            time.sleep(0.5)  # the last ones answer and park: their CPU counts
            envs = emulator.environments()
            # With spares, the cold wave's environments are those that were there before it;
            # the spares made again meanwhile are not its cost (their Init is reported as
            # spare_init_cpu_ms_per_environment).
            ran = [p for p in envs if p in envs_before] if spares and phase == "cold" else envs
            env_cpu = sum(run_seconds(p) - envs_before.get(p, 0.0) for p in ran)
            row[phase] = {
                "started": started, "accepted": accepted,  # the fewest of any wave
                "p50_ms": round(statistics.median(p50s) * 1000, 1),
                "p99_ms": round(percentile(latencies, 99) * 1000, 1),
                "all_started_s": round(all_started, 2),
                "emulator_cpu_ms_per_invocation": round(
                    (cpu_seconds(emulator.proc.pid) - cpu_before) / (n * count) * 1000, 3),
                "environment_cpu_ms_per_invocation": round(env_cpu / (n * count) * 1000, 3),
            }
            if count > 1:
                row[phase]["p50_ms_per_wave"] = [round(p * 1000, 1) for p in p50s]
            if phase == "cold":
                sizes = [pss_kib(p) for p in envs]
                row["environments"] = len(envs)
                row["idle_pss_mib_median"] = round(statistics.median(sizes) / 1024, 2) if (
                    sizes) else None
        row["load_average_1min"] = round(os.getloadavg()[0], 1)
        client.close()
        return row
    finally:
        inbox.close()
        emulator.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", default="1,100", help="concurrent invocations per run")
    parser.add_argument("--modes", default="fork,spawn", help="fork and/or spawn")
    parser.add_argument("--spawn-max", type=int, default=100,
                        help="largest run measured with plain spawn")
    parser.add_argument("--spares", default="0",
                        help="the emulator's --spares, one run per value (e.g. 0,100)")
    parser.add_argument("--waves", type=int, default=1,
                        help="warm waves in a row (p50: their p50s' median; p99: the last's)")
    args = parser.parse_args()
    sizes = [int(x) for x in args.n.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            for n in sizes:
                for spares in (int(x) for x in args.spares.split(",")):
                    if mode == "spawn" and n > args.spawn_max:
                        continue
                    row = measure(n, mode == "fork", Path(tmp), spares, args.waves)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print("emulator: " + "; ".join(
        f"{r['mode']} x{r['concurrent']} spares {r['spares']}: cold p50 {r['cold']['p50_ms']} ms, warm p50 "
        f"{r['warm']['p50_ms']} ms, idle Pss {r['idle_pss_mib_median']} MiB "
        f"(load {r['load_average_1min']})" for r in rows))
    return 0 if all(r[p]["started"] == r["concurrent"] == r[p]["accepted"]
                    for r in rows for p in ("cold", "warm")) else 1


if __name__ == "__main__":
    sys.exit(main())
