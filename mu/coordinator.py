"""The coordinator: one thread, one ``selectors`` loop, thousands of workers.

Theory of operation
-------------------
The coordinator is the pump around two sans-IO objects: each worker connection's
:class:`~mu.actor.Actor` (bytes in, state machine, bytes out) and the run's
:class:`~mu.scheduler.Scheduler` (who works on what, retries, deadlines, stragglers,
starvation, fault plans). It owns the sockets, TLS, the selector, the launch threads and
the clock; it feeds the scheduler what happened and applies the actions it returns. It
decides nothing about the work itself. The selector, listener, wake-up pair and deadline
heap are a :class:`mu.net.Server` (the relay's pump uses one too).

1. **Accept** connections at each wake-up (a batch at most); the listener never pauses.
   Each gets a :class:`~mu.net.Pipe` (TLS, mutual, unless disabled), a ClientHello deadline
   (short: an idle or one-byte-a-second peer goes) and a handshake deadline. A handshake
   starts when a whole ClientHello has arrived, at most ``max_handshakes`` at a time; the
   next ones wait, accepted, in a queue. Connections not yet authenticated are bounded in
   all and per source address (:class:`~mu.net.Admission`): when full, the oldest is dropped
   for the newcomer, so strangers cannot lock workers out. Running out of file descriptors
   drops the oldest such connection too, or, with none, takes the listener out of the
   selector for a moment (no busy loop on ``EMFILE``).
2. **Hello.** After the handshake the worker must say ``OK:HELLO:<token>`` before the hello
   deadline. A failed handshake, a wrong or missing token, or silence closes the connection
   and counts it as *rejected*, never as a worker. A worker that is in goes to the
   scheduler (``hello``), which assigns it an actor (its fault plan goes first, then the
   job's first state starts) or dismisses it (``quit:``).
3. **Work.** Every message a worker sends advances its actor's state machine and the
   commands that come out are written back. When an actor finishes or fails (an error
   state, a protocol error, a disconnect, a worker that stops reading) the scheduler is
   told, and answers with a record of the attempt and what follows (a retry's launch, a
   twin told to quit).
4. **Launches** run in helper threads (accepting starts at once); each call's outcome is
   handed to the loop, which tells the scheduler (``launched``).
5. **Time.** Each turn of the loop ends with the scheduler's ``tick(now)``: ``-m`` and run
   deadlines, starvation and stragglers come back as actions. The run ends when the
   scheduler says :class:`~mu.scheduler.Stop` (every actor has ended), or on :meth:`stop`.

Costs per message do not grow with N: readiness comes from the selector, and deadlines sit
in heaps whose stale entries are skipped when they surface (nothing scans all workers).
Everything a peer can make the coordinator hold is bounded: frame size, handshake and hello
time, queued output (a worker that stops reading is dropped), and open connections.
A peer's misbehaviour ends that peer's connection only.
"""

from __future__ import annotations

import errno
import itertools
import logging
import secrets
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from OpenSSL import SSL

from mu.actor import Actor, Failed, Finished, HelloReceived, Lifecycle, Rejected
from mu.config import RunConfig
from mu.errors import MuError, TransportError
from mu.launch import Launcher, LaunchReport, LaunchSpec, WorkerPayload
from mu.net import WAKE, Admission, Pipe, Server, listen
from mu.protocol import NEED_DATA, encode_text
from mu.scheduler import (
    Action,
    Assign,
    Dismiss,
    FailActor,
    Launch,
    Record,
    Scheduler,
    Stop,
    Terminate,
)
from mu.states import MachineState, TerminatedState
from mu.tls import KeySet, server_context

__all__ = ["ActorResult", "Coordinator", "RunResult", "Statistics"]

log = logging.getLogger(__name__)

_STATUS_EVERY = 0.25  # seconds between status callbacks


