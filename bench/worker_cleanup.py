"""Benchmark: what ending every process a command started costs the worker, per command.

Runs ``true`` through :meth:`mu.worker.jobs.JobSet.run_process` ``--count`` times, which at
each command's end kills its process group and sweeps ``/proc`` for processes carrying its
mark (only pids from the shell's on), and times three ways of finding them:

- ``per_command``: a whole ``run:`` (spawn, wait, sweep), wall and CPU milliseconds;
- ``spawn_only``: the same shell through ``subprocess.run`` with nothing swept (the floor);
- ``sweep_from_shell``: the end-of-command sweep alone (pids from the shell's on);
- ``sweep_all``: the end-of-invocation sweep (every pid in ``/proc``).

Each figure is the median of ``--repeat`` batches, measured first as a plain process and
then as a child subreaper (the Lambda handler's mode). Prints one JSON document, then a
one-line summary. Usage: ``python3 bench/worker_cleanup.py [--count 200] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mu.worker import reaper
from mu.worker.jobs import JobSet


def per_call_ms(call: Callable[[], object], count: int, repeat: int) -> dict[str, float]:
    """Median wall and CPU milliseconds per call over ``repeat`` batches of ``count``."""
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            call()
        walls.append((time.perf_counter() - wall) / count * 1000)
        cpus.append((time.process_time() - cpu) / count * 1000)
    return {"wall_ms": round(statistics.median(walls), 3), "cpu_ms": round(statistics.median(cpus), 3)}


def last_pid() -> int:
    """The pid handed out last: a command's end sweeps from its shell's pid, a recent one."""
    try:
        return int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    except (OSError, ValueError):
        return os.getpid()


def spawn() -> None:
    subprocess.run(
        "true", shell=True, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True, check=False,
    )


def measure(count: int, repeat: int) -> dict[str, Any]:
    jobs = JobSet(lambda _text: None)

    def nothing(_mark: str) -> bool:
        return False

    try:
        return {
            "per_command": per_call_ms(lambda: jobs.run_process("true", "/"), count, repeat),
            "spawn_only": per_call_ms(spawn, count, repeat),
            "sweep_from_shell": per_call_ms(
                lambda: reaper.end_marked(nothing, since=last_pid()), count, repeat
            ),
            "sweep_all": per_call_ms(lambda: reaper.end_marked(nothing), count, repeat),
        }
    finally:
        jobs.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="commands per batch")
    parser.add_argument("--repeat", type=int, default=5, help="batches (the median is kept)")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
        "python": platform.python_version(),
        "processes_on_host": sum(1 for name in os.listdir("/proc") if name.isdigit()),
        "count": args.count,
        "repeat": args.repeat,
        "plain": measure(args.count, args.repeat),
    }
    result["subreaper"] = (
        measure(args.count, args.repeat) if reaper.become_subreaper() else "unavailable"
    )
    print(json.dumps(result, indent=2))
    plain = result["plain"]
    print(
        f"run:true {plain['per_command']['wall_ms']} ms wall / "
        f"{plain['per_command']['cpu_ms']} ms CPU a command (spawn alone "
        f"{plain['spawn_only']['wall_ms']} / {plain['spawn_only']['cpu_ms']}); sweep from the "
        "shell's pid "
        f"{plain['sweep_from_shell']['cpu_ms']} ms CPU, whole /proc "
        f"{plain['sweep_all']['cpu_ms']} ms CPU ({result['processes_on_host']} processes)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
