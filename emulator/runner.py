"""Running one invocation: a fresh process with a Lambda-like environment, bounded and reaped.

Theory of operation
-------------------
Each invocation gets its own process, its own process group, a private temporary directory
(``TMPDIR``, removed afterwards) and its own log file. The process runs a small bootstrap
(:data:`BOOTSTRAP`) that puts the function's unpacked code first on ``sys.path``, builds a
context object, calls the handler and writes the outcome as JSON to a result file. Two ways
to start that process, with identical results:

* **fork server** (default): one single-threaded helper process per function has already
  imported the Python runtime, boto3 and the handler's module; it forks a child per
  invocation, so a start costs milliseconds instead of re-importing boto3 (~0.3-0.5 s).
  While it has nothing to do it also forks up to ``spares`` idle children (``SPARES`` by
  default), each in its own session, blocked reading a pipe whose write end the helper
  passes to the emulator (``SCM_RIGHTS``) and closes. An invocation is handed by the
  emulator itself to the oldest spare (one pipe write, the pid already known), so a burst
  makes no round trip through the helper; only when no spare is left does the helper fork
  on demand. In idle time a spare also makes its ``TMPDIR`` and log file under placeholder
  names (renamed when its invocation comes: cheaper than creating them during a burst) and
  runs the invocation path's Python once on a dummy spec, so the pages it writes are
  copied before the burst. The helper refills only after requests have paused for 0.1 s
  (or when a quarter of the spares is left). A spare serves one invocation and exits, so
  every invocation still runs in a process nobody used before; spares whose emulator or
  helper goes away read end-of-file and exit unused. Once the handler has returned, the
  process drops to ``SCHED_IDLE`` to write its result and exit, so its teardown never
  competes with starts; a result complete by the deadline counts even if the exit was
  slow;
* **plain spawn**: ``python -I -c BOOTSTRAP`` per invocation.

Starting and waiting are separate (:meth:`Runner.launch`, then :meth:`Runner.finish`;
:meth:`Runner.run` does both). Launching through a fork server only writes one JSON line, to
a spare or (none left) to the helper; a reader thread per helper collects the spares it
announces and the pids it answers, so any number of launches can
be in flight without a round trip each. The watcher (the thread in ``finish``) waits for the
pid, then for the process (a pidfd, or ``Popen.wait`` for a spawn), and enforces the
function's ``Timeout`` and ``MemorySize`` (the resident size of the process tree, read from
``/proc``) by killing the whole process group, with Lambda's messages. When the invocation
ends, whatever it left running in its group is killed too, so nothing outlives an
invocation; :meth:`Runner.close` kills every invocation, spare and helper.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BOOTSTRAP", "Code", "Launched", "Result", "Runner"]

_POLL = 0.05  # seconds between watchdog checks (memory, deadline)
SPARES = 128  # idle pre-forked children per fork server (each costs about 2 MiB: page
# tables and the pages it has written; the rest is shared with the helper, copy-on-write)
_FORK_ANSWER = 60.0  # seconds to wait for a fork server's answer (it may be importing)
_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_BASE_ENV = ("PATH", "LANG", "LC_ALL", "HOME", "SSL_CERT_FILE", "SSL_CERT_DIR")

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

def invoke(spec, handler=None):
    try:
        if "event" in spec:  # fork server: the event came inline
            raw = spec["event"].encode("utf-8", "surrogateescape")
        else:
            with open(spec["event_path"], "rb") as f:
                raw = f.read()
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
    idle()  # the handler is done: writing its result and exiting can wait for idle CPU
    with open(spec["result_path"], "w") as f:
        json.dump(out, f, default=str)

def idle():
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.nice(19)
        except OSError:
            pass

def child(spec, handler=None, ready=None):
    # ready: (TMPDIR, log fd, log path) a spare made in idle time; renaming them costs
    # far less than creating a file and a folder while a burst of invocations starts.
    os.chdir(spec["code_dir"])
    os.environ.clear()
    os.environ.update(spec["env"])
    tmp, fd, log = ready or (None, -1, None)
    try:
        os.rename(tmp, spec["env"]["TMPDIR"])
    except (OSError, TypeError):
        if tmp:
            os.rmdir(tmp)
        try:
            os.mkdir(spec["env"]["TMPDIR"], 0o700)
        except FileExistsError:
            pass
    try:
        if os.path.exists(spec["log_path"]):
            raise FileExistsError  # an earlier attempt's log: append to it
        os.rename(log, spec["log_path"])
    except (OSError, TypeError):
        if fd >= 0:
            os.close(fd)
            os.unlink(log)
        fd = os.open(spec["log_path"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, spec["start_line"].encode())
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    import tempfile
    tempfile.tempdir = None
    invoke(spec, handler)

def rehearse():
    # Run the invocation path's Python once on a dummy spec, in a spare, in idle time: the
    # pages it writes (reference counts, specialised bytecode) are copied now, not when a
    # burst starts.
    import io
    spec = {"name": "x", "version": "1", "memory": 128, "request_id": "x", "arn": "x",
            "deadline": time.time(), "code_dir": ".", "handler": "a.b", "event": "{}",
            "env": dict(os.environ), "log_path": "x", "result_path": "x", "start_line": "x"}
    spec = json.loads(json.dumps(spec))
    json.loads(spec["event"].encode("utf-8", "surrogateescape"))
    Context(spec).get_remaining_time_in_millis()
    os.path.exists(spec["log_path"])
    json.dump({"ok": True, "result": {}}, io.StringIO(), default=str)

def serve(sock_fd, code_dir, handler_name, pool_size, tmp_root, work_dir):
    import array, select, signal, socket
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

    def become_invocation(spec_or_pipe):
        # In a new child: leave the server's signal handling and descriptors, start a session.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sock.close()
        os.setsid()
        if isinstance(spec_or_pipe, dict):
            child(spec_or_pipe, handler)
            return
        own = ".spare-%d" % os.getpid()
        tmp, log = os.path.join(tmp_root, own), os.path.join(work_dir, own + ".log")
        os.mkdir(tmp, 0o700)
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        rehearse()
        data = b""
        while not data.endswith(b"\n"):
            chunk = os.read(spec_or_pipe, 65536)
            if not chunk:  # the emulator is gone before handing us an invocation: exit unused
                os.rmdir(tmp)
                os.unlink(log)
                return
            data += chunk
        os.close(spec_or_pipe)
        child(json.loads(data), handler, (tmp, fd, log))

    def spare():
        # The write end of the spare's pipe goes to the emulator, which hands the spare its
        # invocation itself: no round trip through this process while a burst starts.
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(w)
                become_invocation(r)
            finally:
                os._exit(0)
        os.close(r)
        line = json.dumps({"spare": pid}).encode() + b"\n"
        sock.sendmsg([line], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))])
        os.close(w)

    spares = 0  # announced to the emulator and not yet reported taken
    quiet = 0.0  # no refill before this time, unless few spares are left
    poller = select.poll()  # not select(): the socket's descriptor may be above 1024
    poller.register(sock, select.POLLIN)
    buf = b""
    while True:
        while b"\n" not in buf:
            # Refill the spares one fork at a time, once requests have paused for a moment
            # (or when few are left), so that refilling does not compete with a burst.
            if spares < pool_size:
                wait = 0.0 if spares < pool_size // 4 else max(0.0, quiet - time.monotonic())
                if not poller.poll(wait * 1000):
                    if wait == 0.0 or time.monotonic() >= quiet:
                        spare()
                        spares += 1
                    continue
            data = sock.recv(65536)
            if not data:
                return
            buf += data
        line, _, buf = buf.partition(b"\n")
        quiet = time.monotonic() + 0.1
        spec = json.loads(line)
        if "taken" in spec:  # the emulator used (or found dead) spares of ours
            spares -= spec["taken"]
            continue
        pid = os.fork()  # no spare was left: fork on demand
        if pid == 0:
            try:
                become_invocation(spec)
            finally:
                os._exit(0)
        sock.sendall(json.dumps({"id": spec["request_id"], "pid": pid}).encode() + b"\n")

if __name__ == "__main__":
    if sys.argv[1] == "spawn":
        child(json.loads(sys.argv[2]))
    else:
        serve(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6],
              sys.argv[7])
'''


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


@dataclass
class Launched:
    """An invocation started by :meth:`Runner.launch`, to be passed to :meth:`Runner.finish`."""

    code: Code
    request_id: str
    started: float
    log_path: Path
    tmpdir: str
    event_path: Path
    result_path: Path
    pid: int = 0  # 0: it did not start (see ``error``)
    proc: subprocess.Popen[bytes] | None = None  # plain spawn only
    pending: Callable[[], int] | None = None  # fork server: waits for the child's pid
    error: dict[str, Any] | None = None


class _ForkServer:
    """One helper process for one function version; forks a child per invocation.

    Requests are pipelined: any number of invocation threads write their spec (one JSON line)
    under a short send lock, and the helper forks for each line as soon as it reads it,
    without waiting for anyone. Its answers (``{"id": REQUEST_ID, "pid": PID}``) are read by
    one reader thread, which hands each pid to the thread waiting for that request id. So a
    burst of invocations costs one fork each in the helper, not one round trip each.
    """

    def __init__(
        self, code: Code, env: dict[str, str], spares: int, tmp_root: str, work_dir: Path
    ) -> None:
        parent, child = socket.socketpair()
        self.sock = parent
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._waiting: dict[str, list[Any]] = {}  # request id -> [Event, pid or None]
        self._idle: deque[tuple[int, int]] = deque()  # spares: (pid, write end of its pipe)
        self._eof = False
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", BOOTSTRAP, "serve", str(child.fileno()),
             code.code_dir, code.handler, str(spares), tmp_root, str(work_dir)],
            pass_fds=(child.fileno(),),
            cwd=code.code_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        child.close()
        self._reader = threading.Thread(target=self._read, name="mu-fork-server-reader",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buf = b""
        fds: deque[int] = deque()  # spares' pipes, in the order their lines come
        try:
            while True:
                data, got, _, _ = socket.recv_fds(self.sock, 65536, 64, _CLOEXEC)
                fds.extend(got)
                if not data:
                    return
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    answer = json.loads(line)
                    if "spare" in answer:
                        if not fds:  # its pipe did not arrive (out of descriptors)
                            self._taken(1)  # the spare reads end-of-file and exits
                            continue
                        with self._lock:
                            self._idle.append((int(answer["spare"]), fds.popleft()))
                        continue
                    with self._lock:
                        slot = self._waiting.pop(answer["id"], None)
                    if slot is not None:
                        slot[1] = int(answer["pid"])
                        slot[0].set()
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._eof = True
                slots = list(self._waiting.values())
                self._waiting.clear()
            for slot in slots:
                slot[0].set()  # pid stays None: the helper is gone
            for fd in fds:
                os.close(fd)

    def start(self, spec: dict[str, Any]) -> int:
        """Have the helper fork a child for ``spec``; the child's pid.

        Raises:
            OSError: the helper is gone or did not answer within ``_FORK_ANSWER`` seconds.
        """
        return self.wait(self.submit(spec), spec["request_id"])

    def submit(self, spec: dict[str, Any]) -> list[Any]:
        """Send ``spec`` to the helper without waiting for its answer; a slot for :meth:`wait`.

        Raises:
            OSError: the helper is gone.
        """
        slot: list[Any] = [threading.Event(), None]
        line = json.dumps(spec).encode() + b"\n"
        pid = self._hand_over(line)
        if pid:
            slot[0].set()
            slot[1] = pid
            return slot
        with self._lock:
            if self._eof:
                raise OSError("fork server exited")
            self._waiting[spec["request_id"]] = slot
        with self._send_lock:
            self.sock.sendall(line)
        return slot

    def _hand_over(self, line: bytes) -> int:
        """Give ``line`` to the oldest idle spare; its pid, or 0 if none was left."""
        taken = pid = 0
        while not pid:
            with self._lock:
                if not self._idle:
                    break
                pid, fd = self._idle.popleft()
            taken += 1
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
            except OSError:
                pid = 0  # that spare died: try the next one
            finally:
                os.close(fd)
        if taken:
            self._taken(taken)
        return pid

    def _taken(self, count: int) -> None:
        """Tell the helper ``count`` of its spares are gone, so that it forks new ones."""
        with contextlib.suppress(OSError), self._send_lock:
            self.sock.sendall(b'{"taken": %d}\n' % count)

    def wait(self, slot: list[Any], request_id: str) -> int:
        """The pid the helper answered for a submitted spec.

        Raises:
            OSError: the helper is gone or did not answer within ``_FORK_ANSWER`` seconds.
        """
        if not slot[0].wait(_FORK_ANSWER) or slot[1] is None:
            with self._lock:
                self._waiting.pop(request_id, None)
            raise OSError("fork server exited or did not answer")
        return int(slot[1])

    def close(self, kill_children: bool = False) -> None:
        """Stop the helper; with ``kill_children``, also every process it forked.

        Its children are not in its process group (each starts a session), and once it is
        dead they belong to init and cannot be found; so it is frozen first (no more forks),
        its children's groups are killed, and only then the helper itself. Without
        ``kill_children`` (code updated or deleted) running invocations finish under their
        watchers; idle spares exit on their own.
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
        with self._lock:
            idle, self._idle = list(self._idle), deque()
        for _, fd in idle:
            os.close(fd)  # an idle spare still alive reads end-of-file and exits unused


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


