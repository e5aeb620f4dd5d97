"""Where a command's CPU goes: every process it starts, sampled, in a cgroup of its own.

Theory of operation
-------------------
:class:`Breakdown` runs a command in a cgroup of its own (cgroup v1 ``cpuacct`` or v2, where
this process may make one), so that the total CPU of everything the command starts is the
cgroup's, counted by the kernel, even for processes that are reaped by nobody we can see
(the emulator's environments and what they run). A thread samples, every ``interval``
seconds, the CPU of every thread of every process in the cgroup (``/proc/PID/task/TID/stat``)
and keeps the last value seen per thread; each thread is put in a *part* by what it is (its
process's command line and name, its parent; the command's own threads: its main thread and
the others). What a thread used after its
last sample (short-lived processes and threads) is not in the parts; it is the difference
between the cgroup's total and the parts' sum (``unsampled``). The machine's busy share over
the run comes from ``/proc/stat``.

Where no cgroup can be made (no permission, no cgroup file system), only the sampling runs and
the total is the parts' sum.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["Breakdown"]

_TICK = os.sysconf("SC_CLK_TCK")
_CGROUPS = (Path("/sys/fs/cgroup/cpuacct"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


def _machine() -> tuple[float, float]:
    """(busy, all) CPU-seconds of the machine since boot."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return (total - idle) / _TICK, total / _TICK


def _stat(path: str) -> tuple[str, int, float] | None:
    """(name, parent pid, CPU-seconds) of a ``stat`` file, or None if it is gone."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    rest = text[text.rindex(")") + 2:].split()
    return name, int(rest[1]), (int(rest[11]) + int(rest[12])) / _TICK


class _Cgroup:
    def __init__(self, name: str) -> None:
        self.path: Path | None = None
        self.v2 = False
        for root in _CGROUPS:
            if not root.is_dir():
                continue
            v2 = (root / "cgroup.controllers").exists()
            if not v2 and not (root / "cpuacct.usage").exists():
                continue
            path = root / name
            try:
                path.mkdir()
            except OSError:
                continue
            self.path, self.v2 = path, v2
            break

    def add(self, pid: int) -> None:
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        if self.path is None:
            return []
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def usage(self) -> float | None:
        if self.path is None:
            return None
        if self.v2:
            for line in (self.path / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec"):
                    return int(line.split()[1]) / 1e6
            return None
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def remove(self) -> None:
        if self.path is not None:
            for _ in range(50):
                try:
                    self.path.rmdir()
                    return
                except OSError:
                    time.sleep(0.1)


class Breakdown:
    """Run ``argv`` and account its CPU by part (see the module docstring).

    Args:
        interval: seconds between samples.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self._seen: dict[tuple[int, int], tuple[str, float]] = {}  # (pid, tid) -> part, cpu
        self._info: dict[int, tuple[str, int, str]] = {}  # pid -> name, ppid, cmdline
        self._process: dict[int, float] = {}  # pid -> CPU (its threads', dead ones included)
        self._root = 0
        self._stop = threading.Event()
        self.timeline: list[tuple[float, dict[str, int]]] = []  # processes by kind over time

    def _kind(self, pid: int) -> str:
        name, ppid, cmd = self._info[pid]
        if pid == self._root:
            return "mu"
        if name == "bwrap":
            return "bwrap"
        if "emulator.environment" in cmd:
            parent = self._info.get(ppid)
            if parent is not None and parent[0] != "bwrap" and "emulator.environment" in parent[2]:
                return "environment"
            return "zygote"
        if name == "png2y4m":
            return "png2y4m"
        return f"other:{name}"

    def _thread(self, pid: int, tid: int) -> str:
        """The part of a thread of the command's own process ("" for any other process's:
        those are put by their process's kind once the run is over, when every parent
        is known)."""
        if pid != self._root:
            return ""
        if tid == pid:
            return "mu:main"
        got = _stat(f"/proc/{pid}/task/{tid}/stat")
        return f"mu:{got[0] if got else '?'}"

    def _sample(self, cgroup: _Cgroup) -> None:
        pids = cgroup.pids() or [self._root]
        kinds: dict[str, int] = defaultdict(int)
        for pid in pids:  # first all, so that a process's parent is known when it is put
            # (read again while it may be a fork that has not exec'd its program yet)
            if pid not in self._info or self._info[pid][0] in ("bwrap", "sh"):
                got = _stat(f"/proc/{pid}/stat")
                if got is None:
                    continue
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                self._info[pid] = (got[0], got[1], cmd)
        for pid in pids:
            if pid not in self._info:
                continue
            kinds[self._kind(pid)] += 1
            got = _stat(f"/proc/{pid}/stat")
            if got is not None:
                self._process[pid] = got[2]
            try:
                tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            except OSError:
                continue
            for tid in tids:
                key = (pid, tid)
                got = _stat(f"/proc/{pid}/task/{tid}/stat")
                if got is None:
                    continue
                part = self._seen[key][0] if key in self._seen else self._thread(pid, tid)
                self._seen[key] = (part, got[2])
        self.timeline.append((time.monotonic(), dict(kinds)))

    def run(self, argv: list[str], **popen: Any) -> dict[str, Any]:
        """Run ``argv`` to its end; return its exit status, wall time and CPU by part."""
        cgroup = _Cgroup(f"mu-bench-{os.getpid()}-{time.monotonic_ns()}")
        machine0 = _machine()
        start = time.monotonic()
        # The child joins the cgroup before it runs anything: it waits for a byte on stdin.
        proc = subprocess.Popen(["sh", "-c", 'read _ && exec "$@"', "sh", *argv],
                                stdin=subprocess.PIPE, **popen)
        self._root = proc.pid
        try:
            cgroup.add(proc.pid)
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.close()

            def sample() -> None:
                while not self._stop.wait(self.interval):
                    self._sample(cgroup)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            status = proc.wait()
            self._stop.set()
            sampler.join()
            wall = time.monotonic() - start
            machine1 = _machine()
            # descendants the command left behind (none, if it stops what it starts)
            left = cgroup.pids()
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            total = cgroup.usage()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            cgroup.remove()
        parts: dict[str, float] = defaultdict(float)
        for (pid, _), (part, cpu) in self._seen.items():
            parts[part or self._kind(pid)] += cpu
        # what a process's threads used after their last sample, or in threads never seen
        for pid, cpu in self._process.items():
            threads = sum(c for (p, _), (_, c) in self._seen.items() if p == pid)
            if cpu > threads + 1e-9:
                kind = self._kind(pid)
                parts["mu:short-lived threads" if kind == "mu" else kind] += cpu - threads
        counted = sum(parts.values())
        if total is not None:
            parts["unsampled"] = max(0.0, total - counted)
        busy = machine1[0] - machine0[0]
        return {
            "exit": status, "wall_s": wall, "cpu_s": total if total is not None else counted,
            "parts": dict(sorted(parts.items(), key=lambda kv: -kv[1])),
            "machine_busy_share": busy / max(1e-9, machine1[1] - machine0[1]),
            "machine_busy_cpu_s": busy, "left_behind": len(left),
            "processes": {k: sum(1 for p in self._info if self._kind(p) == k)
                          for k in {self._kind(p) for p in self._info}},
        }
