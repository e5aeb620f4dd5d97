"""Execution environments: AWS's runtime client, the Lambda Runtime API, Lambda's lifecycle.

Theory of operation
-------------------
An invocation runs in an *execution environment*: a process group that runs AWS's runtime
interface client, ``awslambdaric`` (see :mod:`emulator.environment`), which imports the
function's handler once (Init) and then asks this runner for invocations through the
documented **Runtime API** (``/2018-06-01/runtime/invocation/next``, ``.../{id}/response``,
``.../{id}/error``, ``/init/error``). Each environment has its endpoint of its own on
127.0.0.1 (``AWS_LAMBDA_RUNTIME_API``), so a request names its environment by the port it
comes to.

All the runner's work happens in one thread running an ``asyncio`` loop: the Runtime API
endpoints, every environment's log pipe and pidfd, the timers of deadlines, the memory
checks and idle reaping; the emulator's Lambda API (:mod:`emulator.server`) serves from the
same loop (:attr:`Runner.loop`), so that an invocation goes from its Invoke request to its
environment without leaving that thread. :meth:`Runner.launch` (any thread; from the loop's
own, within the call) hands an invocation to that loop.
There it goes to an idle environment of its function, the one used most recently (a *warm*
start: module globals and ``/tmp`` are as the last invocation left them; the environment's
parked ``next`` is answered in that same callback, :class:`_RuntimeAPI`), or else a new
environment is made for it (a *cold* start, whose ``REPORT`` line carries an
``Init Duration``). One invocation at a time per environment: an environment is idle again
once it has answered and asked for the next. A timeout, a memory kill, an exit or a crash
destroys the environment (its whole process group), so the next invocation is cold; idle
environments are reaped after ``idle_timeout`` seconds, and beyond ``kept`` idle ones in
all, the one idle longest goes first. ``warm_pool`` environments per function are made when
its code is set, and never reaped (like provisioned concurrency). ``spares`` environments
per function are initialised ahead of its cold starts (as Lambda's *proactive
initialization* does): made once the function has been invoked and, after a burst has taken
them, again once its invocations pause for ``_REFILL`` seconds; an invocation takes one only
when no warm environment is idle, and its ``REPORT`` carries the ``Init Duration`` its Init
took (ahead of it). Spares are reaped like idle environments and kept only for the functions
that have a zygote.

Environments are forked by a *zygote* per function version (the one used least recently
is stopped beyond ``KEPT_ZYGOTES``; it starts when the function's code is set, ahead of its
first invocation), or spawned one by one (``fork_server=False``). With
bubblewrap (``sandbox``), the zygote or the spawned process runs with every file system
read-only, the code at ``/var/task``, and each environment has a private ``tmpfs`` at
``/tmp`` of its ``EphemeralStorage``; without it, a private ``TMPDIR`` per environment
(removed when the environment is destroyed) and a warning, once.

What an environment writes to its standard output and error is read from its pipe by the
loop: it goes, with Lambda's ``START``, ``END`` and ``REPORT`` lines, to CloudWatch Logs
(:class:`~emulator.cloudwatch.LogWriter`, group ``/aws/lambda/FUNCTION``, stream
``YYYY/MM/DD/[$LATEST]ENVIRONMENT_ID``) and, once the invocation has ended, as one record
appended to its function's log file, ``STATE_DIR/logs/FUNCTION.log`` (kept open; a new file
per request cost about 0.3 ms of the kernel's time each). A record is a header line,
``#mu-invocation REQUEST_ID LENGTH``, then the invocation's LENGTH bytes of log;
:func:`invocation_logs` reads them back. ``LogType=Tail`` is answered from memory: the last
4 KB of the invocation's log, kept in its :class:`Result`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator.cloudwatch import LogWriter
from emulator.environment import under_tmp

__all__ = ["IDLE_TIMEOUT", "KEPT", "KEPT_ZYGOTES", "Code", "Result", "Runner", "invocation_logs",
           "log_file", "log_record", "sandbox_problem"]

IDLE_TIMEOUT = 300.0  # seconds an idle environment is kept
KEPT = 256  # idle environments kept in all
KEPT_ZYGOTES = 2  # zygotes kept (for the functions invoked most recently)
INIT_TIMEOUT = 10.0  # seconds Init may take, as on Lambda
_POLL = 0.05  # seconds between memory checks of busy environments
_CHECKS = 32  # busy environments measured per check at most (in turn)
_REFILL = 0.1  # seconds without an invocation of a function before its spares are made
_BASE_ENV = ("PATH", "LANG", "LC_ALL", "HOME", "SSL_CERT_FILE", "SSL_CERT_DIR")
_API = "/2018-06-01/runtime"
_MAX_BODY = 6 * 1024 * 1024 + 1024
_MAX_HEAD = 65536  # bytes of a Runtime API request's line and headers
_TAIL = 4096  # bytes of an invocation's log kept for LogType=Tail
_RECORD = b"#mu-invocation "  # starts the header line of a record in a function's log file


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
    runtime: str = "python3.12"
    tmp_mb: int = 512


@dataclass
class Result:
    """How an invocation ended: ``body`` (the handler's JSON) or ``error`` (Lambda's shape)."""

    ok: bool
    body: bytes = b"null"
    error: dict[str, Any] | None = None
    log_path: str = ""  # the function's log file, where the invocation's record is
    duration: float = 0.0
    pid: int = 0
    tail: bytes = b""  # the last 4 KB of the invocation's log

    @property
    def payload(self) -> Any:
        """The handler's result, decoded."""
        return json.loads(self.body) if self.body else None

    def log_tail(self, limit: int = _TAIL) -> bytes:
        """The last ``limit`` bytes (at most 4 KB) of the invocation's log."""
        return self.tail[-limit:] if limit > 0 else b""


def log_file(state_dir: Path, function: str) -> Path:
    """The log file of ``function``'s invocations under ``state_dir``."""
    return state_dir / "logs" / f"{function}.log"


def log_record(request_id: str, log: bytes | bytearray) -> bytes:
    """One invocation's ``log`` as a record of its function's log file."""
    return _RECORD + f"{request_id} {len(log)}\n".encode() + log


