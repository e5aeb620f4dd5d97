"""One invocation of the worker: connect back, say hello, serve commands, clean up.

Theory of operation
-------------------
:func:`run` is all the Lambda handler calls. It makes a private temporary directory
(``tempfile.mkdtemp``; the only place the worker writes or deletes anything), then:

* **mode 1** (default): dial ``addr:port``; with ``cacert`` in the event, wrap the socket in
  stdlib TLS (1.2 or later), presenting the worker certificate (``wrkcrt``/``wrkkey``, written
  0600 inside the private directory) and verifying the coordinator's chain against ``cacert``
  (no host name check: the CA is private to the run). A coordinator that fails verification
  gets nothing: no hello, no command. Without ``cacert`` the link is plain TCP (``--no-tls``
  debugging runs) and a warning is logged. The worker speaks first with ``OK:HELLO:<token>``,
  then serves commands (:func:`mu.worker.commands.dispatch`) until ``quit:``, the coordinator
  going away, ``timeout`` seconds without a command (default 300; the clock does not run
  while background jobs are busy), or the Lambda deadline.
* **mode 0**: render and run the function's command once; the summary carries its exit
  status and output.

Connecting is retried: a coordinator holding many strangers' connections may drop ours
before our handshake ends (it drops the oldest unauthenticated connection for a newcomer,
and any that is slow). A reset, an EOF or a timeout while connecting or shaking hands is
tried again after a backoff (:data:`CONNECT_BACKOFF` doubling to :data:`CONNECT_BACKOFF_MAX`,
with jitter) until the worker's own budget is spent: ``timeout`` seconds, or the Lambda
deadline if sooner. A refused connection (nothing listens) and a coordinator certificate
that fails verification are final at once.

The coordinator socket is non-blocking for reads: a readable socket may carry only TLS
housekeeping (TLS 1.3 session tickets), and a blocking read would then hang past the idle
deadline. Writes switch it to a bounded blocking mode for the duration of ``sendall``.

Blocking mode (``nonblock`` 0) still runs ``retrieve``/``upload``/``run`` in a job thread:
the session serves no further command until the job's response is queued, but it keeps
reading the socket, so a coordinator that goes away mid-job gets the job killed at once
instead of after it finishes.

Threads: only the session's thread touches the coordinator socket. Background jobs, the
peer reader and the link thread call :meth:`Session.send`, which appends to a queue and wakes
the session's ``select()`` through a socket pair; the session thread frames and writes the
queue. Writes are therefore serialised and responses leave in the order they were queued.

The private directory is ``mu-worker-<pid>-<random>`` in the temporary folder (``/tmp`` on
Lambda). A Lambda execution environment is reused while warm, and its ``/tmp`` with it,
also after a runtime that died mid-invocation (a timeout, a crash) was started again; so an
invocation that owns its process first removes the directories that no running invocation
can own: those of a pid that no longer runs, and those of this very process that no
invocation of it uses now (:func:`sweep_stale`). Directories of live processes, and
anything not named so or not ours, are left alone.

At the end the named links are closed (:meth:`mu.worker.peer.Links.close`: their thread
joined, sockets closed, spools deleted, waiting ``send``/``recv`` jobs woken), every
background job is stopped (:meth:`mu.worker.jobs.JobSet.close` kills the process groups and
joins the threads, then every process a command left, detached or not:
:mod:`mu.worker.reaper`), the peer link and socket are closed, and the private directory is
removed. The return value is a JSON-able summary dict:

``mode``, ``exit`` (``quit``, ``disconnected``, ``idle_timeout``, ``lambda_deadline``,
``protocol_error``, ``tls_error``, ``connect_error``, ``bad_event``, ``fault`` (a rehearsal
``hang`` or ``drop`` was injected, see :mod:`mu.faults`; an injected ``crash`` ends the
process instead), ``internal_error`` (a bug, logged with its traceback) or, in mode 0,
``done``),
``reason`` (human text), ``commands`` (commands served), ``errors`` (FAIL responses sent),
``last_error``, ``jobs`` (transfers and commands run off the session thread, blocking or
not), ``tmpdir`` (the removed directory);
mode 0 adds ``retval``, ``output`` and ``command``.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import random
import re
import select
import shutil
import socket
import ssl
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from mu.errors import ProtocolError
from mu.protocol import (
    CLOSED,
    NEED_DATA,
    REQUEST_ID_INFO,
    FrameDecoder,
    Sentinel,
    decode_text,
    encode_text,
)
from mu.worker import reaper
from mu.worker.commands import Worker, dispatch, initial_vals, render
from mu.worker.jobs import JobSet
from mu.worker.s3 import S3

if TYPE_CHECKING:
    from mu.worker.peer import Links, PeerLink

__all__ = [
    "DEFAULT_TIMEOUT", "TMP_PREFIX", "EventError", "Session", "client_context", "run",
    "sweep_stale",
]

log = logging.getLogger("mu.worker")

DEFAULT_TIMEOUT: Final = 300
"""Seconds without a command after which a worker gives up, unless the event says otherwise."""
CONNECT_TIMEOUT: Final = 30.0
"""Bound on one attempt at the TCP connect and the TLS handshake with the coordinator."""
CONNECT_BACKOFF: Final = 0.05
"""Seconds before the second connect attempt; doubled after each failed one."""
CONNECT_BACKOFF_MAX: Final = 2.0
"""The longest wait between two connect attempts."""
IO_TIMEOUT: Final = 60.0
"""Bound on one blocking socket write or read once the session runs."""
DEADLINE_MARGIN: Final = 1.0
"""Seconds kept in hand before the Lambda deadline to clean up and return."""


class EventError(ValueError):
    """The invocation payload lacks a required field or has a malformed one."""


def run(
    event: Mapping[str, Any],
    *,
    command: str = "",
    context: Any = None,
    cwd: str | None = None,
    own_process: bool = False,
) -> dict[str, Any]:
    """Serve one invocation and return its summary (see the module docstring).

    Args:
        event: the invocation payload (DESIGN §3).
        command: the function's command template (from ``mu_command.json``).
        context: the Lambda context; its ``get_remaining_time_in_millis()`` bounds the
            session. ``None`` outside Lambda.
        cwd: where commands run (default: the current directory, which on Lambda is the
            function's directory).
        own_process: the process runs nothing but worker invocations (the Lambda handler):
            it becomes the child subreaper of what commands start, and at the end every
            process left in its tree is killed, marked or not (:mod:`mu.worker.reaper`);
            and private directories left by earlier invocations are removed first
            (:func:`sweep_stale`).

    Returns:
        A JSON-able summary dict. Failures are reported in it, never raised.
    """
    summary: dict[str, Any]
    if own_process:
        reaper.become_subreaper()
        sweep_stale()
    tmpdir = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-")
    with _in_use_lock:
        _in_use.add(tmpdir)
    try:
        mode = _int(event, "mode", 1)
        if mode == 0:
            summary = _run_once(event, command, tmpdir, cwd or os.getcwd(), own_process)
        elif mode == 1:
            summary = Session(
                event, command, tmpdir, cwd or os.getcwd(), context, own_process=own_process
            ).serve()
        else:
            raise EventError(f"mode must be 0 or 1, got {mode}")
    except EventError as exc:
        log.error("bad invocation payload: %s", exc)
        summary = _summary(event, "bad_event", str(exc))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
        with _in_use_lock:
            _in_use.discard(tmpdir)
    summary["tmpdir"] = tmpdir
    return summary


TMP_PREFIX: Final = "mu-worker-"
"""Start of every private directory's name, followed by ``<pid>-``."""
_STALE = re.compile(re.escape(TMP_PREFIX) + r"(\d+)-[A-Za-z0-9_]+")
_in_use: set[str] = set()  # the private directories of this process's running invocations
_in_use_lock = threading.Lock()


def sweep_stale(parent: str | None = None) -> list[str]:
    """Remove the private directories no running invocation owns (module docstring).

    Args:
        parent: the temporary folder (default: :func:`tempfile.gettempdir`).

    Returns:
        The directories removed.
    """
    parent = parent or tempfile.gettempdir()
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    removed = []
    me, uid = os.getpid(), os.getuid()
    for name in names:
        found = _STALE.fullmatch(name)
        if not found:
            continue
        path = os.path.join(parent, name)
        pid = int(found.group(1))
        with _in_use_lock:
            if path in _in_use:
                continue
        if pid != me and _running(pid):
            continue
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode) and info.st_uid == uid:
            log.warning("removing %s, left by an earlier invocation", path)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _int(event: Mapping[str, Any], name: str, default: int) -> int:
    value = event.get(name, default)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise EventError(f"{name} must be an integer, got {value!r}") from None


