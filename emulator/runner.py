"""Running one invocation: a fresh process with a Lambda-like environment, bounded and reaped.

Theory of operation
-------------------
Each invocation gets its own process, its own process group, a private temporary directory
(``TMPDIR``, removed afterwards) and its own log file. The process runs a small bootstrap
(:data:`BOOTSTRAP`) that puts the function's unpacked code first on ``sys.path``, builds a
context object and calls the handler. The invocation and the process talk over one socket
pair, its *channel*: the runner writes the invocation (one JSON line: the event, the
environment, the context's fields) and the process writes its outcome back (one JSON line)
just before it exits. So starting and ending an invocation touch no control file.

Two ways to start that process, with identical results:

* **fork server** (default): one single-threaded helper process per function has already
  imported the Python runtime, boto3 and the handler's module, and forks *spares* ahead of
  demand, up to ``spares`` (``SPARES`` by default). A spare is a child in its own process group
  that makes its ``TMPDIR`` and its log file under placeholder names in idle time, runs the
  invocation path's Python once on a dummy invocation (so the pages it writes are copied
  before a burst, not during one), and blocks reading its channel. The helper passes the
  channel's other end to the runner (``SCM_RIGHTS``) with the spare's pid and placeholder
  names, so an invocation is handed by the runner itself to the oldest spare: one write,
  no round trip through the helper and no file created, renamed or opened while a burst
  starts. When no spare is left the invocation waits for the next one announced, and the
  helper forks at once (it is told how many wait); otherwise it refills only after
  requests have paused for 0.1 s, or when a quarter of the spares is left, so that refills
  do not compete with a burst. A spare serves one invocation and exits, so every
  invocation still runs in a process nobody used before; spares whose runner or helper
  goes away read end-of-file and exit unused. Fork servers are kept for the functions
  invoked most recently, as many as ``kept`` idle processes allow (two by default); the one
  used least recently is stopped to make room;
* **plain spawn**: ``python -I -c BOOTSTRAP spawn FD`` per invocation, which reads the
  invocation from its channel and makes its ``TMPDIR`` and log itself.

Once the handler has returned, the process drops to ``SCHED_IDLE`` to write its outcome and
exit, so its teardown never competes with starts.

One watcher thread per runner waits for every invocation at once (each process's pidfd and
channel in one ``selectors`` set, epoll on Linux), so no thread is started per invocation.
It enforces the function's ``Timeout`` (a heap of deadlines) and ``MemorySize`` (the
resident size of the process tree, read from ``/proc`` every ``_POLL`` seconds, or in turn
when more than ``_CHECKS`` run) by killing
the whole process group, with Lambda's messages, and an outcome complete by the deadline
counts even if the exit was slow. When an invocation ends, whatever it left running in its group is killed,
its log gets its final name (``logs/FUNCTION/REQUEST_ID.log``, appended to if an earlier
attempt wrote one) and Lambda's ``END``/``REPORT`` lines, its ``TMPDIR`` is removed, and the
caller's ``on_done`` is called with the :class:`Result`, from the watcher thread. While
invocations are starting, the watcher's own work (watching the new ones, ending those
done) waits until none has started for ``_SETTLE``, or for at most ``_SETTLE_MAX``, so that
a burst's starts do not compete with it; so do the counts the helper is told.
An invocation that cannot be started (``Popen`` refuses its environment) ends at once with
``Runtime.StartError``; a function deleted while it runs has its invocations killed, each
ending with ``Runtime.FunctionDeleted``. :meth:`Runner.close` kills every invocation, spare
and helper.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import math
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BOOTSTRAP", "KEPT_SERVERS", "SPARES", "Code", "Result", "Runner"]

_POLL = 0.05  # seconds between the watcher's memory checks
_CHECKS = 64  # memory checks per tick at most: more running ones are checked in turn
_TELL_EVERY = 16  # spares taken per report to the helper while a burst starts
_SETTLE = 0.003  # ends are cleaned up once no invocation has started for this long,
_SETTLE_MAX = 0.2  # or once they have waited this long
SPARES = 128  # idle pre-forked children per fork server (each costs about 2 MiB: page
# tables and the pages it has written; the rest is shared with the helper, copy-on-write)
KEPT_SERVERS = 2  # fork servers kept by default (each with its spares)
_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_BASE_ENV = ("PATH", "LANG", "LC_ALL", "HOME", "SSL_CERT_FILE", "SSL_CERT_DIR")
SPARE_PREFIX = ".spare-"  # placeholder names of spares' logs and TMPDIRs

# The bootstrap runs inside the invocation's process, with nothing of ours importable.
BOOTSTRAP = r'''
import importlib, json, os, sys, time, traceback

class Context:
    def __init__(self, spec):
        self.function_name = spec["name"]
        self.function_version = spec["version"]
        self.memory_limit_in_mb = int(spec["memory"])
        self.aws_request_id = spec["request_id"]
        self.invoked_function_arn = spec["arn"]
        self.log_group_name = "/aws/lambda/" + spec["name"]
        self.log_stream_name = spec["request_id"]
        self._deadline = float(spec["deadline"])
    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.time()) * 1000))

def load(spec):
    if spec["code_dir"] not in sys.path:
        sys.path.insert(0, spec["code_dir"])
    module, _, name = spec["handler"].rpartition(".")
    return getattr(importlib.import_module(module), name)

def read_line(fd):
    # One JSON line from the channel; None at end-of-file (the runner went away).
    parts = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return None
        parts.append(chunk)
        if chunk.endswith(b"\n"):
            return json.loads(b"".join(parts))

def invoke(spec, chan, handler=None):
    try:
        raw = spec["event"].encode("utf-8", "surrogateescape")
        event = json.loads(raw) if raw.strip() else {}
        handler = handler or load(spec)
        result = handler(event, Context(spec))
        out = {"ok": True, "result": result}
    except Exception as exc:
        traceback.print_exc()
        out = {"ok": False, "errorMessage": str(exc), "errorType": type(exc).__name__,
               "stackTrace": traceback.format_exc().splitlines()}
    sys.stdout.flush()
    sys.stderr.flush()
    idle()  # the handler is done: writing its outcome and exiting can wait for idle CPU
    view = memoryview(json.dumps(out, default=str).encode() + b"\n")
    while view:
        view = view[os.write(chan, view):]

def idle():
    if not policy("SCHED_IDLE"):
        try:
            os.nice(19)
        except OSError:
            pass

def policy(name):
    try:
        os.sched_setscheduler(0, getattr(os, name), os.sched_param(0))
        return True
    except (AttributeError, OSError):
        return False

def child(spec, chan, handler=None, log_fd=-1):
    # log_fd: the log a spare opened in idle time (its TMPDIR is made too); otherwise
    # both are made here. spec["env"] and spec["unset"]: how the invocation's environment
    # differs from the one this process has (a spare's is its helper's: only TMPDIR,
    # unless the function's configuration changed since).
    os.chdir(spec["code_dir"])
    for key in spec["unset"]:
        os.environ.pop(key, None)
    for key, value in spec["env"].items():
        if os.environ.get(key) != value:  # a spare has set its TMPDIR already
            os.environ[key] = value
    if log_fd < 0:
        try:
            os.mkdir(os.environ["TMPDIR"], 0o700)
        except FileExistsError:
            pass
        log_fd = os.open(spec["log_path"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(log_fd, spec["start_line"].encode())
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    import tempfile
    tempfile.tempdir = None
    invoke(spec, chan, handler)

def rehearse():
    # Run the invocation path's Python once on a dummy spec, in a spare, in idle time: the
    # pages it writes (reference counts, specialised bytecode) are copied now, not when a
    # burst starts.
    spec = {"name": "x", "version": "1", "memory": 128, "request_id": "x", "arn": "x",
            "deadline": time.time(), "code_dir": ".", "handler": "a.b", "event": "{}",
            "env": {"TMPDIR": "x"}, "unset": [], "log_path": "x", "start_line": "x"}
    spec = json.loads(json.dumps(spec).encode() + b"\n")
    json.loads(spec["event"].encode("utf-8", "surrogateescape"))
    Context(spec).get_remaining_time_in_millis()
    json.dumps({"ok": True, "result": {}}, default=str).encode()

def spare(chan, tmp, log, handler):
    os.mkdir(tmp, 0o700)
    os.environ["TMPDIR"] = tmp  # in idle time: adding a variable costs 0.1 ms in a fresh fork
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    rehearse()
    spec = read_line(chan)
    if spec is None:  # the runner is gone before handing us an invocation: exit unused
        os.rmdir(tmp)
        os.unlink(log)
        return
    policy("SCHED_OTHER")  # the invocation runs under the normal policy
    child(spec, chan, handler, fd)

def serve(sock_fd, code_dir, handler_name, pool_size, tmp_root, log_dir):
    import array, select, signal, socket
    # SCHED_BATCH, inherited by the spares: a process woken by a message from the runner
    # does not preempt the runner's thread (it takes a free core, or waits its turn), so a
    # burst of hand-overs is not interrupted by each spare it wakes.
    policy("SCHED_BATCH")
    sock = socket.socket(fileno=sock_fd)
    sys.path.insert(0, code_dir)
    try:
        import boto3  # noqa: F401  (what makes a cold start slow; done once here)
    except ImportError:
        pass
    try:
        handler = load({"code_dir": code_dir, "handler": handler_name})
    except Exception:
        handler = None  # reported per invocation by the child's own import attempt
    def reap(signum, frame):
        while True:
            try:
                done, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if done == 0:
                return

    signal.signal(signal.SIGCHLD, reap)
    # Move everything imported so far out of the collector's reach: a child's collections
    # then never walk (and copy-on-write fault in) the pages of boto3's objects.
    import gc
    gc.collect()
    gc.freeze()
    forked = 0

    def placeholders(pid):
        # A spare's TMPDIR and log, named by pid and count: never reused.
        name = "%s%d-%d" % (PREFIX, pid, forked)
        return os.path.join(tmp_root, name), os.path.join(log_dir, name + ".log")

    def fork_spare():
        # The other end of the spare's channel goes to the runner, which hands the spare
        # its invocation itself.
        nonlocal forked
        forked += 1
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                sock.close()
                theirs.close()
                # A process group of its own (killed whole at the end), in the helper's
                # session: so, with autogroup scheduling, all invocations together share
                # the CPU fairly with the emulator, rather than each as much as it.
                os.setpgid(0, 0)
                spare(ours.detach(), *placeholders(os.getpid()), handler)
            finally:
                os._exit(0)
        ours.close()
        tmp, log = placeholders(pid)
        line = json.dumps({"spare": pid, "tmp": tmp, "log": log}).encode() + b"\n"
        sock.sendmsg([line], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                               array.array("i", [theirs.fileno()]))])
        theirs.close()

    idle = 0  # spares announced to the runner and not yet reported taken
    need = 0  # invocations the runner has waiting for a spare
    quiet = 0.0  # no lazy refill before this time
    poller = select.poll()  # not select(): the socket's descriptor may be above 1024
    poller.register(sock, select.POLLIN)
    buf = b""
    while True:
        while b"\n" not in buf:
            free = idle - need  # spares no waiting invocation will take
            if free < pool_size:
                urgent = free < pool_size // 4  # also when invocations wait (free < 0)
                wait = 0.0 if urgent else max(0.0, quiet - time.monotonic())
                if not poller.poll(wait * 1000):
                    if urgent or time.monotonic() >= quiet:
                        fork_spare()
                        idle += 1
                    continue
            data = sock.recv(65536)
            if not data:
                return
            buf += data
        line, _, buf = buf.partition(b"\n")
        news = json.loads(line)  # {"taken": SPARES_USED, "need": INVOCATIONS_WAITING}
        idle -= news.get("taken", 0)
        need = news.get("need", need)
        quiet = time.monotonic() + 0.1

if __name__ == "__main__":
    if sys.argv[1] == "spawn":
        chan = int(sys.argv[2])
        child(read_line(chan), chan)
    else:
        serve(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6],
              sys.argv[7])
'''.replace("PREFIX", repr(SPARE_PREFIX))


@dataclass(frozen=True)
class Code:
    """What the runner needs to know of a function."""

    name: str
    version: str
    arn: str
    code_dir: str
    handler: str
    memory: int
    timeout: float
    environment: dict[str, str] = field(default_factory=dict)
    sha: str = ""


@dataclass
class Result:
    """How an invocation ended."""

    ok: bool
    payload: Any = None
    error: dict[str, Any] | None = None
    log_path: str = ""
    duration: float = 0.0
    pid: int = 0

    def log_tail(self, limit: int = 4096) -> bytes:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - limit))
                return f.read()
        except OSError:
            return b""


@dataclass(eq=False)
class _Invocation:
    """One invocation between its launch and its end (owned by the watcher once started)."""

    code: Code
    request_id: str
    started: float
    spec: dict[str, Any]
    log_path: Path  # its final name
    on_done: Callable[[Result], None]
    tmpdir: str = ""
    log_temp: str = ""  # a spare's placeholder log, renamed at the end
    pid: int = 0
    chan: socket.socket | None = None
    proc: subprocess.Popen[bytes] | None = None  # plain spawn only
    pidfd: int = -1
    out: list[bytes] = field(default_factory=list)  # what the channel brought
    error: dict[str, Any] | None = None  # set: it ended (or never started) this way


@dataclass
class _Spare:
    pid: int
    chan: socket.socket
    tmp: str
    log: str


class _ForkServer:
    """One helper process for one function version, and the spares it forks.

    The runner takes the oldest idle spare for each invocation (:meth:`start`) and writes
    the invocation into its channel. With none idle, the invocation waits for the next spare
    announced, which the reader thread hands it. The helper forks by what it is told:
    ``{"taken": SPARES_USED, "need": INVOCATIONS_WAITING}`` (batched while a burst starts,
    see :meth:`_tell`).
    """

    def __init__(
        self, code: Code, env: dict[str, str], spares: int, tmp_root: str, log_dir: Path,
        started: Callable[[_Invocation], None],
    ) -> None:
        parent, child = socket.socketpair()
        self.sock = parent
        self.env = env
        self._started = started  # hands a started (or failed) invocation to the watcher
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._idle: deque[_Spare] = deque()
        self._waiting: deque[_Invocation] = deque()
        self._pool = spares
        self._untold = 0  # spares taken and not yet reported to the helper
        self._told_need = 0  # the number waiting, as last reported
        self._eof = False
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-c", BOOTSTRAP, "serve", str(child.fileno()),
                 code.code_dir, code.handler, str(spares), tmp_root, str(log_dir)],
                pass_fds=(child.fileno(),),
                cwd=code.code_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self._reader = threading.Thread(target=self._read, name="mu-fork-server-reader",
                                        daemon=True)
        self._reader.start()

    def changes(self, env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
        """How ``env`` differs from the helper's (which its spares inherit): what to set,
        what to unset. Setting 30 variables in a fresh fork costs about 0.5 ms."""
        return ({k: v for k, v in env.items() if self.env.get(k) != v},
                [k for k in self.env if k not in env])

    def gone(self) -> bool:
        """Whether the helper has exited (its socket is closed: no call per launch)."""
        return self._eof and self.proc.poll() is not None

    def retire(self) -> bool:
        """Take no more invocations, unless some wait here for a spare (stopping it would
        fail them): whether it was retired. A :meth:`start` that comes after returns False,
        so its caller asks for another fork server."""
        with self._lock:
            if self._waiting:
                return False
            self._eof = True
            return True

    def start(self, inv: _Invocation) -> bool:
        """Hand ``inv`` to an idle spare, or keep it until one is announced; False (and
        ``inv`` untouched) if the helper has gone (stopped meanwhile to make room)."""
        taken = 0
        while True:
            with self._lock:
                if self._eof:
                    if not taken:
                        return False
                    inv.error = _error("the fork server exited", "Runtime.StartError")
                    break
                if not self._idle:
                    self._waiting.append(inv)
                    need = len(self._waiting)
                    break
                spare = self._idle.popleft()
            taken += 1
            if self._hand_over(spare, inv):
                with self._lock:
                    need = len(self._waiting)
                break
        if inv.error is not None:
            self._started(inv)
        else:
            self._tell(taken, need)
        return True

    def _hand_over(self, spare: _Spare, inv: _Invocation) -> bool:
        """Write ``inv`` into ``spare``'s channel; False if that spare has died."""
        inv.spec["env"]["TMPDIR"] = spare.tmp
        try:
            spare.chan.sendall(json.dumps(inv.spec).encode() + b"\n")
        except OSError:
            spare.chan.close()
            return False
        inv.pid, inv.chan, inv.tmpdir, inv.log_temp = spare.pid, spare.chan, spare.tmp, spare.log
        self._started(inv)
        return True

    def _tell(self, taken: int, need: int, flush: bool = False) -> None:
        """Report ``taken`` more spares used and ``need`` invocations waiting. While a burst
        starts, the counts are sent in batches (each message wakes the helper, which shares
        the CPU with the spares starting): when the number waiting changes, every
        ``_TELL_EVERY`` spares, at each one once a quarter of the spares or fewer is left
        (the helper then forks at once), and at the end (:meth:`flush`)."""
        with self._send_lock:
            self._untold += taken
            if not (flush or need != self._told_need or self._untold >= _TELL_EVERY
                    or len(self._idle) <= self._pool // 4):
                return
            if not self._untold and need == self._told_need:
                return
            message = b'{"taken": %d, "need": %d}\n' % (self._untold, need)
            self._untold, self._told_need = 0, need
            with contextlib.suppress(OSError):
                self.sock.sendall(message)

    def flush(self) -> None:
        """Send the counts held back (a burst is over)."""
        self._tell(0, len(self._waiting), flush=True)

    def _read(self) -> None:
        buf = b""
        fds: deque[int] = deque()  # spares' channels, in the order their lines come
        try:
            while True:
                data, got, _, _ = socket.recv_fds(self.sock, 65536, 64, _CLOEXEC)
                fds.extend(got)
                if not data:
                    return
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    news = json.loads(line)
                    if not fds:  # its channel did not arrive (out of descriptors)
                        self._tell(1, len(self._waiting))  # the spare reads EOF and exits
                        continue
                    spare = _Spare(int(news["spare"]), socket.socket(fileno=fds.popleft()),
                                   news["tmp"], news["log"])
                    with self._lock:
                        inv = self._waiting.popleft() if self._waiting else None
                        if inv is None:
                            self._idle.append(spare)
                            continue
                    if self._hand_over(spare, inv):
                        self._tell(1, len(self._waiting))
                    else:
                        self._tell(1, len(self._waiting) + 1)
                        with self._lock:
                            self._waiting.appendleft(inv)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._eof = True
                waiting, self._waiting = list(self._waiting), deque()
                idle, self._idle = list(self._idle), deque()
            for inv in waiting:
                inv.error = _error("the fork server exited", "Runtime.StartError")
                self._started(inv)
            for spare in idle:
                spare.chan.close()  # a spare still alive reads end-of-file and exits unused
            for fd in fds:
                os.close(fd)

    def close(self, kill_children: bool = False) -> None:
        """Stop the helper; with ``kill_children``, also every process it forked.

        Its children are not in its process group (each has a group of its own), and once
        it is dead they belong to init and cannot be found; so it is frozen first (no more forks),
        its children's groups are killed, and only then the helper itself. Without
        ``kill_children`` (code updated or deleted) running invocations finish under the
        watcher; idle spares exit on their own.
        """
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader
        if kill_children:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGSTOP)
                for pid in _children(self.proc.pid):
                    _kill_group(pid)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        self._reader.join()
        self.sock.close()