def invocation_logs(path: Path, request_id: str | None = None) -> list[bytes]:
    """The logs of the invocations recorded in the log file ``path`` (of ``request_id``
    only, if given), one per request, its attempts joined in order; requests in the order
    their last attempt ended. A record cut short (being written) is left out; no file,
    nothing."""
    logs: dict[str, list[bytes]] = {}
    try:
        with open(path, "rb") as f:
            while True:
                head = f.readline()
                if not head.startswith(_RECORD) or not head.endswith(b"\n"):
                    break
                request, _, length = head[len(_RECORD):-1].decode(
                    errors="replace").rpartition(" ")
                if not length.isdigit():
                    break
                if request_id is not None and request != request_id:
                    f.seek(int(length), os.SEEK_CUR)
                    continue
                body = f.read(int(length))
                if len(body) < int(length):
                    break
                logs.setdefault(request, []).append(body)
                logs[request] = logs.pop(request)  # last ended, last
    except OSError:
        pass
    return [b"".join(parts) for parts in logs.values()]


@dataclass(eq=False)
class _Invocation:
    code: Code
    request_id: str
    payload: bytes
    on_done: Callable[[Result], None]
    started: float = 0.0  # time.time() when delivered to its environment
    log: bytearray = field(default_factory=bytearray)
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Env:
    id: str
    key: tuple[str, str]
    code: Code
    made: float  # monotonic
    stream: str
    tmpdir: str = ""
    port: int = 0
    server: asyncio.Server | None = None
    pid: int = 0
    proc: subprocess.Popen[bytes] | None = None
    pidfd: int = -1
    log_r: int = -1
    status: int = -1  # its /proc/PID/status, kept open: read at every invocation's end
    partial: bytes = b""
    init_ms: float | None = None
    init_log: bytearray = field(default_factory=bytearray)
    init_error: dict[str, Any] | None = None
    inv: _Invocation | None = None
    delivered: bool = False
    parked: _RuntimeAPI | None = None  # the connection whose /next waits for an invocation
    connections: set[_RuntimeAPI] = field(default_factory=set)
    idle_since: float = 0.0
    provisioned: bool = False
    spare: bool = False  # made ahead of any invocation, not yet taken
    retiring: bool = False  # destroyed once its invocation ends (code updated)
    dead: bool = False
    init_timer: asyncio.TimerHandle | None = None


_Answer = tuple[int, dict[str, str], bytes]  # a Runtime API answer: status, headers, body
_SENT: _Answer = (-1, {}, b"")  # what ``Runner._route`` returns when it has answered itself
_OK = b'{"status": "OK"}'


class _RuntimeAPI(asyncio.Protocol):
    """One connection of an environment to its Runtime API endpoint: requests are parsed
    as their bytes come and answered in order, in the loop's callback that read them (no
    task per connection, no turn of the loop between a request and its answer). A /next
    with no invocation for it is parked (``_Env.parked``) until :meth:`answer` is called;
    nothing after it is read meanwhile."""

    def __init__(self, runner: Runner, env: _Env) -> None:
        self.runner, self.env = runner, env
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.parked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.env.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.env.connections.discard(self)
        if self.env.parked is self:
            self.env.parked = None  # no invocation goes to a connection that is gone

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > _MAX_BODY + _MAX_HEAD:
            self.close()  # more than a request, sent while one is parked
        elif not self.parked:
            self._serve()

    def reply(self, answer: _Answer) -> None:
        """Answer the request being served now (before :meth:`Runner._route` returns)."""
        self._send(answer)

    def answer(self, answer: _Answer) -> None:
        """Answer the parked /next, then serve what came after it."""
        self.parked = False
        self._send(answer)
        self._serve()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def _send(self, answer: _Answer) -> None:
        status, headers, body = answer
        if status == 0:
            self.close()  # the environment is going away: no answer
        elif self.transport is not None:
            self.transport.write(_http(status, body, headers))

    def _serve(self) -> None:
        while self.transport is not None and not self.parked:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEAD:
                    self.close()
                return
            lines = self.buf[:end].decode("latin-1").split("\r\n")
            parts = lines[0].split()
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            try:
                length = int(headers.get("content-length", "0") or 0)
            except ValueError:
                length = -1
            if len(parts) != 3 or length > _MAX_BODY or length < 0:
                self._send((400, {}, _json(_error("bad request", "InvalidRequest"))))
                self.close()
                return
            if headers.get("transfer-encoding", "identity").lower() != "identity":
                # A chunked body (a streamed response) is not taken for an empty one.
                self._send((411, {}, _json(_error(
                    "a body needs Content-Length (streamed responses are not supported)",
                    "InvalidRequest"))))
                self.close()
                return
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4:end + 4 + length])
            del self.buf[:end + 4 + length]
            answer = self.runner._route(self.env, self, parts[0], parts[1], headers, body)
            if answer is None:
                self.parked = True
            elif answer is not _SENT:
                self._send(answer)


def _error(message: str, kind: str, request_id: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"errorMessage": message, "errorType": kind}
    if request_id:
        out["requestId"] = request_id
    return out


_SANDBOX: tuple[str | None] | None = None


def sandbox_problem() -> str | None:
    """Why environments cannot run under bubblewrap here (None: they can). Tried once."""
    global _SANDBOX
    if _SANDBOX is None:
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            _SANDBOX = ("bubblewrap (bwrap) is not installed",)
        else:
            shown = under_tmp()
            try:
                probe = subprocess.run(
                    [*_bwrap_args(bwrap, None, shown=shown), sys.executable, "-I", "-c",
                     "from emulator.environment import _private_tmp; "
                     f"_private_tmp(1, {shown!r})"],
                    capture_output=True, timeout=30, check=False)
                _SANDBOX = (None,) if probe.returncode == 0 else (
                    "bubblewrap cannot make a sandbox here: "
                    + (probe.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1],)
            except (OSError, subprocess.SubprocessError) as exc:
                _SANDBOX = (f"bubblewrap cannot run: {exc}",)
    return _SANDBOX[0]