@dataclass(frozen=True)
class ActorResult:
    """How one actor (attempt) ended.

    ``timestamps`` are ``(seconds since the run started, state name)``. ``state`` is the
    state it finished in, or the state it was in when it failed (not ``ErrorState``).
    ``attempt`` counts from 1 (0: no worker ever took the actor), the same number the
    report, the log and the run record show. ``retry`` is the retry policy's verdict on a
    failed attempt (:func:`mu.retry.decide`), e.g. ``"retried: the worker was lost"``.
    """

    actor: int
    ok: bool
    state: str
    error: str | None
    timestamps: tuple[tuple[float, str], ...]
    attempt: int = 0
    peer: str = ""
    fault: str | None = None  # the rehearsal fault planned for this attempt
    retry: str = ""
    request_id: str = ""  # the worker's Lambda invocation, as it told (empty: not told)
    launched: float = 0.0  # the launch call that started its worker, seconds since start
    ended: float = 0.0  # when the coordinator recorded its end, seconds since start
    s3: Mapping[str, int] = field(default_factory=dict)  # S3 transfers answered, by kind

    def to_record(self) -> dict[str, Any]:
        """The run-record line (``-O``) for this attempt."""
        record = {
            "actor": self.actor,
            "attempt": self.attempt,
            "state": self.state,
            "ok": self.ok,
            "error": self.error,
            "timestamps": [[round(t, 6), name] for t, name in self.timestamps],
        }
        if self.fault:
            record["fault"] = self.fault
        if self.retry:
            record["retry"] = self.retry
        if self.request_id:
            record["request_id"] = self.request_id
        record["launched"] = round(self.launched, 6)
        record["ended"] = round(self.ended, 6)
        if any(self.s3.values()):
            record["s3"] = dict(self.s3)
        return record


@dataclass
class RunResult:
    """What a run did."""

    actors: list[ActorResult]
    rejected: int
    rejections: list[str]
    launch: LaunchReport | None
    launch_error: str | None
    wall: float
    messages_in: int
    messages_out: int
    launched: int = 0
    """Workers accepted by every launch of the run: the first, and those for retries and
    stragglers."""

    @property
    def final(self) -> list[ActorResult]:
        """Each actor's outcome, by actor number: the attempt that finished, else the last."""
        last: dict[int, ActorResult] = {}
        for result in self.actors:
            if not (result.actor in last and last[result.actor].ok):
                last[result.actor] = result
        return [last[n] for n in sorted(last)]

    @property
    def retried(self) -> list[ActorResult]:
        """The failed attempts whose actor was given to a new worker (or whose speculative
        twin went on), by actor and attempt."""
        final = {id(a) for a in self.final}
        return sorted((a for a in self.actors if id(a) not in final),
                      key=lambda a: (a.actor, a.attempt))

    @property
    def done(self) -> int:
        return sum(1 for a in self.final if a.ok)

    @property
    def errors(self) -> int:
        return sum(1 for a in self.final if not a.ok)

    @property
    def failed(self) -> list[ActorResult]:
        """The last attempt of each actor that failed, by actor."""
        return [a for a in self.final if not a.ok]

    @property
    def exit_status(self) -> int:
        """0 only if every actor's last attempt ended in a non-error terminal state."""
        return 0 if self.actors and not self.failed else 1

    def write_record(
        self, path: str | Path, fields: Mapping[tuple[int, int], Mapping[str, Any]] | None = None
    ) -> None:
        """Write the run record: one JSON object per actor attempt per line, with ``fields``
        (by actor and attempt: its cost) added."""
        import json

        with open(path, "w") as f:
            for result in sorted(self.actors, key=lambda a: (a.actor, a.attempt)):
                line = result.to_record()
                line.update((fields or {}).get((result.actor, result.attempt), {}))
                f.write(json.dumps(line) + "\n")