class _Watcher:
    """The one thread that waits for every started invocation and ends it.

    Started invocations come in through :meth:`add` (any thread); the thread polls their
    pidfds and channels, a wake-up pipe, the deadline heap and the memory tick.
    """

    def __init__(self, end: Callable[[_Invocation], None], quiet: Callable[[], None]) -> None:
        self._end = end  # finishes one invocation: files, Result, on_done
        self._quiet = quiet  # called once what a burst left has been handled
        self._inbox: deque[_Invocation] = deque()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._woken = False  # a wake-up byte is on its way: adders need not write another
        self._selector = selectors.DefaultSelector()  # epoll: the cost is per ready descriptor
        self._selector.register(self._wake_r, selectors.EVENT_READ)  # its data: None
        self.running: dict[str, _Invocation] = {}  # request id -> invocation
        self._deadlines: list[tuple[float, int, _Invocation]] = []
        self._turns: deque[_Invocation] = deque()  # running ones, in the order of checks
        self._order = itertools.count()
        self._ended: deque[tuple[float, _Invocation]] = deque()  # (when, what), to be ended
        self._last_add = 0.0  # when an invocation last started
        self._inbox_since = math.inf  # when the oldest invocation not yet watched started
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="mu-emulator-watcher",
                                        daemon=True)
        self._thread.start()

    def add(self, inv: _Invocation) -> None:
        self._last_add = time.monotonic()
        if not self._inbox:
            self._inbox_since = self._last_add
        self._inbox.append(inv)
        if not self._woken:
            self._woken = True
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"x")

    def kill(self, which: Callable[[_Invocation], bool], error: dict[str, Any]) -> None:
        """Kill the started invocations ``which`` selects; each ends with ``error``
        (called from any thread: the watcher finds them ended by their pidfd or tick)."""
        for inv in list(self.running.values()) + list(self._inbox):
            if which(inv) and inv.pid and inv.error is None:
                inv.error = error
                _kill_group(inv.pid)

    def stop(self) -> None:
        """Return once every invocation added so far has ended (the caller killed them)."""
        self._stopping = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")
        self._thread.join(timeout=60)
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _loop(self) -> None:
        # SCHED_BATCH for this thread only: woken by an end or a start, it does not preempt
        # the threads starting invocations (it waits for its turn).
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        next_tick = time.monotonic() + _POLL
        while not (self._stopping and not self.running and not self._inbox and not self._ended):
            timeout: float | None = None
            if self.running:
                timeout = next_tick - time.monotonic()
                if self._deadlines:
                    timeout = min(timeout, self._deadlines[0][0] - time.time())
            if self._ended or self._inbox:
                timeout = min(timeout if timeout is not None else _SETTLE, _SETTLE)
            for key, _ in self._selector.select(None if timeout is None else max(0.0, timeout)):
                fd, inv = key.fd, key.data  # a pidfd or a channel, and its invocation
                if inv is None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    # Only now, with no byte left: an add from here on writes one again.
                    # (Reset before the read, an add in between had its byte read with
                    # the others and the flag stayed set: the next add woke nobody.) An
                    # add that saw the flag still set is in the inbox, seen below.
                    self._woken = False
                    continue
                if not self._is_running(inv):
                    continue  # ended by an earlier event of this same batch
                if fd == inv.pidfd:
                    self._finish(inv)
                elif not self._drain(inv):
                    self._selector.unregister(fd)  # end-of-file: it may still be running
            now = time.time()
            while self._deadlines and self._deadlines[0][0] <= now:
                _, _, inv = heapq.heappop(self._deadlines)
                if self._is_running(inv):
                    _kill_group(inv.pid)
                    self._drain(inv)
                    if not _outcome(inv.out):  # an outcome complete by the deadline counts
                        inv.error = _error(
                            f"Task timed out after {inv.code.timeout:.2f} seconds",
                            "Sandbox.Timedout")
                    self._finish(inv)
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + _POLL
                self._tick()
            self._settle()

    def _settle(self) -> None:
        """Watch the invocations started and end those ended, unless invocations are
        starting: while a burst starts, this work (for each new one a pidfd and two
        registrations; for each ended one its log, TMPDIR and the caller's ``on_done``)
        waits, up to ``_SETTLE_MAX``, so that it does not compete with the starts. An
        invocation that ends before it is watched is found ended when it is."""
        now = time.monotonic()
        oldest = min(self._ended[0][0] if self._ended else now, self._inbox_since)
        if now - self._last_add < _SETTLE and not self._stopping and now - oldest < _SETTLE_MAX:
            return
        if not self._inbox and not self._ended:
            return
        while self._inbox:
            self._watch(self._inbox.popleft())
        self._inbox_since = math.inf
        while self._ended:
            self._end(self._ended.popleft()[1])
        self._quiet()

    def _watch(self, inv: _Invocation) -> None:
        if inv.error is not None or not inv.pid:
            self._ended.append((time.monotonic(), inv))
            return
        self.running[inv.request_id] = inv
        if inv.chan is not None:
            self._selector.register(inv.chan.fileno(), selectors.EVENT_READ, inv)
        try:
            inv.pidfd = os.pidfd_open(inv.pid)
        except ProcessLookupError:
            self._finish(inv)  # it has ended already
            return
        except (AttributeError, OSError):
            pass  # no pidfd here: the memory tick checks that it still runs
        else:
            self._selector.register(inv.pidfd, selectors.EVENT_READ, inv)
        heapq.heappush(self._deadlines, (inv.started + inv.code.timeout, next(self._order), inv))
        self._turns.append(inv)

    def _tick(self) -> None:
        """Memory limits, and (without pidfds) whether an invocation still runs: up to
        ``_CHECKS`` invocations per tick, in turn, so that a tick costs the same with a
        thousand running (each is then checked every few tenths of a second)."""
        young = time.time() - _POLL
        for _ in range(min(_CHECKS, len(self._turns))):
            inv = self._turns.popleft()
            if not self._is_running(inv):
                continue  # it has ended
            self._turns.append(inv)
            if inv.started > young:
                continue  # checked from its second tick: a burst of short ones costs nothing
            if inv.pidfd < 0 and not _alive(inv.pid):
                self._finish(inv)
            elif _tree_rss(inv.pid) > inv.code.memory * 1024 * 1024:
                _kill_group(inv.pid)
                inv.error = _error(
                    f"Runtime exited with error: signal: killed (memory {inv.code.memory} MB "
                    "exceeded)", "Runtime.OutOfMemory")
                self._finish(inv)

    def _is_running(self, inv: _Invocation) -> bool:
        """Whether ``inv`` is watched and has not ended (a retry reuses its request id)."""
        return self.running.get(inv.request_id) is inv

    def _drain(self, inv: _Invocation) -> bool:
        """Read what the channel holds now; False at end-of-file."""
        if inv.chan is None:
            return False
        while True:
            try:
                data = inv.chan.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            inv.out.append(data)

    def _finish(self, inv: _Invocation) -> None:
        """The process has ended (or was killed): collect its outcome and end it."""
        self._drain(inv)
        for fd in (inv.pidfd, inv.chan.fileno() if inv.chan is not None else -1):
            with contextlib.suppress(KeyError, ValueError):  # not (or no longer) watched
                self._selector.unregister(fd)
        if inv.pidfd >= 0:
            os.close(inv.pidfd)
            inv.pidfd = -1
        self.running.pop(inv.request_id, None)
        self._ended.append((time.monotonic(), inv))