def _bwrap_args(bwrap: str, task_root: str | None, tmp_mb: int = 0,
                shown: list[str] | tuple[str, ...] = ()) -> list[str]:
    """bubblewrap's command line: every file system read-only, ``task_root`` at /var/task;
    with ``tmp_mb`` a ``tmpfs`` of that size at /tmp (spawn), else the zygote's children
    make their own (it keeps the capability to mount, in its own user namespace); the
    folders ``shown`` (under /tmp: :func:`~emulator.environment.under_tmp`) bound back into
    that /tmp, read-only."""
    args = [bwrap, "--die-with-parent", "--unshare-user", "--unshare-ipc", "--unshare-uts"]
    for entry in sorted(os.listdir("/")):
        path = "/" + entry
        if entry in ("proc", "dev", "tmp", "var") or not os.path.exists(path):
            continue
        args += ["--ro-bind", path, path]
    args += ["--tmpfs", "/var"]
    if os.path.isdir("/var"):
        for entry in sorted(os.listdir("/var")):
            if entry not in ("task", "tmp"):
                args += ["--ro-bind", "/var/" + entry, "/var/" + entry]
    if task_root is not None:
        args += ["--ro-bind", task_root, "/var/task"]
    args += ["--remount-ro", "/var", "--dev", "/dev", "--proc", "/proc"]
    if tmp_mb:
        args += ["--size", str(tmp_mb * 1024 * 1024), "--tmpfs", "/tmp"]
    else:
        args += ["--tmpfs", "/tmp", "--cap-add", "CAP_SYS_ADMIN"]
    for path in shown:
        args += ["--ro-bind", path, path]
    return args


