"""Finding and ending every process the worker's commands started, detached or not.

Theory of operation
-------------------
A command runs through ``/bin/sh`` in a process group of its own, so one ``killpg`` ends the
shell and what it started in the foreground or with ``&``. Two things escape a process group:
a process that makes its own (``setsid cmd``, a daemon's double fork), and a group killed
after its leader was reaped (the group id may belong to someone else by then). So every
process a command starts also carries a *mark* in its environment, ``MU_WORKER_JOB=<id>``,
which its descendants inherit; :func:`end_marked` finds the processes that carry a mark (and
their descendants, marked or not), kills them and waits, within a bound, until they are gone.
The marks are ``<invocation>.<job>``: one job's processes, or all of an invocation's, can be
found without touching anyone else's (several sessions may share a process in tests).

Where Linux allows it (``prctl(PR_SET_CHILD_SUBREAPER)`` through ``ctypes``: no extra
package in the Lambda zip), the worker's process is made a *child subreaper*
(:func:`become_subreaper`): an orphan of a command is then re-parented to the worker instead
of to PID 1, so every process a command started stays a descendant of the worker, and the
worker reaps the ones it kills (no zombies left in a warm Lambda environment). Finding them is
then a walk of the worker's own subtree instead of a scan of every process.

Without ``/proc`` (not Linux) nothing can be found beyond the process group: the functions
here return empty results and the process-group kill is all that is done. Without a subreaper
the whole ``/proc`` is scanned. A process that both leaves the group and clears its
environment (``setsid env -i ...``) escapes the mark; with a subreaper it is still found at
the end of an invocation that owns its process (:func:`end_marked` with ``orphans``).

Identity: a pid is looked at through a pidfd (``os.pidfd_open``) where available; the start
time read from ``/proc/<pid>/stat`` is checked again through it before the signal, so a pid
reused between the scan and the kill is never signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Collection, Mapping
from typing import Final

__all__ = [
    "MARK",
    "SHORT_COMMAND",
    "become_subreaper",
    "end_marked",
    "is_subreaper",
    "last_pid",
    "marked_env",
    "scan_from",
]

log = logging.getLogger("mu.worker")

MARK: Final = "MU_WORKER_JOB"
"""The environment variable that marks a process as started by a worker's command."""

SHORT_COMMAND: Final = 1.0
"""Seconds under which pids cannot have gone round a whole cycle (see :func:`scan_from`)."""

_PR_SET_CHILD_SUBREAPER: Final = 36
_PROC: Final = "/proc"
_PASSES: Final = 8  # reads of a process's children files before /proc is scanned instead

_subreaper = False


