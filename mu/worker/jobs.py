"""Background jobs and the subprocesses they own.

Theory of operation
-------------------
With ``nonblock`` set, ``retrieve``, ``upload`` and ``run`` do their work in a background
thread (:meth:`JobSet.start`) while the session keeps serving commands. Each job is a
callable returning the final response text; the thread hands that text to the session's
``send`` function, which queues it for the one thread that writes to the coordinator.

Ownership rules:

1. Every subprocess a command starts goes through :meth:`JobSet.run_process`: it runs in its
   own process group (``start_new_session``), is registered while it lives and is always
   waited for, so no zombie is left behind.
2. :meth:`JobSet.close` (the coordinator went away, or the session ends) refuses new
   processes, kills the process group of every live one with SIGKILL, and joins every job
   thread within a bounded time. A process started after ``close()`` is killed at once.
3. A job that raises becomes a ``FAIL(...)`` response naming the job; nothing is swallowed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["OUTPUT_LIMIT", "JobSet", "ProcessResult"]

log = logging.getLogger("mu.worker")

OUTPUT_LIMIT = 64 * 1024
"""Bytes of a command's output kept for the response; the rest is counted and cut."""

_CHUNK = 65536


@dataclass(frozen=True)
class ProcessResult:
    """How a shell command ended.

    ``returncode`` is negative when a signal killed it (``-9`` for SIGKILL). ``output`` is the
    combined stdout and stderr, cut to :data:`OUTPUT_LIMIT` bytes with a marker saying how
    many bytes were dropped.
    """

    returncode: int
    output: str
    dropped: int


class JobSet:
    """The background jobs of one session, and every subprocess started for it.

    Args:
        send: thread-safe function that queues a response for the coordinator.
    """

    def __init__(self, send: Callable[[str], None]) -> None:
        self._send = send
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
            proc = subprocess.Popen(
                command,
                shell=True,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self._procs.add(proc)
        try:
            kept = bytearray()
            dropped = 0
            stdout = proc.stdout
            assert stdout is not None
            with stdout:
                # read(n) on the pipe returns whatever is there (raw, unbuffered fd read).
                while chunk := os.read(stdout.fileno(), _CHUNK):
                    room = OUTPUT_LIMIT - len(kept)
                    kept += chunk[:room]
                    dropped += max(0, len(chunk) - room)
            returncode = proc.wait()
        finally:
            if proc.returncode is None:
                _kill_group(proc)
                proc.wait()
            with self._lock:
                self._procs.discard(proc)
        output = kept.decode("utf-8", "replace")
        if dropped:
            output += f"...[output truncated: {dropped} more bytes dropped]"
        return ProcessResult(returncode, output, dropped)

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
        return [t.name for t in threads if t.is_alive()]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group led by ``proc`` (the shell and everything it started)."""
    if proc.returncode is not None:
        return  # reaped: its pid may belong to someone else by now
    # Already gone, or only zombies left that we may not signal: nothing to kill.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
