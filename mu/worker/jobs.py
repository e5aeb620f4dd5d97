"""Background jobs and the subprocesses they own.

Theory of operation
-------------------
With ``nonblock`` set, ``retrieve``, ``upload`` and ``run`` do their work in a background
thread (:meth:`JobSet.start`) while the session keeps serving commands. Each job is a
callable returning the final response text; the thread hands that text to the session's
``send`` function, which queues it for the one thread that writes to the coordinator.

Ownership rules:

1. Every subprocess a command starts goes through :meth:`JobSet.run_process`: it runs in its
   own process group (``start_new_session``) with a mark in its environment
   (:mod:`mu.worker.reaper`), is registered while it lives and is always waited for, so no
   zombie is left behind.
2. A command ends when its shell exits, not when its output pipe closes: a background child
   (``sleep 45 & echo bg``) holding the pipe does not delay the answer. Then everything the
   command started and left behind is killed (the process group, and every process carrying
   the command's mark, detached or not), the output still in the pipe is read within
   :data:`DRAIN_TIME`, and the shell is reaped. Nothing a command starts outlives it.
3. :meth:`JobSet.close` (the coordinator went away, or the session ends) refuses new
   processes, kills the process group of every live one with SIGKILL, joins every job
   thread within a bounded time, then kills whatever still carries the invocation's mark.
   A process started after ``close()`` is killed at once.
4. A job that raises becomes a ``FAIL(...)`` response naming the job; nothing is swallowed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from mu.worker import reaper

__all__ = ["DRAIN_TIME", "OUTPUT_LIMIT", "JobSet", "ProcessResult"]

log = logging.getLogger("mu.worker")

OUTPUT_LIMIT = 64 * 1024
"""Bytes of a command's output kept for the response; the rest is counted and cut."""

DRAIN_TIME = 2.0
"""Seconds to read what a command left in its output pipe once its shell has exited."""

_CHUNK = 65536
_POLL = 0.05  # seconds between exit checks where the kernel has no pidfd_open


class ProcessResult:
    """How a shell command ended.

    ``returncode`` is negative when a signal killed it (``-9`` for SIGKILL). ``output`` is the
    combined stdout and stderr, cut to :data:`OUTPUT_LIMIT` bytes with a marker saying how
    many bytes were dropped. (A plain class: a dataclass would compile its methods in every
    execution environment's Init.)
    """

    __slots__ = ("dropped", "output", "returncode")

    def __init__(self, returncode: int, output: str, dropped: int) -> None:
        self.returncode = returncode
        self.output = output
        self.dropped = dropped