class Runner:
    """Starts, watches and reaps invocations.

    Args:
        state_dir: where logs go (``logs/FUNCTION/REQUEST_ID.log``).
        s3_endpoint_url: what invocations get as ``AWS_ENDPOINT_URL_S3``.
        region: ``AWS_REGION`` of invocations.
        fork_server: start invocations through per-function fork servers.
        spares: idle children each fork server keeps forked ahead of demand.
        kept: idle processes kept in all: fork servers and their spares. Fork servers are
            kept for the functions invoked most recently, as many as fit (at least one);
            the one used least recently is stopped to make room (its running invocations
            go on). Default: two fork servers with their spares.

    Raises:
        ValueError: ``spares`` or ``kept`` is negative.
    """

    def __init__(
        self,
        state_dir: Path,
        s3_endpoint_url: str | None = None,
        region: str = "us-east-1",
        fork_server: bool = True,
        spares: int = SPARES,
        kept: int | None = None,
    ) -> None:
        if spares < 0:
            raise ValueError(f"spares {spares} is negative")
        if kept is None:
            kept = KEPT_SERVERS * (spares + 1)
        if kept < 0:
            raise ValueError(f"kept processes {kept} is negative")
        self.state_dir = state_dir
        self.spares = spares
        self.kept_servers = max(1, kept // (spares + 1))  # fork servers at most
        self.s3_endpoint_url = s3_endpoint_url
        self.region = region
        self.fork_server = fork_server
        # Fork servers by (function, code), the one used least recently first.
        self._servers: OrderedDict[tuple[str, str], _ForkServer] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False
        self._folders: set[Path] = set()  # folders known to exist
        self._tmp = tempfile.mkdtemp(prefix="mu-emulator-tmp-")  # removed by close()
        self._watcher = _Watcher(self._end, self._quiet)
        if fork_server and spares:
            _more_descriptors()  # this process holds a channel per spare

    def environment(self, code: Code, tmpdir: str) -> dict[str, str]:
        """The environment an invocation sees."""
        env = {k: os.environ[k] for k in _BASE_ENV if k in os.environ}
        env.update(
            AWS_LAMBDA_FUNCTION_NAME=code.name,
            AWS_LAMBDA_FUNCTION_VERSION=code.version,
            AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(code.memory),
            AWS_LAMBDA_LOG_GROUP_NAME=f"/aws/lambda/{code.name}",
            AWS_REGION=self.region,
            AWS_DEFAULT_REGION=self.region,
            AWS_EXECUTION_ENV="AWS_Lambda_python_emulated",
            LAMBDA_TASK_ROOT=code.code_dir,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_SESSION_TOKEN="testing",
            TMPDIR=tmpdir,
            PYTHONUNBUFFERED="1",
        )
        if self.s3_endpoint_url:
            env["AWS_ENDPOINT_URL_S3"] = self.s3_endpoint_url
        env.update(code.environment)
        return env

    def run(self, code: Code, payload: bytes, request_id: str) -> Result:
        """Run one invocation to its end (or its timeout) and return the outcome."""
        ended = threading.Event()
        results: list[Result] = []

        def done(result: Result) -> None:
            results.append(result)
            ended.set()

        self.launch(code, payload, request_id, done)
        ended.wait()
        return results[0]

    def launch(
        self, code: Code, payload: bytes, request_id: str, on_done: Callable[[Result], None]
    ) -> None:
        """Start one invocation and return at once; ``on_done(result)`` follows, always.

        ``on_done`` is called exactly once, from the watcher thread, never from within this
        call (so a caller may launch while holding a lock that ``on_done`` takes), except
        after :meth:`close`, when it is called at once with a "stopping" error.
        """
        log_path = self.state_dir / "logs" / code.name / f"{request_id}.log"
        if self._closed:
            on_done(Result(False, error=_error("the emulator is stopping", "Runtime.Stopped"),
                           log_path=str(log_path)))
            return
        # A plain spawn makes its TMPDIR (0700) in here; a spare brings its own.
        tmpdir = os.path.join(self._tmp, request_id)
        started = time.time()
        spec: dict[str, Any] = {
            "name": code.name, "version": code.version, "memory": code.memory,
            "request_id": request_id, "arn": code.arn, "deadline": started + code.timeout,
            "code_dir": code.code_dir, "handler": code.handler, "log_path": str(log_path),
            "env": {}, "unset": [],
            "start_line": f"START RequestId: {request_id} Version: {code.version}\n",
            "event": payload.decode("utf-8", "surrogateescape"),
        }
        env = self.environment(code, tmpdir)
        inv = _Invocation(code, request_id, started, spec, log_path, on_done, tmpdir)
        try:
            self._folder(log_path.parent)
            if self.fork_server:
                for _ in range(2):  # a fork server stopped meanwhile is replaced once
                    server = self._server_for(code, env)
                    spec["env"], spec["unset"] = server.changes(env)
                    if server.start(inv):
                        return
                raise OSError("the fork server exited")
            ours, theirs = socket.socketpair()
            inv.chan = ours  # closed at the end, even if the process does not start
            with theirs:
                inv.proc = subprocess.Popen(
                    [sys.executable, "-I", "-c", BOOTSTRAP, "spawn", str(theirs.fileno())],
                    cwd=code.code_dir, env=env, stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    pass_fds=(theirs.fileno(),), start_new_session=True,
                )
            inv.pid = inv.proc.pid
            with contextlib.suppress(OSError):  # it died at once: its exit status says more
                ours.sendall(json.dumps(spec).encode() + b"\n")
        except (OSError, ValueError, TypeError) as exc:
            # An environment that cannot start (a variable with a NUL byte, a non-string
            # value from a damaged configuration): this invocation fails, ``on_done`` follows.
            inv.error = _error(f"cannot start: {exc}", "Runtime.StartError")
        self._watcher.add(inv)

    def pids(self) -> dict[str, int]:
        """Running invocations: request id -> pid (the leader of its process group)."""
        return {rid: inv.pid for rid, inv in list(self._watcher.running.items())}

    def _end(self, inv: _Invocation) -> None:
        """In the watcher thread: clean up after ``inv`` and call its ``on_done``."""
        duration = time.time() - inv.started
        result = Result(False, error=inv.error)
        if inv.pid:
            _kill_group(inv.pid)  # whatever it left running
            if inv.proc is not None:
                inv.proc.wait()
            if inv.error is None:
                result = _outcome(inv.out) or Result(False, error=_error(
                    "Runtime exited without providing a reason (exit status "
                    f"{inv.proc.returncode if inv.proc is not None else 'unknown'})",
                    "Runtime.ExitError"))
        if inv.chan is not None:
            inv.chan.close()
        result.log_path, result.duration, result.pid = str(inv.log_path), duration, inv.pid
        try:
            if inv.log_temp:
                _settle_log(Path(inv.log_temp), inv.log_path)
            if inv.pid:
                with open(inv.log_path, "ab") as log:
                    log.write(
                        f"END RequestId: {inv.request_id}\nREPORT RequestId: {inv.request_id}"
                        f"\tDuration: {duration * 1000:.2f} ms\tMemory Size: {inv.code.memory} "
                        "MB\n".encode()
                    )
        except OSError:
            pass  # the state dir went away under us: the outcome still counts
        if inv.tmpdir:
            try:
                os.rmdir(inv.tmpdir)  # most handlers leave it empty: one call
            except OSError:
                shutil.rmtree(inv.tmpdir, ignore_errors=True)
        try:
            inv.on_done(result)
        except Exception:  # a bug in the caller must not stop the watcher
            traceback.print_exc()

    def _quiet(self) -> None:
        """In the watcher thread, after a burst: tell the helpers what they were not told."""
        with self._lock:
            servers = list(self._servers.values())
        for server in servers:
            server.flush()

    def _folder(self, path: Path) -> Path:
        """``path``, created the first time it is asked for."""
        if path not in self._folders:
            path.mkdir(parents=True, exist_ok=True)
            self._folders.add(path)
        return path

    def _server_for(self, code: Code, env: dict[str, str]) -> _ForkServer:
        key = (code.name, code.sha)
        doomed: list[_ForkServer] = []
        try:
            with self._lock:
                server = self._servers.get(key)
                if server is not None and server.gone():
                    doomed.append(self._servers.pop(key))
                    server = None
                if server is None:
                    server = _ForkServer(
                        code, {k: v for k, v in env.items() if k != "TMPDIR"}, self.spares,
                        self._tmp, self.state_dir / "logs" / code.name, self._watcher.add,
                    )
                    self._servers[key] = server
                self._servers.move_to_end(key)
                # Keep the cap by stopping those used least recently, but never one whose
                # invocations still wait for a spare: they would fail with it (the cap is
                # then exceeded until it is idle and a later start makes room).
                for other, old in list(self._servers.items()):
                    if len(self._servers) <= self.kept_servers:
                        break
                    if other != key and old.retire():
                        doomed.append(self._servers.pop(other))
                return server
        finally:
            for old in doomed:
                old.close()  # its running invocations go on under the watcher

    def forget(self, name: str, reason: str | None = None) -> None:
        """Stop the fork servers of function ``name`` (deleted or updated). With a
        ``reason`` (deleted), also kill its running invocations: each fails with it."""
        with self._lock:
            doomed = [k for k in self._servers if k[0] == name]
            servers = [self._servers.pop(k) for k in doomed]
        for server in servers:
            server.close()
        if reason is not None:
            self._watcher.kill(lambda inv: inv.code.name == name,
                               _error(reason, "Runtime.FunctionDeleted"))

    def close(self) -> None:
        """Kill every running invocation and stop the fork servers; every ``on_done`` has
        been called when this returns. A second call does nothing."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            servers = list(self._servers.values())
            self._servers.clear()
        for server in servers:
            server.close(kill_children=True)
        for pid in self.pids().values():
            _kill_group(pid)  # plain spawns, and anything a helper's freeze missed
        self._watcher.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)
        for folder in list(self._folders):
            for path in folder.glob(SPARE_PREFIX + "*"):
                with contextlib.suppress(OSError):
                    path.unlink()  # left by spares killed before they were used


def _outcome(out: list[bytes]) -> Result | None:
    """The outcome line an invocation wrote, if it wrote all of it."""
    data = b"".join(out)
    if not data.endswith(b"\n"):
        return None
    try:
        done = json.loads(data)
    except ValueError:
        return None
    if done.get("ok"):
        return Result(True, payload=done.get("result"))
    return Result(False, error={k: done.get(k) for k in ("errorMessage", "errorType",
                                                         "stackTrace")})


def _settle_log(temp: Path, final: Path) -> None:
    """Give a spare's log its final name, after an earlier attempt's log if there is one
    (the attempts of one request run one after another, never at once)."""
    if not final.exists():
        os.replace(temp, final)
        return
    with open(temp, "rb") as src, open(final, "ab") as dst:
        shutil.copyfileobj(src, dst)
    temp.unlink()


def _more_descriptors() -> None:
    """Raise this process's soft limit on open files to its hard limit, where allowed."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, OSError, ValueError):
        pass


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them."""
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue  # the thread or process ended meanwhile
    return kids


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants."""
    total, todo, page = 0, [pid], os.sysconf("SC_PAGE_SIZE")
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, ValueError):
            continue
        todo.extend(_children(p))
    return total


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"errorMessage": message, "errorType": kind}


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