@dataclass(frozen=True)
class Statistics:
    """A snapshot of the run (see :meth:`Coordinator.statistics`)."""

    elapsed: float
    total: int
    waiting: int
    active: int
    done: int
    errors: int
    rejected: int
    connections: int
    messages_in: int
    messages_out: int
    launched: int | None
    states: Mapping[int, str] = field(default_factory=dict)
    drops: Mapping[str, int] = field(default_factory=dict)
    """Connections dropped before they authenticated, by cause (each also counts in
    ``rejected``): ``no_client_hello``, ``handshake_timeout``, ``evicted`` (the oldest, for a
    newcomer), ``over_max_connections``; ``accept_errors`` counts failed ``accept()`` calls."""


_OUT_OF_DESCRIPTORS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_BATCH: Final = 256
"""Connections accepted per wake-up at most (the selector reports the listener again)."""
_ACCEPT_PAUSE: Final = 0.05
"""Seconds the listener rests when accept() fails and no connection can be dropped for it."""


class _Conn:
    """One connection: its pipe, its actor and its pending output."""

    __slots__ = (
        "actor",
        "closing",
        "counted_out",
        "events",
        "fault",
        "hello_at",
        "hello_whole",
        "id",
        "out",
        "peer",
        "pipe",
        "slot",
        "tls_begun",
        "tls_done",
    )

    def __init__(self, cid: int, pipe: Pipe, actor: Actor, peer: str) -> None:
        self.id = cid
        self.pipe = pipe
        self.actor = actor
        self.peer = peer
        self.out = bytearray()
        self.tls_done = False
        self.tls_begun = False  # OpenSSL has read from it
        self.slot = False  # holds one of the max_handshakes places
        self.hello_whole = False  # a whole ClientHello was seen waiting
        self.closing = False
        self.counted_out = 0
        self.events = 0  # what the selector watches for (mu.net.Server.watch)
        self.fault: str | None = None
        self.hello_at = 0.0  # clock() when its hello came



