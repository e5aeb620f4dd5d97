"""Emulator start latency: time from sending an Event invoke to the handler starting.

The handler imports boto3 (like a mu worker) and records ``time.time()`` when it starts, in
a file named by the event; the bench records when each invoke was sent. For 1, 100 and 500
concurrent Event invocations, with the fork server and with plain spawn, it prints p50, p99
and the time until all had started, as JSON lines, then a summary line.

Usage: python bench/emulator.py [--n 1,100,500] [--modes fork,spawn] [--quick]
Plain spawn pays a full boto3 import per invocation (~0.4 s of CPU), so it is measured up to
100 concurrent by default; pass --spawn-max to go further.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

# This script is named like the package it measures: drop its own folder from the import
# path so that ``import emulator`` finds the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

from emulator.server import ThreadedEmulatorServer  # noqa: E402

HANDLER = b'''
import time
START = None
import boto3  # what a mu worker imports; the fork server has it loaded already

def handler(event, context):
    started = time.time()
    with open(event["path"], "w") as f:
        f.write(repr(started))
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


def measure(n: int, fork: bool, tmp: Path) -> dict[str, Any]:
    server = ThreadedEmulatorServer(state_dir=tmp / f"state-{n}-{fork}", fork_server=fork)
    server.start()
    try:
        client = boto3.client(
            "lambda", endpoint_url=server.url, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
            config=Config(max_pool_connections=64, retries={"max_attempts": 1}),
        )
        client.create_function(FunctionName="bench", Runtime="python3.12",
                               Role="arn:aws:iam::123456789012:role/r",
                               Handler="handler.handler", Code={"ZipFile": bundle()},
                               Timeout=120, MemorySize=1024)
        out = tmp / f"out-{n}-{fork}"
        out.mkdir()
        # Warm up: the first invocation starts the fork server (a one-time cost per function).
        client.invoke(FunctionName="bench", Payload=json.dumps({"path": str(out / "warm")}))
        sent: dict[int, float] = {}
        lock = threading.Lock()

        def fire(indices: range) -> None:
            for i in indices:
                payload = json.dumps({"path": str(out / str(i))}).encode()
                t = time.time()
                client.invoke(FunctionName="bench", InvocationType="Event", Payload=payload)
                with lock:
                    sent[i] = t

        threads = [threading.Thread(target=fire, args=(range(k, n, 16),)) for k in range(16)]
        first = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        server.registry.wait_idle(600)
        starts = {int(p.name): float(p.read_text()) for p in out.iterdir() if p.name != "warm"}
        latencies = [starts[i] - sent[i] for i in starts]
        return {
            "mode": "fork-server" if fork else "spawn", "concurrent": n,
            "started": len(starts), "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p99_ms": round(percentile(latencies, 99) * 1000, 1),
            "all_started_s": round(max(starts.values()) - first, 2),
        }
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1,100,500")
    parser.add_argument("--modes", default="fork,spawn")
    parser.add_argument("--spawn-max", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="1 and 20 only")
    args = parser.parse_args()
    sizes = [1, 20] if args.quick else [int(x) for x in args.n.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            for n in sizes:
                if mode == "spawn" and n > args.spawn_max:
                    continue
                row = measure(n, mode == "fork", Path(tmp))
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("emulator: " + "; ".join(
        f"{r['mode']} x{r['concurrent']}: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
        f"all started in {r['all_started_s']} s" for r in rows))
    return 0 if all(r["started"] == r["concurrent"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