class _Zygote:
    """A process that has imported the runtime and forks environments of one function."""

    def __init__(self, code: Code, sandbox: str | None, env: dict[str, str],
                 shown: list[str]) -> None:
        parent, child = socket.socketpair()
        self.sock = parent
        self.waiting: deque[_Env] = deque()  # forks asked for, answered in order
        self.buf = b""
        # Requests not yet taken by the socket: (bytes, the log's descriptor or -1). Never
        # a blocking send: the zygote blocks on its answers while they are not read, and
        # they are read by the loop that would be blocked.
        self.outbox: deque[tuple[bytes, int]] = deque()
        prefix = _bwrap_args(sandbox, code.code_dir, shown=shown) if sandbox else []
        try:
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-I", "-m", "emulator.environment", "zygote",
                 str(child.fileno())],
                pass_fds=(child.fileno(),), cwd=code.code_dir, env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)

    def close(self) -> None:
        while self.outbox:
            fd = self.outbox.popleft()[1]
            if fd >= 0:
                os.close(fd)
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class Runner:
    """Execution environments for the functions' invocations.

    Args:
        state_dir: where per-request logs go (``logs/FUNCTION/REQUEST_ID.log``).
        s3_endpoint_url: the embedded moto server: what environments get as
            ``AWS_ENDPOINT_URL_S3``, and where logs are written (CloudWatch Logs).
        region: ``AWS_REGION`` of environments.
        fork_server: fork environments from a zygote per function (False: spawn each).
        kept: idle environments kept in all (the one idle longest is reaped beyond).
        warm_pool: environments made per function when its code is set, never reaped.
        spares: environments per function made ahead of its invocations, once it has been
            invoked, and made again after a burst takes them (reaped like idle ones).
        idle_timeout: seconds after which an idle environment is reaped.
        sandbox: run environments under bubblewrap; None: where it works (else a warning).
        logs_endpoint_url: CloudWatch Logs endpoint (default: ``s3_endpoint_url``).

    Raises:
        ValueError: ``kept``, ``warm_pool`` or ``idle_timeout`` is negative.
    """

    def __init__(
        self,
        state_dir: Path,
        s3_endpoint_url: str | None = None,
        region: str = "us-east-1",
        fork_server: bool = True,
        kept: int = KEPT,
        warm_pool: int = 0,
        idle_timeout: float = IDLE_TIMEOUT,
        sandbox: bool | None = None,
        logs_endpoint_url: str | None = None,
        spares: int = 0,
    ) -> None:
        if kept < 0:
            raise ValueError(f"kept environments {kept} is negative")
        if warm_pool < 0:
            raise ValueError(f"warm pool {warm_pool} is negative")
        if spares < 0:
            raise ValueError(f"spares {spares} is negative")
        if not idle_timeout >= 0:
            raise ValueError(f"idle timeout {idle_timeout} is negative")
        self.state_dir = Path(state_dir)
        self.s3_endpoint_url = s3_endpoint_url
        self.region = region
        self.fork_server = fork_server
        self.kept = kept
        self.kept_zygotes = KEPT_ZYGOTES
        self.warm_pool = warm_pool
        self.spares = spares
        self.idle_timeout = idle_timeout
        self.sandbox: str | None = None  # bwrap's path when sandboxed
        self._shown = under_tmp()  # bound back into the sandbox's private /tmp
        if sandbox is not False:
            problem = sandbox_problem()
            if problem is None:
                self.sandbox = shutil.which("bwrap")
            elif sandbox:
                raise ValueError(f"no sandbox: {problem}")
            else:
                _warn_once(f"mu emulator: {problem}; handlers run without a sandbox and can "
                           "write wherever you can")
        self.logs = LogWriter(logs_endpoint_url or s3_endpoint_url, region)
        self._tmp = tempfile.mkdtemp(prefix="mu-emulator-tmp-")
        self._log_files: dict[str, int] = {}  # function -> its log file, open to append
        self._log_paths: dict[str, str] = {}  # function -> its log file's path
        self._envs: dict[str, _Env] = {}  # every live environment by id
        self._idle: dict[tuple[str, str], list[_Env]] = {}  # parked in /next, newest last
        self._returning: dict[tuple[str, str], set[_Env]] = {}  # answered, /next to come
        self._spare: dict[tuple[str, str], list[_Env]] = {}  # spares parked in /next
        self._codes: dict[tuple[str, str], Code] = {}  # functions invoked, for their spares
        self._refills: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._zygotes: OrderedDict[tuple[str, str], _Zygote] = OrderedDict()
        self._running: dict[str, int] = {}  # request id -> pid (read from any thread)
        self._closed = False
        self._checked = 0  # where the memory checks' turn is
        _more_descriptors()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, args=(ready,),
                                        name="mu-emulator-runner", daemon=True)
        self._thread.start()
        ready.wait()

    # -- any thread ------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop all of this runner's work runs in (in a thread of its own); other parts
        of the emulator may serve from it too (:mod:`emulator.server`)."""
        return self._loop

    def in_loop(self) -> bool:
        """Whether the caller runs in :attr:`loop`'s thread."""
        return threading.get_ident() == self._thread.ident

    def run(self, code: Code, payload: bytes, request_id: str) -> Result:
        """Run one invocation to its end and return the outcome (never from :attr:`loop`:
        it would wait for itself)."""
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
        """Start one invocation and return at once; ``on_done(result)`` follows, always,
        from the runner's thread (never from within this call), except after :meth:`close`,
        when it is called at once with a "stopping" error. Called from the runner's thread
        (the Lambda API's Event), the invocation goes to its environment within the call."""
        inv = _Invocation(code, request_id, payload, on_done)
        if self._closed:
            on_done(Result(False, error=_error("the emulator is stopping", "Runtime.Stopped"),
                           log_path=self._log_path(code.name)))
            return
        if self.in_loop():  # delivered now: no self-pipe write, no turn of the loop
            self._launch(inv)
            return
        try:
            self._loop.call_soon_threadsafe(self._launch, inv)
        except RuntimeError:  # the loop closed meanwhile
            on_done(Result(False, error=_error("the emulator is stopping", "Runtime.Stopped")))

    def warm(self, code: Code) -> None:
        """Make ``warm_pool`` environments of ``code`` ahead of its invocations, or else
        (with the fork server) start its zygote, so that the first invocation waits only
        for its own environment (about 0.3-0.4 s of a 100-worker local run's 4 s)."""
        if self.warm_pool and not self._closed:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._warm, code)
        elif self.fork_server and not self._closed:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._prepare, code)

    def pids(self) -> dict[str, int]:
        """Running invocations: request id -> pid of its environment (its group leader)."""
        return dict(self._running)

    def environments(self) -> dict[str, int]:
        """Live environments: id -> pid (0 while it is being made)."""
        return {env_id: env.pid for env_id, env in list(self._envs.items())}

    def forget(self, name: str, reason: str | None = None) -> None:
        """Function ``name`` was updated (its environments are destroyed once idle) or, with
        a ``reason``, deleted (its running invocations are killed, each failing with it)."""
        self.call(self._forget, name, reason)

    def close(self) -> None:
        """Kill every environment and zygote; every ``on_done`` has been called when this
        returns. A second call does nothing."""
        if self._closed:
            return
        self._closed = True
        self.call(self._close_all)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self.logs.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` in :attr:`loop` and wait for it (at once when called from
        the loop's thread; not at all once the loop is closed)."""
        if self.in_loop():
            fn(*args)
            return
        done = threading.Event()

        def in_loop() -> None:
            try:
                fn(*args)
            finally:
                done.set()

        try:
            self._loop.call_soon_threadsafe(in_loop)
        except RuntimeError:
            return
        done.wait()

    def _run_loop(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(ready.set)
        self._loop.call_later(_POLL, self._tick)
        self._loop.call_later(1.0, self._reap)
        self._loop.run_forever()
        # Stopped (close): end the Runtime API's connections, then close the loop.
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        for env in list(self._envs.values()):  # made while stopping
            self._destroy(env, _error("the emulator is stopping", "Runtime.Stopped"))
        self._loop.run_until_complete(asyncio.sleep(0))  # transports closing
        self._loop.close()
        for fd in self._log_files.values():
            os.close(fd)
        self._log_files.clear()

    # -- in the loop -----------------------------------------------------------------------

    def _launch(self, inv: _Invocation) -> None:
        if self._closed:
            self._complete(inv, Result(False, error=_error("the emulator is stopping",
                                                            "Runtime.Stopped")), None)
            return
        key = (inv.code.name, inv.code.sha)
        idle = self._idle.get(key)
        while idle:
            env = idle.pop()
            if not env.dead and env.parked is not None:
                self._deliver(env, inv)
                return
        returning = self._returning.get(key)
        while returning:  # it has answered and will ask for the next at once: wait for it
            env = returning.pop()
            if not env.dead and env.inv is None:
                env.inv = inv
                return
        if self.spares:
            self._codes[key] = inv.code
            self._refill_later(key)
            spares = self._spare.get(key)
            while spares:
                env = spares.pop()
                if not env.dead and env.parked is not None:
                    env.spare, env.idle_since = False, 0.0  # its REPORT has Init Duration
                    self._deliver(env, inv)
                    return
        self._loop.create_task(self._make(inv.code, inv))

    def _refill_later(self, key: tuple[str, str]) -> None:
        """Make ``key``'s spares again once its invocations pause (:data:`_REFILL` s without
        one), so that making them does not compete with the burst that took them."""
        timer = self._refills.get(key)
        if timer is not None:
            timer.cancel()
        self._refills[key] = self._loop.call_later(_REFILL, self._refill, key)

    def _refill(self, key: tuple[str, str]) -> None:
        self._refills.pop(key, None)
        code = self._codes.get(key)
        if code is None or self._closed or (self.fork_server and key not in self._zygotes):
            return  # updated or deleted since, or its zygote was stopped (KEPT_ZYGOTES)
        have = sum(1 for e in self._envs.values() if e.key == key and e.spare)
        for _ in range(self.spares - have):
            self._loop.create_task(self._make(code, None, spare=True))

    def _warm(self, code: Code) -> None:
        key = (code.name, code.sha)
        have = sum(1 for e in self._envs.values() if e.key == key and e.provisioned)
        for _ in range(self.warm_pool - have):
            self._loop.create_task(self._make(code, None, provisioned=True))

    async def _make(self, code: Code, inv: _Invocation | None, provisioned: bool = False,
                    spare: bool = False) -> None:
        """A new environment of ``code``; ``inv`` is its first invocation (cold start)."""
        env_id = uuid.uuid4().hex
        day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y/%m/%d")
        env = _Env(env_id, (code.name, code.sha), code, time.monotonic(),
                   f"{day}/[{code.version}]{env_id}", provisioned=provisioned, spare=spare)
        env.inv = inv
        self._envs[env_id] = env
        try:
            server = await self._loop.create_server(
                lambda: _RuntimeAPI(self, env), "127.0.0.1", 0)
            if env.dead:  # destroyed meanwhile (the emulator stopping, the function deleted)
                server.close()
                return
            env.server = server
            env.port = server.sockets[0].getsockname()[1]
            spec = self._spec(env)
            log_r, log_w = os.pipe2(os.O_CLOEXEC)
            env.log_r = log_r
            os.set_blocking(log_r, False)
            self._loop.add_reader(log_r, self._read_log, env)
            try:
                if self.fork_server:
                    self._fork(env, spec, log_w)
                else:
                    self._spawn(env, spec, log_w)
            finally:
                os.close(log_w)
        except (OSError, ValueError, TypeError) as exc:
            # An environment that cannot start (a variable with a NUL byte, out of
            # descriptors): its invocation fails, on_done follows.
            self._destroy(env, _error(f"cannot start: {exc}", "Runtime.StartError"))
            return
        env.init_timer = self._loop.call_later(
            max(INIT_TIMEOUT, code.timeout), self._init_timeout, env)

    def _spec(self, env: _Env) -> dict[str, Any]:
        code = env.code
        if not isinstance(code.handler, str):
            raise TypeError(f"handler {code.handler!r} is not a string")
        for key, value in code.environment.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"environment variable {key!r}: {value!r} is not a string")
            if "\x00" in key or "\x00" in value:
                raise ValueError(f"environment variable {key}: embedded null byte")
        task_root = "/var/task" if self.sandbox else code.code_dir
        vars_ = {k: os.environ[k] for k in _BASE_ENV if k in os.environ}
        vars_.update(
            AWS_LAMBDA_FUNCTION_NAME=code.name,
            AWS_LAMBDA_FUNCTION_VERSION=code.version,
            AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(code.memory),
            AWS_LAMBDA_LOG_GROUP_NAME=f"/aws/lambda/{code.name}",
            AWS_LAMBDA_LOG_STREAM_NAME=env.stream,
            AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{env.port}",
            AWS_REGION=self.region,
            AWS_DEFAULT_REGION=self.region,
            AWS_EXECUTION_ENV=f"AWS_Lambda_{code.runtime}",
            LAMBDA_TASK_ROOT=task_root,
            _HANDLER=code.handler,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_SESSION_TOKEN="testing",
            PYTHONUNBUFFERED="1",
            TZ=":UTC",
        )
        if self.sandbox:
            vars_["TMPDIR"] = "/tmp"
        else:
            env.tmpdir = os.path.join(self._tmp, env.id)
            os.mkdir(env.tmpdir, 0o700)
            vars_["TMPDIR"] = env.tmpdir
        if self.s3_endpoint_url:
            vars_["AWS_ENDPOINT_URL_S3"] = self.s3_endpoint_url
        vars_.update(code.environment)
        return {"env": vars_, "task_root": task_root, "handler": code.handler,
                "tmp_mb": code.tmp_mb if self.sandbox and self.fork_server else 0,
                "shown": self._shown}

    def _fork(self, env: _Env, spec: dict[str, Any], log_w: int) -> None:
        zygote = self._zygote(env.code)
        line = json.dumps(spec).encode() + b"\n"
        zygote.outbox.append((line, os.dup(log_w)))  # closed once sent
        zygote.waiting.append(env)
        if len(zygote.outbox) == 1:
            self._zygote_hears(zygote)

    def _zygote_hears(self, zygote: _Zygote) -> None:
        """Send what the socket takes now of ``zygote``'s requests; the rest when it is
        writable again (a burst of hundreds of cold starts fills it)."""
        while zygote.outbox:
            data, fd = zygote.outbox[0]
            try:
                if fd >= 0:
                    sent = zygote.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                         fd.to_bytes(4, sys.byteorder))])
                else:
                    sent = zygote.sock.send(data)
            except BlockingIOError:
                break
            except OSError:
                return  # the zygote is gone: _zygote_says drops it and its waiting forks
            if fd >= 0:
                os.close(fd)  # the descriptor went with the first byte
            zygote.outbox.popleft()
            if sent < len(data):
                zygote.outbox.appendleft((data[sent:], -1))
        with contextlib.suppress(ValueError, OSError):
            if zygote.outbox:
                self._loop.add_writer(zygote.sock.fileno(), self._zygote_hears, zygote)
            else:
                self._loop.remove_writer(zygote.sock.fileno())

    def _spawn(self, env: _Env, spec: dict[str, Any], log_w: int) -> None:
        prefix = (_bwrap_args(self.sandbox, env.code.code_dir, env.code.tmp_mb, self._shown)
                  if self.sandbox else [])
        vars_ = dict(spec["env"], _MU_ENVIRONMENT=json.dumps(spec))
        env.proc = subprocess.Popen(
            [*prefix, sys.executable, "-I", "-m", "emulator.environment", "spawn"],
            cwd=env.code.code_dir, env=vars_, stdin=subprocess.DEVNULL, stdout=log_w,
            stderr=log_w, start_new_session=True)
        self._started(env, env.proc.pid)

    def _prepare(self, code: Code) -> None:
        """Start ``code``'s zygote ahead of its first invocation; if it cannot start now,
        that invocation tries again and reports why."""
        with contextlib.suppress(OSError):
            self._zygote(code)

    def _zygote(self, code: Code) -> _Zygote:
        key = (code.name, code.sha)
        zygote = self._zygotes.get(key)
        if zygote is not None and zygote.proc.poll() is not None:
            self._drop_zygote(key)
            zygote = None
        if zygote is None:
            base = {k: os.environ[k] for k in _BASE_ENV if k in os.environ}
            zygote = _Zygote(code, self.sandbox, base, self._shown)
            self._zygotes[key] = zygote
            self._loop.add_reader(zygote.sock.fileno(), self._zygote_says, key, zygote)
        self._zygotes.move_to_end(key)
        self._cap_zygotes()
        return zygote

    def _cap_zygotes(self) -> None:
        """Beyond the cap, stop the zygotes used least recently, but never one that still
        has forks to answer (their invocations would fail): it goes later (:meth:`_reap`)."""
        newest = next(reversed(self._zygotes), None)
        for other in list(self._zygotes):
            if len(self._zygotes) <= max(1, self.kept_zygotes):
                break
            if other != newest and not self._zygotes[other].waiting:
                self._drop_zygote(other)

    def _drop_zygote(self, key: tuple[str, str]) -> None:
        zygote = self._zygotes.pop(key, None)
        if zygote is None:
            return
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(zygote.sock.fileno())
            self._loop.remove_writer(zygote.sock.fileno())
        zygote.close()
        while zygote.waiting:
            self._destroy(zygote.waiting.popleft(),
                          _error("the zygote exited", "Runtime.StartError"))
        for env in [e for e in self._envs.values() if e.key == key and e.spare]:
            self._destroy(env, None)  # spares are kept for the functions with a zygote only

    def _zygote_says(self, key: tuple[str, str], zygote: _Zygote) -> None:
        try:
            data = zygote.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if self._zygotes.get(key) is zygote:
                self._drop_zygote(key)
            return
        zygote.buf += data
        *lines, zygote.buf = zygote.buf.split(b"\n")
        for line in lines:
            pid = int(json.loads(line)["pid"])
            if not zygote.waiting:
                continue
            env = zygote.waiting.popleft()
            if not pid:
                self._destroy(env, _error("cannot start: out of descriptors",
                                          "Runtime.StartError"))
            elif env.dead:
                _kill_group(pid)
            else:
                self._started(env, pid)

    def _started(self, env: _Env, pid: int) -> None:
        env.pid = pid
        if env.inv is not None and env.delivered:
            self._running[env.inv.request_id] = pid
        try:
            env.pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._exited(env)
            return
        except (AttributeError, OSError):
            return  # no pidfd: the tick finds it gone
        self._loop.add_reader(env.pidfd, self._exited, env)

    def _init_timeout(self, env: _Env) -> None:
        if env.init_ms is None and not env.dead:
            self._destroy(env, _error(
                f"Init timed out after {max(INIT_TIMEOUT, env.code.timeout):.2f} seconds",
                "Runtime.InitTimeout"))

    # -- the Runtime API -------------------------------------------------------------------

    def _route(self, env: _Env, conn: _RuntimeAPI, method: str, path: str,
               headers: dict[str, str], body: bytes) -> _Answer | None:
        """The answer to one request of ``env`` on ``conn``; None: a /next parked until an
        invocation is delivered to it (:meth:`_deliver`); ``_SENT``: answered on ``conn``
        already (a ``response`` or ``error``: its 202 goes out before the end is recorded,
        its END and REPORT lines, its log record, the registry's bookkeeping, so that the
        environment asks for its next invocation meanwhile)."""
        if method == "GET" and path == f"{_API}/invocation/next":
            return self._next(env, conn)
        if method == "POST" and path == f"{_API}/init/error":
            if env.init_ms is not None:
                return 403, {}, _json(_error("init is over", "InvalidStateTransition"))
            env.init_error = _error_body(body, headers, "")
            return 202, {}, _OK
        prefix = f"{_API}/invocation/"
        if method == "POST" and path.startswith(prefix):
            request_id, _, what = path[len(prefix):].partition("/")
            inv = env.inv
            if what not in ("response", "error"):
                return 404, {}, _json(_error("no such resource", "NotFound"))
            if inv is None or not env.delivered or inv.request_id != request_id:
                return 400, {}, _json(_error("Invalid request ID", "InvalidRequestID"))
            self._drain(env)
            if what == "response":
                if len(body) > 6 * 1024 * 1024:
                    result = Result(False, error=_error(
                        f"Response payload size ({len(body)} bytes) exceeded maximum allowed "
                        "payload size (6291556 bytes).", "Function.ResponseSizeTooLarge"))
                else:
                    result = Result(True, body=body or b"null")
            else:
                result = Result(False, error=_error_body(body, headers, request_id))
            conn.reply((202, {}, _OK))
            self._finish(env, result)
            return _SENT
        return 404, {}, _json(_error(f"no such resource: {method} {path}", "NotFound"))

    def _next(self, env: _Env, conn: _RuntimeAPI) -> _Answer | None:
        if env.dead:
            return 0, {}, b""
        self._returning.get(env.key, set()).discard(env)
        if env.init_ms is None:  # Init is over
            env.init_ms = (time.monotonic() - env.made) * 1000
            if env.init_timer is not None:
                env.init_timer.cancel()
            self._drain(env)
        if env.inv is not None and not env.delivered:
            self._deliver(env, env.inv)
        if env.inv is None or not env.delivered:
            if env.parked is not None:
                return 400, {}, _json(_error("already waiting for an invocation",
                                             "InvalidStateTransition"))
            env.parked = conn
            env.idle_since = time.monotonic()
            (self._spare if env.spare else self._idle).setdefault(env.key, []).append(env)
            if env.retiring:
                self._destroy(env, None)
                return 0, {}, b""
            return None
        assert env.inv is not None
        return self._invocation(env.inv)

    @staticmethod
    def _invocation(inv: _Invocation) -> _Answer:
        """The answer to a /next: ``inv``."""
        deadline = inv.started + inv.code.timeout
        trace = inv.request_id.replace("-", "")[:24]
        headers = {
            "Lambda-Runtime-Aws-Request-Id": inv.request_id,
            "Lambda-Runtime-Deadline-Ms": str(int(deadline * 1000)),
            "Lambda-Runtime-Invoked-Function-Arn": inv.code.arn,
            "Lambda-Runtime-Trace-Id": f"Root=1-{int(inv.started):08x}-{trace};Parent="
                                       f"{random.getrandbits(64):016x};Sampled=0",
            "Content-Type": "application/json",
        }
        return 200, headers, inv.payload

    def _deliver(self, env: _Env, inv: _Invocation) -> None:
        """Give ``inv`` to ``env`` (its /next is parked, or comes next after Init)."""
        env.inv, env.delivered = inv, True
        inv.started = time.time()
        if env.pid:
            self._running[inv.request_id] = env.pid
        start = f"START RequestId: {inv.request_id} Version: {inv.code.version}\n".encode()
        if env.init_log and not inv.log:
            inv.log += env.init_log  # what Init printed belongs to the first invocation's log
        self._emit(env, start)
        inv.timer = self._loop.call_later(inv.code.timeout, self._timed_out, env, inv)
        if env.parked is not None:  # answered now, not on a later turn of the loop
            conn, env.parked = env.parked, None
            conn.answer(self._invocation(inv))

    def _timed_out(self, env: _Env, inv: _Invocation) -> None:
        if env.inv is inv and not env.dead:
            _kill_group(env.pid)
            self._drain(env)
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            self._emit(env, f"{stamp} {inv.request_id} Task timed out after "
                       f"{inv.code.timeout:.2f} seconds\n".encode())
            self._destroy(env, _error(f"{stamp} {inv.request_id} Task timed out after "
                                      f"{inv.code.timeout:.2f} seconds", "Sandbox.Timedout",
                                      inv.request_id))

    # -- ends ------------------------------------------------------------------------------

    def _finish(self, env: _Env, result: Result) -> None:
        """``env``'s invocation ended with ``result``; the environment lives on."""
        inv = env.inv
        if inv is None:
            return
        env.inv, env.delivered = None, False
        # Free before its end is recorded: an invocation launched from ``on_done`` (a
        # queued Event given the slot) takes it rather than making a new environment.
        self._returning.setdefault(env.key, set()).add(env)
        self._complete(inv, result, env)

    def _complete(self, inv: _Invocation, result: Result, env: _Env | None) -> None:
        if inv.timer is not None:
            inv.timer.cancel()
        self._running.pop(inv.request_id, None)
        now = time.time()
        duration = now - inv.started if inv.started else 0.0
        if env is not None and inv.started:
            billed = max(1, math.ceil(duration * 1000))
            used = _max_rss_mb(env)
            init = ""
            if env.init_ms is not None and not env.idle_since:
                init = f"\tInit Duration: {env.init_ms:.2f} ms"
            self._emit(env, f"END RequestId: {inv.request_id}\n".encode(), inv)
            self._emit(env, (
                f"REPORT RequestId: {inv.request_id}\tDuration: {duration * 1000:.2f} ms\t"
                f"Billed Duration: {billed} ms\tMemory Size: {inv.code.memory} MB\t"
                f"Max Memory Used: {used} MB{init}\t\n").encode(), inv)
            env.idle_since = env.idle_since or time.monotonic()
        elif env is not None and env.init_log:
            inv.log += env.init_log
        path = self._record(inv)
        result.log_path, result.duration = path, duration
        result.tail = bytes(inv.log[-_TAIL:])
        result.pid = env.pid if env is not None else 0
        try:
            inv.on_done(result)
        except Exception:  # a bug in the caller must not stop the runner
            traceback.print_exc()

    def _destroy(self, env: _Env, error: dict[str, Any] | None) -> None:
        """Kill ``env`` and forget it; its invocation, if any, fails with ``error``."""
        if env.dead:
            return
        env.dead = True
        if env.pid:
            _kill_group(env.pid)
        self._drain(env)
        if env.partial:
            self._line(env, env.partial + b"\n")
            env.partial = b""
        inv, env.inv = env.inv, None
        if inv is not None:
            if error is None:  # it exited: after an Init error, that error
                error = dict(env.init_error or _error(
                    f"RequestId: {inv.request_id} Error: Runtime exited without providing a "
                    "reason", "Runtime.ExitError"))
                if "requestId" in error and not error["requestId"]:
                    error["requestId"] = inv.request_id
            if env.init_ms is None:
                env.idle_since = 0.0  # a cold start's report
            self._complete(inv, Result(False, error=error), env)
        env.parked = None
        for conn in list(env.connections):  # the environment is gone: no answers
            conn.close()
        if env.status >= 0:
            os.close(env.status)
        for fd in (env.log_r, env.pidfd):
            if fd >= 0:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(fd)
                os.close(fd)
        env.log_r = env.pidfd = env.status = -1
        if env.server is not None:
            env.server.close()
        if env.proc is not None:
            env.proc.wait()
        if env.tmpdir:
            shutil.rmtree(env.tmpdir, ignore_errors=True)
        self._envs.pop(env.id, None)
        for parked in (self._idle.get(env.key), self._spare.get(env.key)):
            if parked and env in parked:
                parked.remove(env)
        self._returning.get(env.key, set()).discard(env)

    def _exited(self, env: _Env) -> None:
        self._destroy(env, None)

    def _forget(self, name: str, reason: str | None) -> None:
        fd = self._log_files.pop(name, None)
        if fd is not None:  # opened again by its next invocation's end
            os.close(fd)
        for key in [k for k in self._zygotes if k[0] == name]:
            self._drop_zygote(key)
        for key in [k for k in self._codes if k[0] == name]:
            del self._codes[key]
        for env in list(self._envs.values()):
            if env.code.name != name:
                continue
            if reason is not None and env.inv is not None:
                self._destroy(env, _error(reason, "Runtime.FunctionDeleted"))
            elif env.inv is None or not env.delivered:
                if env.inv is None:
                    self._destroy(env, None)
                else:
                    env.retiring = True
            else:
                env.retiring = True

    def _close_all(self) -> None:
        for env in list(self._envs.values()):
            self._destroy(env, _error("the emulator is stopping", "Runtime.Stopped"))
        for key in list(self._zygotes):
            self._drop_zygote(key)

    def _tick(self) -> None:
        """Memory limits of busy environments; environments without a pidfd that are gone.

        At most ``_CHECKS`` busy environments are measured per tick, in turn: with hundreds
        busy (a 300-worker run), measuring all of them every tick (a walk of ``/proc`` each)
        would be a steady share of this loop's CPU; each is then measured every
        ``_POLL * ceil(busy / _CHECKS)`` seconds. An invocation is measured once it has run
        for ``_POLL`` seconds: most warm ones end within a few milliseconds, and measuring
        them in a burst (a walk of ``/proc`` each) held up the loop delivering the others."""
        try:
            busy: list[_Env] = []
            begun = time.time() - _POLL
            for env in list(self._envs.values()):
                if env.dead or not env.pid:
                    continue
                if env.pidfd < 0 and not _alive(env.pid):
                    self._exited(env)
                elif env.inv is not None and env.delivered and env.inv.started <= begun:
                    busy.append(env)
            if busy:
                start = self._checked % len(busy)
                turn = (busy + busy)[start:start + min(_CHECKS, len(busy))]
                self._checked = start + len(turn)
                for env in turn:
                    if not env.dead and _tree_rss(env.pid) > env.code.memory * 1024 * 1024:
                        memory = env.code.memory
                        self._destroy(env, _error(
                            f"Runtime exited with error: signal: killed (memory {memory} MB "
                            "exceeded)", "Runtime.OutOfMemory"))
        finally:
            if not self._closed:
                self._loop.call_later(_POLL, self._tick)

    def _reap(self) -> None:
        """Destroy environments idle too long, and the oldest beyond ``kept``."""
        try:
            now = time.monotonic()
            idle = [e for parked in (self._idle, self._spare) for envs in parked.values()
                    for e in envs if not e.dead and not e.provisioned]
            idle.sort(key=lambda e: e.idle_since)
            extra = len(idle) - self.kept
            for i, env in enumerate(idle):
                if i < extra or now - env.idle_since >= self.idle_timeout:
                    self._destroy(env, None)
            self._cap_zygotes()
        finally:
            if not self._closed:
                self._loop.call_later(min(1.0, max(0.05, self.idle_timeout / 4)), self._reap)

    # -- logs ------------------------------------------------------------------------------

    def _read_log(self, env: _Env) -> None:
        self._drain(env)

    def _drain(self, env: _Env) -> None:
        """Read what ``env`` has written so far, line by line."""
        if env.log_r < 0:
            return
        while True:
            try:
                data = os.read(env.log_r, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(env.log_r)
                return
            data = env.partial + data
            cut = data.rfind(b"\n") + 1
            env.partial = data[cut:]
            if len(env.partial) > 256 * 1024:  # one very long line: cut it
                cut, env.partial = len(data), b""
            if cut:
                for line in data[:cut].splitlines(keepends=True):
                    self._line(env, line)

    def _line(self, env: _Env, line: bytes) -> None:
        if env.inv is not None and env.delivered:
            env.inv.log += line
        elif len(env.init_log) < 64 * 1024:
            env.init_log += line
        self.logs.put(f"/aws/lambda/{env.code.name}", env.stream, line)

    def _emit(self, env: _Env, line: bytes, inv: _Invocation | None = None) -> None:
        target = inv or env.inv
        if target is not None:
            target.log += line
        self.logs.put(f"/aws/lambda/{env.code.name}", env.stream, line)

    def _log_path(self, function: str) -> str:
        """``function``'s log file (kept: a Path made per invocation was about 5 % of the
        loop's time)."""
        path = self._log_paths.get(function)
        if path is None:
            path = self._log_paths[function] = str(log_file(self.state_dir, function))
        return path

    def _record(self, inv: _Invocation) -> str:
        """Append ``inv``'s log to its function's log file, in one write (a reader never
        sees half of another record); the file's path."""
        path = self._log_path(inv.code.name)
        if not inv.log:
            return path
        record = log_record(inv.request_id, inv.log)
        try:
            fd = self._log_files.get(inv.code.name)
            if fd is None:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
                self._log_files[inv.code.name] = fd
            os.write(fd, record)
        except OSError:
            pass  # the state dir went away under us: the outcome still counts
        return path


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        print(message, file=sys.stderr)


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _http(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    reason = {200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden",
              404: "Not Found", 411: "Length Required"}.get(status, "Error")
    head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
    if headers is None or "Content-Type" not in headers:
        head.append("Content-Type: application/json")
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + body


def _error_body(body: bytes, headers: dict[str, str], request_id: str) -> dict[str, Any]:
    """The error an environment posted, in Lambda's shape."""
    kind = headers.get("lambda-runtime-function-error-type", "")
    try:
        error = json.loads(body) if body else {}
    except ValueError:
        error = None
    if not isinstance(error, dict):
        error = {"errorMessage": body.decode(errors="replace")}
    if not isinstance(error.get("errorMessage"), str):
        error["errorMessage"] = "" if error.get("errorMessage") is None else json.dumps(
            error["errorMessage"])
    if not isinstance(error.get("errorType"), str) or not error["errorType"]:
        error["errorType"] = kind or "Unhandled"
    if "requestId" in error or request_id:
        posted = error.get("requestId")
        error["requestId"] = posted if isinstance(posted, str) and posted else request_id
    if not isinstance(error.get("stackTrace"), list):
        error["stackTrace"] = []
    return error


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
            continue
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


def _max_rss_mb(env: _Env) -> int:
    """The peak resident size of ``env``'s process in MB (Lambda's Max Memory Used). Its
    ``status`` file is opened once and read again from its start each time (the kernel
    writes it anew; about a third of the cost was finding and opening it)."""
    try:
        if env.status < 0:
            env.status = os.open(f"/proc/{env.pid}/status", os.O_RDONLY | os.O_CLOEXEC)
        status = os.pread(env.status, 8192, 0)
        at = status.index(b"VmHWM:") + 6
        return max(1, math.ceil(int(status[at:status.index(b"kB", at)]) / 1024))
    except (OSError, ValueError):
        return 0


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