def _summary(event: Mapping[str, Any], exit_code: str, reason: str) -> dict[str, Any]:
    try:
        mode = _int(event, "mode", 1)
    except EventError:
        mode = 1
    return {
        "mode": mode,
        "exit": exit_code,
        "reason": reason,
        "commands": 0,
        "errors": 0,
        "last_error": "",
        "jobs": 0,
    }


def _run_once(
    event: Mapping[str, Any], command: str, tmpdir: str, cwd: str, own_process: bool
) -> dict[str, Any]:
    if not command.strip():
        raise EventError("mode 0 needs a command, and the function has none")
    rendered = render(command, initial_vals(event), tmpdir)
    jobs = JobSet(lambda _text: None, own_process=own_process)
    try:
        result = jobs.run_process(rendered, cwd)
    except OSError as exc:
        summary = _summary(event, "done", f"cannot start {rendered!r}: {exc}")
        summary.update(mode=0, retval=-1, output="", command=rendered, errors=1)
        return summary
    finally:
        jobs.close()
    summary = _summary(event, "done", f"command exited with status {result.returncode}")
    summary.update(
        mode=0,
        retval=result.returncode,
        output=result.output,
        command=rendered,
        errors=int(result.returncode != 0),
    )
    return summary


def client_context(event: Mapping[str, Any], tmpdir: str) -> ssl.SSLContext | None:
    """The client TLS context for the coordinator and peers, or ``None`` without ``cacert``.

    Args:
        event: the invocation payload (``cacert``, ``wrkcrt``, ``wrkkey``).
        tmpdir: the private directory where the worker's PEMs are written (mode 0600).

    Raises:
        EventError: ``cacert`` without the worker's certificate and key, or unusable PEMs.
    """
    cacert = str(event.get("cacert") or "")
    if not cacert:
        return None
    cert, key = str(event.get("wrkcrt") or ""), str(event.get("wrkkey") or "")
    if not cert or not key:
        raise EventError("cacert is set but wrkcrt or wrkkey is missing")
    tls_dir = os.path.join(tmpdir, ".tls")
    os.mkdir(tls_dir, 0o700)
    cert_path, key_path = os.path.join(tls_dir, "worker.crt"), os.path.join(tls_dir, "worker.key")
    for path, pem in ((cert_path, cert), (key_path, key)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cadata=cacert)
        context.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        raise EventError(f"unusable TLS material in the payload: {exc}") from exc
    return context