class JobSet:
    """The background jobs of one session, and every subprocess started for it.

    Args:
        send: thread-safe function that queues a response for the coordinator.
        own_process: this process runs nothing but this worker (a Lambda environment):
            :meth:`close` may also end orphans that carry no mark (see :mod:`~mu.worker.reaper`).
    """

    def __init__(self, send: Callable[[str], None], *, own_process: bool = False) -> None:
        self._send = send
        self._own_process = own_process
        self.mark = secrets.token_hex(8)
        self._seq = 0
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._closed = False
        self._done = threading.Condition(self._lock)
        self.started = 0
        self.finished = 0

    @property
    def running(self) -> int:
        """Background jobs not yet finished."""
        with self._lock:
            return self.started - self.finished

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def start(
        self, name: str, job: Callable[[], str], on_done: Callable[[], None] | None = None
    ) -> None:
        """Run ``job`` in a background thread; send its result when it returns.

        Args:
            name: the command name, used in the FAIL text if the job raises.
            job: returns the final response text.
            on_done: called in the job's thread after the result was sent.
        """
        thread = threading.Thread(
            target=self._run, args=(name, job, on_done), name=f"mu-job-{name}", daemon=True
        )
        with self._lock:
            self.started += 1
            self._threads.add(thread)
        thread.start()

    def _run(self, name: str, job: Callable[[], str], on_done: Callable[[], None] | None) -> None:
        try:
            result = job()
        except Exception as exc:  # a bug in a job must still answer the coordinator
            log.exception("background %s failed", name)
            result = f"FAIL({name}: internal error: {type(exc).__name__}: {exc})"
        try:
            self._send(result)
            if on_done is not None:
                on_done()
        finally:
            with self._lock:
                self.finished += 1
                self._threads.discard(threading.current_thread())
                self._done.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no background job is running.

        Returns:
            Whether all jobs finished within ``timeout`` seconds.
        """
        with self._lock:
            return self._done.wait_for(lambda: self.started == self.finished, timeout)

    def run_process(
        self, command: str, cwd: str, env: dict[str, str] | None = None
    ) -> ProcessResult:
        """Run ``command`` through ``/bin/sh`` in its own process group and wait for it.

        Args:
            command: shell text.
            cwd: working directory of the command.
            env: environment (default: inherited).

        Returns:
            The exit status and the combined output, bounded by :data:`OUTPUT_LIMIT`.

        Raises:
            OSError: the shell could not be started (bad ``cwd``, ...).
        """
        with self._lock:
            if self._closed:
                return ProcessResult(-signal.SIGKILL, "worker is shutting down", 0)
            self._seq += 1
            mark = f"{self.mark}.{self._seq}"
            proc = subprocess.Popen(
                command,
                shell=True,
                cwd=cwd,
                env=reaper.marked_env(env, mark),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self._procs.add(proc)
        started = time.monotonic()
        stdout = proc.stdout
        assert stdout is not None
        out = _Output()
        try:
            with stdout:
                try:
                    _read_until_exit(proc, stdout.fileno(), out)
                finally:
                    # The shell has exited (or we are failing) but is not reaped yet, so its
                    # group id is still its own: end the group, then the detached rest.
                    _kill_group(proc)
                    elapsed = time.monotonic() - started
                    since = reaper.scan_from(proc.pid, elapsed, reaper.last_pid())
                    reaper.end_marked(mark.__eq__, exclude=(proc.pid,), since=since)
                _drain(stdout.fileno(), out, time.monotonic() + DRAIN_TIME)
        finally:
            returncode = proc.wait()
            with self._lock:
                self._procs.discard(proc)
        return out.result(returncode)

    def close(self, timeout: float = 10.0) -> list[str]:
        """Kill every live subprocess group and join the job threads.

        Args:
            timeout: total seconds to wait for job threads (S3 transfers cannot be killed).

        Returns:
            The names of job threads still alive after ``timeout`` (normally none).
        """
        with self._lock:
            self._closed = True
            procs = list(self._procs)
        for proc in procs:
            _kill_group(proc)
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        prefix = f"{self.mark}."
        survivors = reaper.end_marked(
            lambda mark: mark.startswith(prefix),
            exclude=[p.pid for p in procs],
            orphans=self._own_process,
        )
        if survivors:
            log.warning("processes still running after SIGKILL: %s", survivors)
        return [t.name for t in threads if t.is_alive()]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group led by ``proc`` (the shell and everything it started)."""
    if proc.returncode is not None:
        return  # reaped: its pid may belong to someone else by now
    # Already gone, or only zombies left that we may not signal: nothing to kill.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class _Output:
    """A command's combined output, kept up to :data:`OUTPUT_LIMIT` bytes."""

    def __init__(self) -> None:
        self.kept = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = OUTPUT_LIMIT - len(self.kept)
        self.kept += chunk[:room]
        self.dropped += max(0, len(chunk) - room)

    def result(self, returncode: int) -> ProcessResult:
        output = self.kept.decode("utf-8", "replace")
        if self.dropped:
            output += f"...[output truncated: {self.dropped} more bytes dropped]"
        return ProcessResult(returncode, output, self.dropped)


def _read_until_exit(proc: subprocess.Popen[bytes], fd: int, out: _Output) -> None:
    """Collect output until the shell exits, leaving it unreaped (a zombie keeps its pid and
    its process group id ours until :meth:`subprocess.Popen.wait`)."""
    pidfd = -1
    opener = getattr(os, "pidfd_open", None)
    if opener is not None:
        with contextlib.suppress(OSError):  # ENOSYS on old kernels: poll instead
            pidfd = opener(proc.pid)
    try:
        watch = [fd] + ([pidfd] if pidfd >= 0 else [])
        while True:
            readable, _, _ = select.select(watch, [], [], None if pidfd >= 0 else _POLL)
            if fd in readable:
                # read(n) on the pipe returns whatever is there (raw, unbuffered fd read).
                chunk = os.read(fd, _CHUNK)
                if chunk:
                    out.add(chunk)
                else:
                    watch.remove(fd)  # every writer closed it: only the exit is left
                    if pidfd < 0:
                        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
                        return
            if pidfd >= 0 and pidfd in readable:
                return
            if pidfd < 0 and _exited(proc.pid):
                return
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def _exited(pid: int) -> bool:
    """Whether child ``pid`` has exited, without reaping it."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _drain(fd: int, out: _Output, deadline: float) -> None:
    """Read what is left in the pipe until EOF (its writers were just killed) or ``deadline``."""
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            break
        chunk = os.read(fd, _CHUNK)
        if not chunk:
            return
        out.add(chunk)
    log.warning("a command's output pipe stayed open after its processes were killed")
