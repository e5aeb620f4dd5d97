"""Coordinator throughput: messages per coordinator CPU-second, wall time, peak RSS.

N simulated workers (bench/sim_workers.py, a separate process) each go through a
png2y4m-shaped conversation: hello, 7 setup commands, 6 x (set, set, retrieve, run), upload,
quit: 66 messages per worker. The coordinator runs in its own process so that its CPU time
(getrusage) and peak RSS are its own. Prints one JSON object per configuration, then a
summary line.

Usage: python bench/coordinator.py [--n 100,1000,2000,5000] [--tls on,off] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MESSAGES_PER_WORKER = 66


def serve(n: int, tls: bool, keydir: str) -> None:
    """Child process: run one coordinator; print its address, then its figures."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    from mu.apps.png2y4m import ConfigState, Png2Y4MConfig
    from mu.config import RunConfig
    from mu.coordinator import Coordinator
    from mu.states import MachineState
    from mu.tls import KeySet

    class BenchConfig(ConfigState):
        """The png2y4m configuration plus one more setting: 7 setup commands."""

        def __init__(self, prevState: MachineState | None = None, *a: Any, **kw: Any) -> None:
            super().__init__(prevState, *a, **kw)
            self.commandlist = [*self.commandlist[:-1], "set:region:us-east-1", None]

    keys = KeySet.load(*(os.path.join(keydir, f) for f in (
        "ca_cert.pem", "server_cert.pem", "server_key.pem", "worker_cert.pem", "worker_key.pem")))
    config = RunConfig(num_actors=n, port=0, tls=tls, handshake_timeout=120, hello_timeout=120)
    coord = Coordinator(BenchConfig, Png2Y4MConfig(frames=6), config, keys if tls else None)
    host, port = coord.bind()
    print(json.dumps({"host": host, "port": port, "token": coord.token}), flush=True)
    before = resource.getrusage(resource.RUSAGE_SELF)
    if os.environ.get("MU_BENCH_PROFILE"):  # write cProfile stats of the coordinator there
        import cProfile

        profiler = cProfile.Profile()
        result = profiler.runcall(coord.run)
        profiler.dump_stats(os.environ["MU_BENCH_PROFILE"])
    else:
        result = coord.run()
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    print(json.dumps({
        "done": result.done, "errors": result.errors, "rejected": result.rejected,
        "messages": result.messages_in + result.messages_out, "cpu": user + system,
        "user": user, "system": system, "wall": result.wall,
        "peak_rss_mib": after.ru_maxrss / 1024,
    }), flush=True)


def measure(n: int, tls: bool, keydir: str) -> dict[str, Any]:
    coord = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(n), "on" if tls else "off", keydir],
        stdout=subprocess.PIPE, text=True,
    )
    assert coord.stdout is not None
    where = json.loads(coord.stdout.readline())
    sim_args = [sys.executable, str(HERE / "sim_workers.py"), where["host"], str(where["port"]),
                where["token"], str(n)] + ([keydir] if tls else [])
    started = time.monotonic()
    sim = subprocess.run(sim_args, capture_output=True, text=True, check=False)
    figures = json.loads(coord.stdout.readline())
    coord.wait()
    wall = time.monotonic() - started
    return {
        "workers": n, "tls": tls, "ok": figures["done"] == n and sim.returncode == 0,
        "messages": figures["messages"], "expected_messages": n * MESSAGES_PER_WORKER,
        "coordinator_cpu_s": round(figures["cpu"], 3),
        "coordinator_user_s": round(figures["user"], 3),
        "coordinator_system_s": round(figures["system"], 3),
        "messages_per_cpu_s": round(figures["messages"] / figures["cpu"]) if figures["cpu"] else None,
        "wall_s": round(wall, 3), "peak_rss_mib": round(figures["peak_rss_mib"], 1),
        "load_average_1min": round(os.getloadavg()[0], 1),
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), sys.argv[3] == "on", sys.argv[4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="100,1000,2000,5000")
    parser.add_argument("--tls", default="on,off")
    parser.add_argument("--quick", action="store_true", help="N = 100 only")
    args = parser.parse_args()
    sizes = [100] if args.quick else [int(x) for x in args.n.split(",")]
    modes = [m == "on" for m in args.tls.split(",")]
    from mu.tls import generate_keys

    rows = []
    with tempfile.TemporaryDirectory() as keydir:
        generate_keys().write(keydir)
        for tls in modes:
            for n in sizes:
                row = measure(n, tls, keydir)
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = "; ".join(
        f"N={r['workers']} {'TLS' if r['tls'] else 'TCP'}: {r['messages_per_cpu_s']} msg/CPU-s, "
        f"{r['wall_s']} s, {r['peak_rss_mib']} MiB, load {r['load_average_1min']}"
        f"{'' if r['ok'] else ' (INCOMPLETE)'}"
        for r in rows
    )
    print(f"coordinator: {summary}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
