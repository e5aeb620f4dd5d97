"""Benchmark: Event invocations accepted per second by the launcher.

Three endpoints, one run:

- ``instant``: ``bench/instant_endpoint.py`` in its own process, answering 202 at once, so
  the figure is the launcher's own ceiling (pre-signed requests over keep-alive connections);
- ``boto3``: the plain path, ``client.invoke(InvocationType="Event")`` from a thread pool,
  against the same instant endpoint;
- ``emulator``: the local backend (emulator + moto S3 on loopback) with a handler that
  returns at once, if the emulator package is present.

For each N the launch is repeated ``--repeat`` times and the median rate is kept, with the
median CPU time the launching process spent per invocation (``cpu_us_per_invocation``: on a
shared machine the steadier figure, as it does not count the time other processes held the
cores). Prints one JSON document, then a one-line summary. Usage: ``python3 bench/launch.py [--sizes 1000,5000]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3
from botocore.config import Config

from backends.aws_lambda import LambdaLauncher
from mu.lambdaize import LOCAL_ROLE
from mu.launch import FunctionSpec, Launcher, LaunchSpec

PAYLOAD = json.dumps(
    {
        "mode": 1,
        "addr": "127.0.0.1",
        "port": 13579,
        "token": "x" * 32,
        "cacert": "C" * 1200,
        "wrkcrt": "W" * 1200,
        "wrkkey": "K" * 1700,
    }
).encode()  # about the size of a real payload (certificates and key included)


def rate(launcher: Launcher, name: str, n: int, repeat: int) -> dict[str, Any]:
    rates, cpus = [], []
    for _ in range(repeat):
        cpu0, start = time.process_time(), time.perf_counter()
        report = launcher.launch(LaunchSpec(name, PAYLOAD, n))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
        if report.accepted != n:
            raise SystemExit(f"only {report.accepted} of {n} accepted: {report.by_region()}")
        rates.append(n / elapsed)
        cpus.append(cpu / n * 1e6)
    return {
        "n": n,
        "per_second": round(statistics.median(rates)),
        "runs": [round(r) for r in rates],
        "cpu_us_per_invocation": round(statistics.median(cpus), 1),
    }


def boto3_rate(url: str, n: int, threads: int) -> dict[str, Any]:
    client = boto3.client(
        "lambda",
        region_name="us-east-1",
        endpoint_url=url,
        config=Config(max_pool_connections=threads, retries={"mode": "standard"}),
    )

    def one(_: int) -> int:
        status: int = client.invoke(FunctionName="bench", InvocationType="Event", Payload=PAYLOAD)[
            "StatusCode"
        ]
        return status

    cpu0, start = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        statuses = list(pool.map(one, range(n)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    client.close()
    assert statuses.count(202) == n
    return {
        "n": n,
        "per_second": round(n / elapsed),
        "cpu_ms_per_call": round(cpu / n * 1000, 3),
        "threads": threads,
    }


def instant_endpoint() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("instant_endpoint.py"))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


def trivial_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("lambda_function.py", "def lambda_handler(event, context):\n    return None\n")
    return out.getvalue()


def emulator_rates(sizes: list[int], repeat: int) -> dict[str, Any]:
    from backends.local import LocalLauncher
    from mu.errors import LaunchError

    try:
        launcher = LocalLauncher()
    except LaunchError as exc:
        return {"skipped": f"emulator not available: {exc}"}
    try:
        launcher.create_function(
            FunctionSpec("bench", trivial_zip(), memory=128, role=LOCAL_ROLE), "us-east-1"
        )
        return {"results": [rate(launcher, "bench", n, repeat) for n in sizes]}
    finally:
        launcher.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,5000", help="comma list of N")
    parser.add_argument("--repeat", type=int, default=3, help="launches per N (median kept)")
    parser.add_argument("--boto3-n", type=int, default=1000, help="N for the boto3 path")
    parser.add_argument("--boto3-threads", type=int, default=16)
    parser.add_argument("--no-emulator", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")

    proc, url = instant_endpoint()
    try:
        results: dict[str, Any] = {"instant": {}}
        for label, options in {
            "connections=48,pipeline=1": {"connections": 48, "pipeline": 1},
            "connections=8,pipeline=8": {"connections": 8, "pipeline": 8},
        }.items():
            launcher = LambdaLauncher(endpoint_url=url, check_function=False, **options)
            results["instant"][label] = [rate(launcher, "bench", n, args.repeat) for n in sizes]
            launcher.close()
        results["boto3"] = boto3_rate(url, args.boto3_n, args.boto3_threads)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()
    if not args.no_emulator:
        results["emulator"] = emulator_rates(sizes, 1)
    results["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    print(json.dumps(results, indent=2))

    default = results["instant"]["connections=48,pipeline=1"]
    fast = {r["n"]: r["per_second"] for r in default}
    plain = results["boto3"]["per_second"]
    cpu = {r["n"]: r["cpu_us_per_invocation"] for r in default}
    parts = [f"instant endpoint {fast[n]:,}/s (N={n}, {cpu[n]:g} us CPU each)" for n in sizes]
    line = f"launch: {', '.join(parts)}; plain boto3 {plain:,}/s"
    line += f" -> {min(fast.values()) / plain:.1f}x"
    emulator = results.get("emulator", {})
    if "results" in emulator:
        line += "; emulator " + ", ".join(
            f"{r['per_second']:,}/s (N={r['n']})" for r in emulator["results"]
        )
    print(line)


if __name__ == "__main__":
    main()