class Coordinator:
    """Drives one run.

    Args:
        first_state: the job's first state class (it receives the worker's hello).
        job_config: the job's frozen configuration, handed to every state.
        run_config: how the run goes (:class:`~mu.config.RunConfig`).
        keys: the run's keys; ``None`` with ``run_config.tls`` means ephemeral keys.
        launcher: starts the workers; ``None`` launches nothing (workers join by hand).
        function_name: the function to invoke.
        regions: where to invoke it (round-robin).
        payload_fields: extra invocation payload fields (``bucket``, ``region``, ...).
        host_addr: the address workers dial back to (default: the listening address).
        clock: monotonic time source.
        status: called about four times a second with :meth:`statistics`.
    """

    def __init__(
        self,
        first_state: Callable[..., MachineState],
        job_config: Any,
        run_config: RunConfig,
        keys: KeySet | None = None,
        *,
        launcher: Launcher | None = None,
        function_name: str = "",
        regions: Sequence[str] = ("us-east-1",),
        payload_fields: Mapping[str, Any] | None = None,
        host_addr: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        status: Callable[[Statistics], None] | None = None,
    ) -> None:
        self.first_state = first_state
        self.job_config = job_config
        self.config = run_config
        if run_config.tls and keys is None:
            from mu.tls import generate_keys

            keys = generate_keys(days=2)
        self.keys = keys
        self.launcher = launcher
        self.function_name = function_name
        self.regions = tuple(regions)
        self.payload_fields = dict(payload_fields or {})
        self.host_addr = host_addr
        self.clock = clock
        self.status = status
        self.token = secrets.token_urlsafe(24)
        self._ctx: SSL.Context | None = server_context(keys) if keys and run_config.tls else None
        self._io = Server(clock)
        # Connections not yet authenticated (no hello yet), oldest first.
        self._admission: Admission[int] = Admission(
            run_config.max_unauthenticated, run_config.max_unauthenticated_per_address
        )
        self._handshaking = 0  # connections holding a handshake place
        self._queued: deque[_Conn] = deque()  # whole ClientHello in, waiting for a place
        self._accept_paused = False  # listener out of the selector: out of descriptors
        self._drops: dict[str, int] = {}
        self._bound: tuple[str, int] | None = None
        self._sched: Scheduler[_Conn] = Scheduler(run_config, can_launch=launcher is not None)
        self._conns: dict[int, _Conn] = {}
        self._ids = itertools.count()
        self._results: list[ActorResult] = []
        self._rejected = 0
        self._rejections: deque[str] = deque(maxlen=100)
        self._payload = b""
        self._launch: LaunchReport | None = None  # the first (main) launch
        # Launch calls that returned, (count, report, error, the main launch?), for the loop
        # to hand on; a replacement's call may return before the main one's.
        self._landed: deque[tuple[int, LaunchReport | None, str | None, bool]] = deque()
        self._launch_threads: list[threading.Thread] = []
        self._launch_starts: list[float] = []  # clock() of each launch call, in order
        self._t0 = clock()
        self._messages_in = 0
        self._messages_out = 0
        self._stop = False  # asked from outside (stop())
        self._over = False  # the scheduler said Stop

    # -- setup ---------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); binds first if needed."""
        if self._bound is None:
            self.bind()
        assert self._bound is not None
        return self._bound

    def bind(self) -> tuple[str, int]:
        """Listen on ``run_config.host:port`` (port 0: a free one).

        Raises:
            TransportError: the address cannot be bound.
        """
        if self._bound is not None:
            return self._bound
        config = self.config
        try:
            sock = listen(config.host, config.port, _backlog(config.workers_to_launch))
        except OSError as exc:
            raise TransportError(
                f"cannot listen on {config.host}:{config.port}: {exc.strerror}"
            ) from exc
        self._bound = self._io.open(sock)
        return self.address

    def payload(self) -> WorkerPayload:
        """The invocation payload every worker of this run receives (no coordinator key)."""
        host, port = self.address
        keys = self.keys if self.config.tls else None
        fields = dict(self.payload_fields)
        faults = self.config.faults
        if faults is not None and faults.for_workers:
            fields["faults"] = 1  # lets the workers accept the fault: command
        known = {k: fields.pop(k) for k in list(fields) if k in WorkerPayload.__dataclass_fields__}
        return WorkerPayload(
            addr=self.host_addr or host,
            port=port,
            token=self.token,
            cacert=keys.ca_cert if keys else "",
            wrkcrt=keys.worker_cert if keys else "",
            wrkkey=keys.worker_key if keys else "",
            extra=fields,
            **known,
        )

    def payload_json(self) -> bytes:
        """The payload as sent, checked never to carry the coordinator's private key."""
        forbidden = self.keys.server_key if self.keys else None
        return self.payload().to_json(forbidden_key=forbidden)

    # -- introspection -------------------------------------------------------------------

    def statistics(self) -> Statistics:
        """Counts for status displays; cheap enough to call a few times a second."""
        sched = self._sched
        done = sum(1 for r in self._results if r.ok)
        errors = sum(1 for r in self._results if not r.ok and not sched.is_pending(r.actor))
        states = {
            n: (c[0].actor.state.name if c[0].actor.state else "?")
            for n, c in sched.running.items()
        }
        for r in self._results:
            states[r.actor] = r.state
        return Statistics(
            elapsed=self.clock() - self._t0,
            total=len(self.config.actor_numbers()),
            waiting=sched.waiting,
            active=len(sched.running),
            done=done,
            errors=errors,
            rejected=self._rejected,
            connections=len(self._conns),
            messages_in=self._messages_in,
            messages_out=self._messages_out,
            launched=sched.accepted if self._launch else None,
            states=states,
            drops=dict(self._drops),
        )

    # -- the run -------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Bind, launch, drive every worker until every actor has ended; return the result."""
        self.bind()
        self._t0 = self.clock()
        self._payload = self.payload_json()
        self._apply(self._sched.start(self._t0))
        try:
            self._loop()
        finally:
            self._shutdown()
        return RunResult(
            actors=list(self._results),
            rejected=self._rejected,
            rejections=list(self._rejections),
            launch=self._launch,
            launch_error=self._sched.launch_error,
            wall=self.clock() - self._t0,
            messages_in=self._messages_in,
            messages_out=self._messages_out,
            launched=self._sched.accepted,
        )

    def stop(self) -> None:
        """Ask a running loop (in another thread) to end; unfinished actors fail."""
        self._stop = True
        self._io.wake()

    def _start_launch(self, count: int) -> None:
        """Launch ``count`` workers from a helper thread (the loop keeps serving)."""
        spec = LaunchSpec(self.function_name, self._payload, count, self.regions)
        self._launch_starts.append(self.clock())
        thread = threading.Thread(
            target=self._launch_workers, args=(spec, not self._launch_threads),
            name="mu-launch", daemon=True,
        )
        self._launch_threads.append(thread)
        thread.start()

    def _launch_workers(self, spec: LaunchSpec, main: bool) -> None:
        assert self.launcher is not None
        report: LaunchReport | None = None
        error: str | None = None
        try:
            report = self.launcher.launch(spec)
        except MuError as exc:  # LaunchError, or ConfigError (credentials gone meanwhile)
            error = str(exc)
            report = getattr(exc, "report", None)
        finally:
            self._landed.append((spec.count, report, error, main))  # the loop hands it on
            self._io.wake()

    def _land(self) -> None:
        """Tell the scheduler about the launch calls that returned."""
        now = self.clock()
        while self._landed:
            count, report, error, main = self._landed.popleft()
            if main:
                self._launch = report
            self._sched.launched(count, report.accepted if report else 0, error, now)

    def _loop(self) -> None:
        io = self._io
        select = io.selector.select
        sched = self._sched
        progress = _progress
        next_status = 0.0
        while not self._over and not self._stop:
            now = self.clock()
            timeout = _STATUS_EVERY if self.status else 1.0
            wake_at = io.earliest(sched.wake_at)
            if wake_at is not None:
                timeout = max(0.0, min(timeout, wake_at - now))
            for key, mask in select(timeout):
                data = key.data
                if data is None:
                    self._accept()
                elif data is WAKE:
                    io.drain_wake()
                else:
                    self._service(data, mask)
            if self._queued:
                self._dequeue()
            if self._landed:
                self._land()
            now = self.clock()
            self._expire(now)
            self._apply(sched.tick(now, connections=len(self._conns), progress=progress))
            if self.status and now >= next_status:
                next_status = now + _STATUS_EVERY
                self.status(self.statistics())
        if not self._over:  # stopped from outside
            self._apply(sched.stop("the run was stopped"))
        if self.status:
            self.status(self.statistics())

    # -- applying the scheduler's actions -------------------------------------------------

    def _apply(self, actions: Sequence[Action[_Conn]]) -> None:
        for action in actions:
            if isinstance(action, Assign):
                self._assign(action)
            elif isinstance(action, Record):
                self._record(action)
            elif isinstance(action, Terminate):
                self._terminate(action)
            elif isinstance(action, Dismiss):
                action.worker.actor.dismiss()
                action.worker.closing = True
            elif isinstance(action, Launch):
                if action.why:
                    log.warning("%s", action.why)
                self._start_launch(action.count)
            elif isinstance(action, FailActor):
                self._results.append(ActorResult(action.actor, False, "NotStarted",
                                                 action.reason, ()))
            elif isinstance(action, Stop):
                self._over = True

    def _assign(self, action: Assign[_Conn]) -> None:
        conn = action.worker
        fault = action.fault
        if fault is not None:
            conn.out += encode_text(fault.command())  # before the job's first command
            if fault.kind or fault.s3_error:
                conn.fault = str(fault)
        actor = conn.actor
        before = actor.messages_in
        # a job may act on its attempt number (info["attempt"], from 1), e.g. a retry that
        # knows what went with its predecessor
        actor.start(action.actor, self.first_state, self.job_config,
                    info={"attempt": action.attempt})
        self._messages_in += actor.messages_in - before
        self._events(conn)

    def _record(self, action: Record[_Conn]) -> None:
        """An attempt ended: its result, from the actor's state and the scheduler's verdict."""
        conn = action.worker
        state = conn.actor.state
        stamps = tuple((t - self._t0, name) for t, name in (state.timestamps if state else ()))
        where = state.name if action.ok and state else _failed_in(state)
        verdict = action.verdict
        # the latest launch before its hello started this worker (as far as can be seen)
        launched = max((t for t in self._launch_starts if t <= conn.hello_at), default=self._t0)
        self._results.append(ActorResult(
            action.actor, action.ok, where, action.error, stamps, action.attempt, conn.peer,
            conn.fault, verdict.why if verdict else "", conn.actor.request_id,
            launched - self._t0, self.clock() - self._t0, dict(conn.actor.s3_requests),
        ))
        if verdict is not None and not self._sched.stopping:
            # a run being stopped reports its actors once, in the report
            log.warning("actor %d attempt %d failed in %s: %s (%s)", action.actor,
                        action.attempt, where, action.error, verdict.why)

    def _terminate(self, action: Terminate[_Conn]) -> None:
        """End an attempt the scheduler has ended (and records itself)."""
        conn = action.worker
        if action.quit:  # a twin that lost: a healthy worker, told to go
            conn.actor.send_command("quit:")
        conn.actor.terminate(action.reason)
        self._events(conn)
        if action.quit:
            self._flush(conn)  # sends the quit:, then closes
        else:
            self._close(conn)

    # -- connections ---------------------------------------------------------------------

    def _accept(self) -> None:
        listener = self._io.listener
        assert listener is not None
        # At most a batch per wake-up: a crowd that reconnects as fast as it is dropped must
        # not keep the loop here, away from the workers' connections.
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS...: the rest wait in the backlog
                self._drop_count("accept_errors")
                oldest = self._admission.oldest()
                if oldest is not None and exc.errno in _OUT_OF_DESCRIPTORS:
                    self._drop(self._conns[oldest], "evicted",
                               f"dropped for a newcomer: accept() failed ({exc.strerror})")
                    continue
                log.warning("accept failed: %s; pausing the listener for %g s", exc,
                            _ACCEPT_PAUSE)
                self._io.selector.unregister(listener)
                self._accept_paused = True
                self._io.at(_ACCEPT_PAUSE, -1, "listen")
                return
            peer = f"{addr[0]}:{addr[1]}"
            if len(self._conns) >= self.config.max_connections:
                oldest = self._admission.oldest()
                if oldest is None:
                    self._drop_count("over_max_connections")
                    self._reject_count(f"{peer}: over {self.config.max_connections} connections")
                    sock.close()
                    continue
                self._drop(self._conns[oldest], "evicted", "dropped for a newcomer: "
                           f"{self.config.max_connections} connections open")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            cid = next(self._ids)
            for old in self._admission.admit(cid, str(addr[0])):
                self._drop(self._conns[old], "evicted", self._full_reason(str(addr[0])))
            pipe = Pipe(sock, self._ctx, peer)
            actor = Actor(self.token, max_frame=self.config.max_frame, peer=peer, clock=self.clock)
            conn = _Conn(cid, pipe, actor, peer)
            conn.tls_done = self._ctx is None
            self._conns[cid] = conn
            self._io.watch(conn, selectors.EVENT_READ)
            if conn.tls_done:
                self._io.at(self.config.hello_timeout, cid, "hello")
            else:
                self._io.at(self.config.client_hello_timeout, cid, "client_hello")
                self._io.at(self.config.handshake_timeout, cid, "handshake")

    def _full_reason(self, address: str) -> str:
        config = self.config
        if self._admission.count(address) >= config.max_unauthenticated_per_address:
            return (f"dropped for a newcomer: {config.max_unauthenticated_per_address} "
                    f"unauthenticated connections from {address}")
        return (f"dropped for a newcomer: {config.max_unauthenticated} unauthenticated "
                "connections")

    def _drop(self, conn: _Conn, cause: str, reason: str) -> None:
        """Close a connection that never authenticated, counting why."""
        self._drop_count(cause)
        self._close(conn, rejected=reason)

    def _drop_count(self, cause: str) -> None:
        self._drops[cause] = self._drops.get(cause, 0) + 1

    def _tls_step(self, conn: _Conn) -> None:
        """A connection in its handshake is readable: begin (given a place) or go on."""
        if not conn.tls_begun:
            if conn.pipe.client_hello_waiting():
                conn.hello_whole = True
                if self._handshaking >= self.config.max_handshakes:
                    self._io.watch(conn, 0)  # back when a place frees
                    self._queued.append(conn)
                    return
                conn.slot = True
                self._handshaking += 1
            # else a part of a ClientHello (or EOF): OpenSSL only buffers it, no place needed
            conn.tls_begun = True
        self._handshake(conn)

    def _release(self, conn: _Conn) -> None:
        """The handshake of ``conn`` ended: free its place."""
        if conn.slot:
            conn.slot = False
            self._handshaking -= 1

    def _dequeue(self) -> None:
        """Begin the handshakes that waited for a place, oldest first."""
        while self._queued and self._handshaking < self.config.max_handshakes:
            conn = self._queued.popleft()
            if conn.id not in self._conns:
                continue  # dropped meanwhile
            self._io.watch(conn, selectors.EVENT_READ)
            conn.slot = conn.tls_begun = True
            self._handshaking += 1
            self._handshake(conn)

    def _handshake(self, conn: _Conn) -> None:
        try:
            done = conn.pipe.handshake()
        except TransportError as exc:
            self._close(conn, rejected=str(exc))
            return
        if conn.pipe.wants_write:
            self._io.watch(conn, selectors.EVENT_READ | selectors.EVENT_WRITE)
        elif done or not conn.out:
            self._io.watch(conn, selectors.EVENT_READ)
        if done:
            conn.tls_done = True
            self._release(conn)
            self._io.at(self.config.hello_timeout, conn.id, "hello")
            self._read(conn)  # the hello may have come with the last handshake flight

    def _service(self, conn: _Conn, mask: int) -> None:
        if conn.id not in self._conns:
            return
        if not conn.tls_done:
            self._tls_step(conn)
            return
        if mask & selectors.EVENT_READ:
            self._read(conn)
        if conn.id in self._conns and (mask & selectors.EVENT_WRITE or conn.out):
            self._flush(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.pipe.receive()
        except TransportError as exc:
            conn.actor.receive_data(b"")
            self._events(conn, override=str(exc))
            self._close(conn)
            return
        if data is None:
            if conn.pipe.wants_write:
                self._flush(conn)
            return
        actor = conn.actor
        before = actor.messages_in
        actor.receive_data(data)
        self._messages_in += actor.messages_in - before
        self._events(conn)
        if conn.id in self._conns:
            self._flush(conn)

    def _events(self, conn: _Conn, override: str | None = None) -> None:
        actor = conn.actor
        sched = self._sched
        while (event := actor.next_event()) is not NEED_DATA:
            if isinstance(event, HelloReceived):
                conn.hello_at = self.clock()
                self._admission.forget(conn.id)
                self._apply(sched.hello(conn, self.clock()))
            elif isinstance(event, Rejected):
                self._close(conn, rejected=override or event.reason)
                return
            elif isinstance(event, Finished):
                self._apply(sched.finished(conn, event.state.timestamps))
                conn.closing = True
            elif isinstance(event, Failed):
                reason = event.reason
                if override and "connection closed" in reason:
                    reason = override
                # Ignored for an attempt the scheduler ended itself (it recorded it).
                self._apply(sched.failed(conn, reason, by_coordinator=isinstance(
                    actor.state, TerminatedState)))
                conn.closing = True

    def _flush(self, conn: _Conn) -> None:
        actor = conn.actor
        data = actor.data_to_send()
        out = conn.out
        try:
            sent = 1  # nonzero: the socket may take more
            if data:
                self._messages_out += actor.messages_out - conn.counted_out
                conn.counted_out = actor.messages_out
                if out:
                    out += data
                else:  # the usual case: nothing queued before, send without copying
                    sent = conn.pipe.send(data)
                    if sent < len(data):
                        out += memoryview(data)[sent:]
            while out and sent:
                sent = conn.pipe.send(memoryview(out))
                del out[:sent]
        except TransportError as exc:
            if self._sched.is_running(conn):
                conn.actor.terminate(str(exc))
                self._events(conn)
            self._close(conn)
            return
        if len(out) > self.config.max_send_buffer:
            conn.actor.terminate(
                f"worker stopped reading: {len(out)} bytes queued, limit "
                f"{self.config.max_send_buffer}"
            )
            self._events(conn)
            self._close(conn)
            return
        if out or conn.pipe.wants_write:
            self._io.watch(conn, selectors.EVENT_READ | selectors.EVENT_WRITE)
        elif conn.closing:
            self._close(conn)
        else:
            self._io.watch(conn, selectors.EVENT_READ)

    def _close(self, conn: _Conn, rejected: str | None = None) -> None:
        if self._conns.pop(conn.id, None) is None:
            return
        if rejected is not None:
            self._reject_count(f"{conn.peer}: {rejected}")
        self._admission.forget(conn.id)
        self._release(conn)
        if self._sched.is_running(conn):
            # Ended without an event (should not happen): record it rather than lose it.
            self._apply(self._sched.failed(conn, "connection closed", by_coordinator=isinstance(
                conn.actor.state, TerminatedState)))
        self._io.close_conn(conn)

    def _reject_count(self, reason: str) -> None:
        self._rejected += 1
        self._rejections.append(reason)
        log.info("rejected %s", reason)

    # -- deadlines -----------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        io = self._io
        for _, _, cid, kind in io.due(now):
            if kind == "listen":
                if self._accept_paused and io.listener is not None:
                    io.selector.register(io.listener, selectors.EVENT_READ, None)
                    self._accept_paused = False
                continue
            conn = self._conns.get(cid)
            if conn is None:
                continue  # stale: that connection is gone
            actor = conn.actor
            if kind == "client_hello" and not (conn.hello_whole
                                               or conn.pipe.client_hello_received):
                self._drop(conn, "no_client_hello", "no TLS ClientHello within "
                           f"{self.config.client_hello_timeout:g} s")
            elif kind == "handshake" and not conn.tls_done:
                self._drop(conn, "handshake_timeout", "TLS handshake did not finish within "
                           f"{self.config.handshake_timeout:g} s")
            elif kind == "hello" and actor.lifecycle is Lifecycle.AWAIT_HELLO:
                actor.terminate(f"no hello within {self.config.hello_timeout:g} s")
                self._events(conn)

    def _shutdown(self) -> None:
        try:
            if not self._over:  # an exception ended the loop: end what runs, retry nothing
                self._apply(self._sched.stop("the run was stopped"))
        finally:
            self.close()
        for thread in self._launch_threads:
            thread.join(timeout=30)
        self._land()  # launch calls that returned after the last actor ended

    def close(self) -> None:
        """Close every connection and the listening socket (``run()`` does this itself)."""
        for conn in list(self._conns.values()):
            self._close(conn)
        self._io.close()


def _progress(conn: _Conn) -> tuple[float, str] | None:
    """The state ``conn``'s actor is in, and since when (what straggler checks compare)."""
    state = conn.actor.state
    return state.timestamps[-1] if state is not None and state.timestamps else None


def _failed_in(state: MachineState | None) -> str:
    return getattr(state, "failed_in", "") or (state.name if state else "?")


def _backlog(workers: int) -> int:
    """A listen backlog for ``workers`` arrivals and a crowd of strangers beside them, within
    the kernel's somaxconn: with the queue full, a worker's SYN is dropped and its connect
    waits a second for the retransmission."""
    try:
        cap = int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        cap = 4096
    return max(128, min(max(workers + 64, 4096), cap))