class Session:
    """A mode-1 session: one connection to the coordinator.

    Args:
        event: the invocation payload.
        command: the function's command template.
        tmpdir: the private temporary directory (removed by :func:`run`, not here).
        cwd: where commands run.
        context: the Lambda context, or ``None``.
        own_process: see :func:`run`.

    Raises:
        EventError: ``addr``, ``port`` or ``token`` is missing or malformed.
    """

    def __init__(
        self,
        event: Mapping[str, Any],
        command: str,
        tmpdir: str,
        cwd: str,
        context: Any,
        *,
        own_process: bool = False,
    ) -> None:
        self.event = event
        self.addr = str(event.get("addr") or "")
        self.port = _int(event, "port", 0)
        self.token = str(event.get("token") or "")
        missing = [
            n for n, v in (("addr", self.addr), ("port", self.port), ("token", self.token)) if not v
        ]
        if missing:
            raise EventError(f"missing required field(s): {', '.join(missing)}")
        self.timeout = float(_int(event, "timeout", DEFAULT_TIMEOUT))
        self.hard_deadline = _lambda_deadline(context)
        # the invocation's id, told to the coordinator after the hello: the bill finds the
        # invocation's REPORT line by it (empty outside Lambda: nothing is told)
        self.request_id = str(getattr(context, "aws_request_id", "") or "")
        self.tmpdir = tmpdir
        self.tls = client_context(event, tmpdir)  # may raise EventError: before any socket
        self._outbox: collections.deque[str] = collections.deque()
        self._outbox_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self.errors = 0
        self.last_error = ""
        self.worker = Worker(
            vals=initial_vals(event),
            command=command,
            tmpdir=tmpdir,
            cwd=cwd,
            send=self.send,
            jobs=JobSet(self.send, own_process=own_process),
            s3=S3(str(event.get("region") or "")),
            connect_peer=self._connect_peer,
            make_links=self._make_links,
            run_blocking=self._run_blocking,
            faults_allowed=bool(_int(event, "faults", 0)),
        )
        self._busy = threading.Event()

    def send(self, text: str) -> None:
        """Queue a message for the coordinator (any thread)."""
        with self._outbox_lock:
            self._outbox.append(text)
        # BlockingIOError: the pair is full, so a wake-up is pending anyway; OSError: closed.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _run_blocking(self, name: str, job: Callable[[], str]) -> None:
        # A blocking job runs in a job thread while this thread serves no command but keeps
        # reading, so that the coordinator going away kills it (see _loop).
        self._busy.set()
        self.worker.jobs.start(name, job, on_done=self._not_busy)

    def _not_busy(self) -> None:
        self._busy.clear()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # mu.worker.peer is imported only by a job that opens a link (png2y4m opens none): its
    # import is about 2.5 ms of CPU, more in a forked environment (copy-on-write).
    def _connect_peer(self, host: str, port: int, first: str) -> PeerLink:
        from mu.worker.peer import open_link

        return open_link(host, port, first, self.tls, self.send, CONNECT_TIMEOUT)

    def _make_links(self) -> Links:
        from mu.worker.peer import Links

        return Links(
            self.tmpdir, self.send, self.tls, self.token, str(self.event.get("relay") or ""),
            recv_timeout=self.timeout, connect_timeout=CONNECT_TIMEOUT,
        )

    def serve(self) -> dict[str, Any]:
        """Connect, say hello, serve until the end; always clean up.

        Returns:
            The summary dict.
        """
        sock: socket.socket | None = None
        try:
            try:
                sock = self._connect()
            except ssl.SSLCertVerificationError as exc:
                return self._finish(
                    "tls_error", f"coordinator certificate rejected: {exc.verify_message}"
                )
            except ssl.SSLError as exc:
                return self._finish(
                    "tls_error", f"TLS handshake with the coordinator failed: {exc}"
                )
            except OSError as exc:
                return self._finish(
                    "connect_error", f"cannot connect to {self.addr}:{self.port}: {exc}"
                )
            try:
                exit_code, reason = self._loop(sock)
            except Exception as exc:  # a bug: report it in the summary, still clean up
                log.exception("worker session failed")
                return self._finish("internal_error", f"{type(exc).__name__}: {exc}")
            return self._finish(exit_code, reason)
        finally:
            self._shutdown(sock)

    def _connect(self) -> socket.socket:
        """Connect and say hello, retrying transient failures within the budget (module
        docstring); the last failure is raised."""
        deadline = min(self.hard_deadline, time.monotonic() + self.timeout)
        backoff = CONNECT_BACKOFF
        for attempt in itertools.count(1):
            try:
                left = max(CONNECT_BACKOFF, deadline - time.monotonic())
                return self._connect_once(min(CONNECT_TIMEOUT, left))
            except (ssl.SSLCertVerificationError, ConnectionRefusedError):
                raise  # final: a wrong coordinator, or nothing listening
            except (ConnectionError, TimeoutError, ssl.SSLEOFError, ssl.SSLZeroReturnError,
                    ssl.SSLSyscallError) as exc:
                wait = random.uniform(backoff / 2, backoff)
                if time.monotonic() + wait + CONNECT_BACKOFF >= deadline:
                    raise
                log.warning("connect attempt %d to %s:%d failed (%s); again in %.2f s",
                            attempt, self.addr, self.port, exc, wait)
                time.sleep(wait)
                backoff = min(2 * backoff, CONNECT_BACKOFF_MAX)
        raise AssertionError("unreachable")

    def _connect_once(self, timeout: float) -> socket.socket:
        # An ASCII address goes to getaddrinfo as bytes: a str would go through the idna
        # codec, whose first use imports encodings.idna, stringprep and unicodedata, about
        # 3 ms of CPU in every fresh execution environment.
        host = self.addr.encode("ascii") if self.addr.isascii() else self.addr
        raw = socket.create_connection(
            (host, self.port), timeout=timeout)  # type: ignore[arg-type]  # (getaddrinfo's)
        if self.tls is None:
            log.warning("no cacert in the payload: talking to the coordinator over plain TCP")
            sock = raw
        else:
            try:
                sock = self.tls.wrap_socket(raw)
            except BaseException:
                raw.close()
                raise
        try:
            sock.settimeout(IO_TIMEOUT)
            hello = encode_text(f"OK:HELLO:{self.token}")
            if self.request_id:
                hello += encode_text(REQUEST_ID_INFO + self.request_id)
            sock.sendall(hello)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _flush(self, sock: socket.socket) -> bool:
        with self._outbox_lock:
            texts = list(self._outbox)
            self._outbox.clear()
        for text in texts:
            if text.startswith("FAIL"):
                self.errors += 1
                self.last_error = text
        if texts:
            # Reads are non-blocking (see _loop); a write may block, within IO_TIMEOUT.
            sock.settimeout(IO_TIMEOUT)
            try:
                sock.sendall(b"".join(encode_text(t) for t in texts))
            finally:
                sock.setblocking(False)
        return bool(texts)

    def _loop(self, sock: socket.socket) -> tuple[str, str]:
        decoder = FrameDecoder(peer=f"coordinator {self.addr}:{self.port}")
        idle_deadline = time.monotonic() + self.timeout
        pending = getattr(sock, "pending", lambda: 0)
        frame: bytes | Sentinel
        while True:
            try:
                if self._flush(sock):
                    idle_deadline = time.monotonic() + self.timeout
                if self._busy.is_set():
                    # A blocking job runs: serve nothing, but notice the coordinator leaving.
                    if decoder.at_eof:
                        return self._eof_while_busy(decoder)
                    frame = NEED_DATA
                else:
                    frame = decoder.next_frame()
            except ProtocolError as exc:
                return "protocol_error", str(exc)
            except OSError as exc:
                return "disconnected", f"coordinator connection lost while sending: {exc}"
            if frame is CLOSED:
                return "disconnected", "the coordinator closed the connection"
            if isinstance(frame, bytes):
                fault = self.worker.fault_fires()
                if fault:
                    return self._inject(fault, sock)
                if dispatch(self.worker, decode_text(frame)):
                    try:
                        self._flush(sock)
                    except OSError as exc:
                        return "disconnected", f"coordinator connection lost while sending: {exc}"
                    return "quit", "the coordinator said quit"
                idle_deadline = time.monotonic() + self.timeout
                continue
            assert frame is NEED_DATA
            now = time.monotonic()
            if now >= self.hard_deadline:
                return "lambda_deadline", "the Lambda deadline is near"
            wait = self.hard_deadline - now
            if not self.worker.jobs.running:
                if now >= idle_deadline:
                    return "idle_timeout", f"no command for {self.timeout:g} seconds"
                wait = min(wait, idle_deadline - now)
            if not pending():
                timeout = None if wait == float("inf") else max(0.0, wait)
                readable, _, _ = select.select([sock, self._wake_r], [], [], timeout)
                if self._wake_r in readable:
                    self._wake_r.recv(4096)
                if sock not in readable:
                    continue
            try:
                data = sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                # The socket is non-blocking: readable bytes may be half a TLS record or a
                # post-handshake message (TLS 1.3 session tickets) with no data for us.
                continue
            except OSError as exc:
                return "disconnected", f"coordinator connection lost: {exc}"
            decoder.receive_data(data)

    def _inject(self, fault: str, sock: socket.socket) -> tuple[str, str]:
        """Carry out an armed rehearsal fault instead of the next command."""
        log.warning("injecting fault %r after %d commands", fault, self.worker.commands_served)
        if fault == "crash":
            logging.shutdown()
            os._exit(70)  # as a runtime crash would: no cleanup, no summary
        if fault == "drop":
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            return "fault", "injected fault: dropped the connection"
        # hang: answer nothing more, but notice the coordinator giving up (or the deadline).
        while (wait := self.hard_deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([sock], [], [], None if wait == float("inf") else wait)
            if not readable:
                continue
            try:
                if not sock.recv(65536):
                    break
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                continue
            except OSError:
                break
        return "fault", "injected fault: hung until the coordinator gave up"

    def _eof_while_busy(self, decoder: FrameDecoder) -> tuple[str, str]:
        """The coordinator closed while a blocking job ran; nothing more can be answered.

        A coordinator may say ``quit:`` and close at once after the job's response (which is
        already on its way): that is a quit. Anything else is a disconnect. Either way the
        job is killed on the way out.
        """
        while isinstance(frame := decoder.next_frame(), bytes):
            if decode_text(frame).partition(":")[0] == "quit":
                self.worker.commands_served += 1
                return "quit", "the coordinator said quit"
        return "disconnected", "the coordinator closed the connection during a blocking job"

    def _finish(self, exit_code: str, reason: str) -> dict[str, Any]:
        log.info("worker session ends: %s (%s)", exit_code, reason)
        summary = _summary(self.event, exit_code, reason)
        summary.update(
            commands=self.worker.commands_served,
            errors=self.errors,
            last_error=self.last_error,
            jobs=self.worker.jobs.started,
        )
        return summary

    def _shutdown(self, sock: socket.socket | None) -> None:
        # Links first: ending them wakes the send/recv jobs waiting on them, so the jobs can
        # be joined at once.
        if self.worker.links is not None:
            self.worker.links.close()
        stuck = self.worker.jobs.close()
        if stuck:
            log.warning("background jobs still running at exit: %s", ", ".join(stuck))
        peer, self.worker.peer = self.worker.peer, None
        if peer is not None:
            peer.close()
        self.worker.s3.close()
        if sock is not None:
            _close(sock)
        self._wake_r.close()
        self._wake_w.close()


def _close(sock: socket.socket) -> None:
    """Close the coordinator link, sending a TLS close_notify first (without waiting for
    the peer's: non-blocking, so ``unwrap`` stops with want-read once ours is sent)."""
    if isinstance(sock, ssl.SSLSocket):
        # SSLWantReadError: ours went out, theirs is not awaited; OSError/ValueError: the
        # peer is gone. Either way closing is all that is left.
        with contextlib.suppress(OSError, ValueError):
            sock.setblocking(False)
            sock.unwrap()
    sock.close()


def _lambda_deadline(context: Any) -> float:
    """Monotonic time at which to stop, from the Lambda context (infinity outside Lambda)."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return float("inf")
    return time.monotonic() + float(remaining()) / 1000.0 - DEADLINE_MARGIN