class Runner:
    """Starts, watches and reaps invocations.

    Args:
        state_dir: where logs and per-invocation control files go.
        s3_endpoint_url: what invocations get as ``AWS_ENDPOINT_URL_S3``.
        region: ``AWS_REGION`` of invocations.
        fork_server: start invocations through per-function fork servers.
        spares: idle children each fork server keeps forked ahead of demand.
    """

    def __init__(
        self,
        state_dir: Path,
        s3_endpoint_url: str | None = None,
        region: str = "us-east-1",
        fork_server: bool = True,
        spares: int = SPARES,
    ) -> None:
        self.state_dir = state_dir
        self.spares = spares
        self.s3_endpoint_url = s3_endpoint_url
        self.region = region
        self.fork_server = fork_server
        self._servers: dict[tuple[str, str], _ForkServer] = {}
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}  # request id -> pid (process group leader)
        self._closed = False
        self._folders: set[Path] = set()  # folders known to exist
        self._tmp: str | None = None
        if fork_server and spares:
            _more_descriptors()  # this process holds a pipe per spare

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
        return self.finish(self.launch(code, payload, request_id))

    def launch(self, code: Code, payload: bytes, request_id: str) -> Launched:
        """Start one invocation and return at once; :meth:`finish` must follow, always.

        Starting is cheap with a fork server (a message to it), so a caller may start an
        invocation in a thread that has other work, and wait for it in another.
        """
        work = self._folder(self.state_dir / "invocations")
        log_path = self._folder(self.state_dir / "logs" / code.name) / f"{request_id}.log"
        # The invocation's process creates its TMPDIR (0700) inside this runner's private one.
        tmpdir = os.path.join(self._tmp_root(), request_id)
        # A retried event reuses its request id: each attempt rewrites these two files.
        launched = Launched(
            code=code, request_id=request_id, started=time.time(), log_path=log_path,
            tmpdir=tmpdir, event_path=work / f"{request_id}.event.json",
            result_path=work / f"{request_id}.result.json",
        )
        if self._closed:
            launched.error = _error("the emulator is stopping", "Runtime.Stopped")
            return launched
        with contextlib.suppress(FileNotFoundError):
            launched.result_path.unlink()
        env = self.environment(code, tmpdir)
        spec: dict[str, Any] = {
            "name": code.name, "version": code.version, "memory": code.memory,
            "request_id": request_id, "arn": code.arn,
            "deadline": launched.started + code.timeout,
            "code_dir": code.code_dir, "handler": code.handler,
            "event_path": str(launched.event_path), "result_path": str(launched.result_path),
            "log_path": str(log_path), "env": env,
            "start_line": f"START RequestId: {request_id} Version: {code.version}\n",
        }
        try:
            if self.fork_server:
                # One message, no file: the helper's pipe carries the event to the child.
                spec["event"] = payload.decode("utf-8", "surrogateescape")
                # Only send here; finish() waits for the pid, so a caller that launches
                # several invocations in a row never waits on the helper in between.
                server = self._server_for(code, env)
                launched.pending = functools.partial(server.wait, server.submit(spec), request_id)
            else:
                launched.event_path.write_bytes(payload)  # a command line cannot carry 6 MB
                launched.proc = subprocess.Popen(
                    [sys.executable, "-I", "-c", BOOTSTRAP, "spawn", json.dumps(spec)],
                    cwd=code.code_dir, env=env, stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                launched.pid = launched.proc.pid
        except OSError as exc:
            launched.error = _error(f"cannot start: {exc}", "Runtime.StartError")
            return launched
        if launched.proc is not None:
            self._started(launched)
        return launched

    def _started(self, launched: Launched) -> None:
        """Record a running invocation, so that close() can kill it."""
        with self._lock:
            self._running[launched.request_id] = launched.pid
            closing = self._closed
        if closing:
            _kill_group(launched.pid)

    def finish(self, launched: Launched) -> Result:
        """Wait for a launched invocation (enforcing its limits), clean up, and report."""
        code, request_id, proc = launched.code, launched.request_id, launched.proc
        try:
            if launched.pending is not None:
                try:
                    launched.pid = launched.pending()
                except OSError as exc:
                    launched.error = _error(f"cannot start: {exc}", "Runtime.StartError")
                else:
                    self._started(launched)
            if launched.pid == 0:  # it never started
                return Result(False, error=launched.error, log_path=str(launched.log_path))
            error = self._watch(launched.pid, proc, code, launched.started, launched.result_path)
            duration = time.time() - launched.started
            result = self._outcome(launched.result_path, error, launched.pid, proc)
            result.log_path, result.duration = str(launched.log_path), duration
            result.pid = launched.pid
            with open(launched.log_path, "ab") as log:
                log.write(
                    f"END RequestId: {request_id}\nREPORT RequestId: {request_id}\t"
                    f"Duration: {duration * 1000:.2f} ms\tMemory Size: {code.memory} MB\n"
                    .encode()
                )
            return result
        finally:
            with self._lock:
                pid_left = self._running.pop(request_id, None)
            if pid_left:
                _kill_group(pid_left)
            if proc is not None:
                proc.wait()
            shutil.rmtree(launched.tmpdir, ignore_errors=True)
            for path in (launched.event_path, launched.result_path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _tmp_root(self) -> str:
        """This runner's private temporary folder (0700), made once, removed by close()."""
        with self._lock:
            if self._tmp is None:
                self._tmp = tempfile.mkdtemp(prefix="mu-emulator-tmp-")
            return self._tmp

    def _folder(self, path: Path) -> Path:
        """``path``, created the first time it is asked for."""
        if path not in self._folders:
            path.mkdir(parents=True, exist_ok=True)
            self._folders.add(path)
        return path

    def _watch(
        self, pid: int, proc: subprocess.Popen[bytes] | None, code: Code, started: float,
        result_path: Path,
    ) -> dict[str, Any] | None:
        limit = code.memory * 1024 * 1024
        deadline = started + code.timeout
        while True:
            if proc is not None:
                try:
                    proc.wait(timeout=_POLL)
                    return None
                except subprocess.TimeoutExpired:
                    pass
            else:
                if not _alive(pid):
                    return None
                self._sleep_on_pid(pid)
            now = time.time()
            if now >= deadline:
                _kill_group(pid)
                if _complete(result_path):
                    return None  # the handler returned in time; its exit was slow (idle CPU)
                return _error(f"Task timed out after {code.timeout:.2f} seconds", "Sandbox.Timedout")
            if _tree_rss(pid) > limit:
                _kill_group(pid)
                return _error(
                    f"Runtime exited with error: signal: killed (memory {code.memory} MB "
                    "exceeded)", "Runtime.OutOfMemory"
                )

    @staticmethod
    def _sleep_on_pid(pid: int) -> None:
        """Wait up to one poll interval for ``pid`` to end (pidfd where available)."""
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            time.sleep(_POLL)  # no pidfd: a bounded watchdog tick
            return
        try:
            import select

            poller = select.poll()  # not select(): descriptors may well be above 1024
            poller.register(fd, select.POLLIN)
            poller.poll(_POLL * 1000)
        finally:
            os.close(fd)

    @staticmethod
    def _outcome(
        result_path: Path, error: dict[str, Any] | None, pid: int,
        proc: subprocess.Popen[bytes] | None,
    ) -> Result:
        if error is not None:
            return Result(False, error=error)
        try:
            out = json.loads(result_path.read_text())
        except (OSError, ValueError):
            code = proc.returncode if proc is not None else "unknown"
            return Result(False, error=_error(
                f"Runtime exited without providing a reason (exit status {code})",
                "Runtime.ExitError"))
        if out.get("ok"):
            return Result(True, payload=out.get("result"))
        return Result(False, error={k: out.get(k) for k in ("errorMessage", "errorType", "stackTrace")})

    def _server_for(self, code: Code, env: dict[str, str]) -> _ForkServer:
        key = (code.name, code.sha)
        tmp_root = self._tmp_root()
        with self._lock:
            server = self._servers.get(key)
            if server is None or server.proc.poll() is not None:
                if server is not None:
                    server.close()
                server = _ForkServer(
                    code, {k: v for k, v in env.items() if k != "TMPDIR"}, self.spares,
                    tmp_root, self.state_dir / "invocations",
                )
                self._servers[key] = server
            return server

    def forget(self, name: str) -> None:
        """Stop the fork servers of function ``name`` (deleted or updated)."""
        with self._lock:
            doomed = [k for k in self._servers if k[0] == name]
            servers = [self._servers.pop(k) for k in doomed]
        for server in servers:
            server.close()

    def close(self) -> None:
        """Kill every running invocation and stop the fork servers."""
        self._closed = True
        with self._lock:
            pids = list(self._running.values())
            servers = list(self._servers.values())
            self._servers.clear()
        for pid in pids:
            _kill_group(pid)
        for server in servers:
            server.close(kill_children=True)
        with self._lock:
            tmp, self._tmp = self._tmp, None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for path in (self.state_dir / "invocations").glob(".spare-*"):
            with contextlib.suppress(OSError):
                path.unlink()  # left by spares killed before they were used


def _more_descriptors() -> None:
    """Raise this process's soft limit on open files to its hard limit, where allowed."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, OSError, ValueError):
        pass


def _complete(result_path: Path) -> bool:
    """Whether the invocation wrote its whole result (it ran at idle priority meanwhile)."""
    try:
        json.loads(result_path.read_bytes())
    except (OSError, ValueError):
        return False
    return True


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"errorMessage": message, "errorType": kind}


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