def become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants (Linux); idempotent.

    Returns:
        Whether it is one now. ``False`` where ``prctl`` is missing or refuses (not Linux,
        a seccomp filter): the worker then scans ``/proc`` instead (see the module docstring).
    """
    global _subreaper
    if _subreaper:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        # The running program's own symbols include libc's (no find_library: it would
        # start ldconfig in a subprocess).
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError) as exc:  # no libc by that name, no prctl symbol
        log.info("cannot become a child subreaper: %s", exc)
        return False
    if not ok:
        log.info("prctl(PR_SET_CHILD_SUBREAPER) refused: %s", os.strerror(ctypes.get_errno()))
        return False
    _subreaper = True
    return True


def is_subreaper() -> bool:
    """Whether :func:`become_subreaper` succeeded in this process."""
    return _subreaper


def marked_env(base: Mapping[str, str] | None, mark: str) -> dict[str, str]:
    """The environment for a command: ``base`` (default: this process's) plus the mark."""
    env = dict(os.environ if base is None else base)
    env[MARK] = mark
    return env


class _Proc:
    __slots__ = ("pid", "ppid", "start", "zombie")

    def __init__(self, pid: int, ppid: int, start: int, zombie: bool) -> None:
        self.pid = pid
        self.ppid = ppid
        self.start = start  # clock ticks since boot: with the pid, the process's identity
        self.zombie = zombie


def _stat(pid: int) -> _Proc | None:
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:  # gone, or not ours to read
        return None
    # The command name (field 2) is in parentheses and may hold anything: cut after it.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return _Proc(pid, int(fields[1]), int(fields[19]), fields[0] in (b"Z", b"X"))
    except (IndexError, ValueError):
        return None


def _mark_of(pid: int) -> str | None:
    try:
        with open(f"{_PROC}/{pid}/environ", "rb") as handle:
            environ = handle.read()
    except OSError:
        return None
    key = MARK.encode() + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(key):
            return entry[len(key) :].decode("ascii", "replace")
    return None


def scan_from(shell_pid: int, elapsed: float, last_pid: int | None) -> int:
    """The pid from which to sweep at the end of a command whose shell was ``shell_pid``.

    What a command started has a pid above its shell's, unless pids wrapped around at
    ``pid_max`` (32768 on some hosts) in between: then every pid is looked at (0). A wrap is
    seen in the last pid handed out (:func:`last_pid`) being below the shell's; a command that
    ran :data:`SHORT_COMMAND` or longer may have seen a whole cycle, so it gets the full scan
    too (its cost, a few milliseconds, is small beside the command's).

    Args:
        shell_pid: the pid of the command's shell.
        elapsed: how long the command ran, in seconds.
        last_pid: the last pid handed out, read after the command ended (``None``: unknown;
            a short command is then very unlikely to have seen a wrap).

    >>> scan_from(1000, 0.01, 1010), scan_from(1000, 0.01, 20), scan_from(1000, 5.0, 1010)
    (1000, 0, 0)
    """
    if elapsed >= SHORT_COMMAND or (last_pid is not None and last_pid < shell_pid):
        return 0
    return shell_pid


def last_pid() -> int | None:
    """The pid the kernel handed out last (``/proc/sys/kernel/ns_last_pid``), if readable."""
    try:
        with open(f"{_PROC}/sys/kernel/ns_last_pid", "rb") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return None


def _table(since: int) -> dict[int, _Proc]:
    """The processes to look at: this one's subtree (a subreaper), else all of /proc; only
    pids from ``since`` on."""
    if _subreaper:
        mine = _subtree()
        if mine is not None:
            return {pid: proc for pid, proc in mine.items() if pid >= since}
    try:
        names = os.listdir(_PROC)
    except OSError:
        return {}
    procs = {}
    for name in names:
        if name.isdigit() and int(name) >= since and (proc := _stat(int(name))) is not None:
            procs[proc.pid] = proc
    if not _subreaper:
        return procs
    children: dict[int, list[int]] = {}
    for proc in procs.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    mine = {}
    todo = list(children.get(os.getpid(), ()))
    while todo:
        pid = todo.pop()
        mine[pid] = procs[pid]
        todo.extend(children.get(pid, ()))
    return mine


def _subtree() -> dict[int, _Proc] | None:
    """This process's descendants, found through each process's ``children`` files (the
    children its threads started, and the orphans it adopted as the subreaper): a few reads
    instead of a ``stat`` of every process on the host. ``None`` where the kernel has no
    such files (built without ``CONFIG_PROC_CHILDREN``)."""
    mine: dict[int, _Proc] = {}
    todo = [os.getpid()]
    while todo:
        kids = _children(todo.pop())
        if kids is None:
            return None
        for kid in kids:
            if kid not in mine and (proc := _stat(kid)) is not None:
                mine[kid] = proc
                todo.append(kid)
    return mine


def _children(pid: int) -> list[int] | None:
    """The children of ``pid`` (any of its threads'); [] if it is gone, None without the
    files that list them, or if they never held still.

    A thread's children move to another thread of its process when it exits (the worker's
    job threads come and go), so a child can be missed in the file already read and in the
    one read after it; the files are read until two passes in a row agree."""
    last: tuple[list[str], set[int]] | None = None
    for _ in range(_PASSES):
        try:
            tasks = sorted(os.listdir(f"{_PROC}/{pid}/task"))
        except OSError:
            return []
        kids: set[int] = set()
        for task in tasks:
            try:
                with open(f"{_PROC}/{pid}/task/{task}/children", "rb") as handle:
                    kids.update(int(kid) for kid in handle.read().split())
            except FileNotFoundError:
                if os.path.isdir(f"{_PROC}/{pid}/task/{task}"):
                    return None  # the thread is there, its children file is not
            except (OSError, ValueError):
                continue
        if last == (tasks, kids):
            return sorted(kids)
        last = (tasks, kids)
    return None


def end_marked(
    matches: Callable[[str], bool],
    *,
    exclude: Collection[int] = (),
    orphans: bool = False,
    wait: float = 5.0,
    since: int = 0,
) -> list[int]:
    """Kill every process whose mark ``matches``, and all their descendants; wait for them.

    Args:
        matches: takes a mark (``<invocation>.<job>``) and says whether its processes go.
        exclude: pids never signalled nor reaped here (the shells their owners still wait
            for: reaping those would steal their exit status).
        orphans: also end every unmarked child of this process (orphans re-parented to the
            subreaper): only for a process that runs nothing else (a Lambda environment).
        wait: seconds to wait for the killed processes to exit.
        since: look only at pids from this one on. Pids are handed out in increasing order
            until they wrap around at ``pid_max``, so what a command started has a pid above
            its shell's: at the end of one command, scanning from the shell's pid finds
            them all but for a wrap-around in between (the end of the invocation, which
            scans everything, then catches it). This keeps the scan cheap on a busy host.

    Returns:
        The pids still running after ``wait`` (normally none).
    """
    table = _table(since)
    me = os.getpid()
    targets: set[int] = set()
    for proc in table.values():
        if proc.pid in exclude or proc.zombie:
            continue
        mark = _mark_of(proc.pid)
        if (mark is not None and matches(mark)) or (
            orphans and _subreaper and mark is None and proc.ppid == me
        ):
            targets.add(proc.pid)
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    todo = list(targets)
    while todo:  # descendants go too, whatever their environment
        for child in children.get(todo.pop(), ()):
            if child not in targets and child not in exclude:
                targets.add(child)
                todo.append(child)
    if orphans and _subreaper:
        # Orphans that already exited: reap them so a warm environment keeps no zombies.
        targets.update(p.pid for p in table.values() if p.zombie and p.ppid == me)
    targets.difference_update(exclude)
    if not targets:
        return []
    return _kill_and_wait({pid: table[pid] for pid in targets}, wait)


def _kill_and_wait(targets: dict[int, _Proc], wait: float) -> list[int]:
    handles: dict[int, int] = {}  # pid -> pidfd (-1: no pidfd support)
    try:
        for pid, proc in targets.items():
            fd = _pidfd(pid)
            now = _stat(pid)
            if now is None or now.start != proc.start:
                if fd >= 0:
                    os.close(fd)
                continue  # gone, or the pid is someone else's now
            handles[pid] = fd
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if fd >= 0:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
        log.info("killed %d process(es) left by commands: %s", len(handles), sorted(handles))
        deadline = time.monotonic() + wait
        left = dict(handles)
        while left:
            for pid in list(left):
                if _exited(pid, left[pid]):
                    _reap(pid)
                    del left[pid]
            remaining = deadline - time.monotonic()
            if not left or remaining <= 0:
                break
            fds = [fd for fd in left.values() if fd >= 0]
            if len(fds) == len(left):
                select.select(fds, [], [], remaining)
            else:  # no pidfd: look again shortly (bounded by the deadline)
                time.sleep(min(0.01, remaining))
        return sorted(left)
    finally:
        for fd in handles.values():
            if fd >= 0:
                os.close(fd)


def _pidfd(pid: int) -> int:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return -1
    try:
        fd: int = opener(pid)
    except OSError:  # gone already, or the kernel has no pidfd_open (ENOSYS)
        return -1
    return fd


def _exited(pid: int, fd: int) -> bool:
    if fd >= 0:
        readable, _, _ = select.select([fd], [], [], 0)
        return bool(readable)
    proc = _stat(pid)
    return proc is None or proc.zombie


def _reap(pid: int) -> None:
    """Collect a killed child of ours (an orphan we adopted as the subreaper)."""
    proc = _stat(pid)
    if proc is not None and proc.ppid == os.getpid():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
