"""Who works on what, and when to give up: the run's policy, sans-IO.

Theory of operation
-------------------
The :class:`Scheduler` decides and the coordinator's loop (:mod:`mu.coordinator`) does. The
scheduler owns no socket, no thread and no clock: the loop tells it what happened, with the
time as a number, and applies the actions it returns, in order. A worker is an opaque handle
(the coordinator passes its connection objects; the tests pass integers)::

    events in                                 actions out
    start(now)            the run begins        Launch(count, why)      invoke workers
    launched(...)         a launch call ended   Assign(worker, actor, attempt, fault)
    hello(worker, now)    a worker is in        Dismiss(worker)         no work: quit:
    finished(worker, ..)  its actor finished    Terminate(worker, reason, quit)
    failed(worker, ..)    its attempt failed    Record(worker, actor, attempt, ok, error,
    tick(now, ...)        time passed                  verdict)         an attempt ended
    stop(reason)          stop from outside     FailActor(actor, reason)  no worker has it
                                                Stop()                  every actor ended

Rule 1, the work queue. Actors wait in order (``-n``/``-o``, or exactly ``-N``; ``--resume``
is a ``-N`` list the job computed). A worker that says hello takes the front of the queue;
with nothing left it is dismissed, so a worker is never given an actor that has ended, or
one that already runs (unless as its backup, rule 5). Spares (``-X``) are launched with the
run and, like every worker, take the front: a retried actor goes there, so a spare on its
way takes it before the retry's own worker is up.

Rule 2, owed workers. Every launch adds its count to the workers *owed* at once (a worker
may say hello before its launch call returns); every hello takes one off, and so does every
invocation a launch call reports it could not start. Never below zero: a duplicated
invocation is a hello nobody was owed, and must not stand in for one still on its way.

Rule 3, an attempt ends exactly once, with a :class:`Record`. A finished attempt wins its
actor. A failed one is given to :func:`mu.retry.decide` (the actor's attempts so far against
``--retries``), unless a twin of it still runs (rule 5), then the actor waits for the
twin. A retried actor goes back to the front of the queue with one worker launched for it;
one not retried has ended. Without a launcher nothing is retried. When the scheduler
ends an attempt itself (a deadline, a twin that lost, a stop), it says :class:`Terminate`
and records the attempt at once: a ``failed`` event the loop then reports for that worker
is no longer news and is ignored, as is any event for a worker that runs nothing.

Rule 4, deadlines. An attempt may last ``-m`` seconds (``worker_deadline``) from its
assignment: then it is terminated, and retried like any lost worker. At the run deadline
every attempt is terminated, every actor not started fails, and nothing is retried. The
deadlines sit in a heap; :attr:`Scheduler.wake_at` says when the next one falls due.

Rule 5, stragglers (``--speculate FACTOR``). Once a second, each actor running on one
worker whose current state has lasted longer than FACTOR times that state's median among
finished attempts (three samples at least, and never under ``speculate_after`` seconds)
goes back to the front of the queue, once per actor, with one worker launched: its
*twin*. The first of the two to finish wins; the other is told ``quit:`` and terminated
("superseded"). A failed twin leaves the actor to the other.

Rule 6, starvation. When no launch is in progress and actors wait: if workers are owed and
the last launch call ended more than ``arrival_timeout`` seconds ago, they are not coming;
if none is owed and no connection is open (a worker may be mid-handshake), none can come.
Either way the waiting actors fail ("no worker came for it (...)", naming why). A queued
backup whose actor still runs is only dropped: the straggler goes on.

Rule 7, fault plans. In a rehearsal run (``--faults``) every assignment carries the
attempt's plan, :meth:`mu.faults.FaultSpec.plan` of ``(actor, attempt - 1)``: it depends on
nothing else, so the same seed plans the same faults, run after run.

The scheduler is property-tested (``tests/unit/test_scheduler.py``): every actor ends done
or failed with a reason, retries are bounded, no actor finishes twice, the first of two
twins to finish wins.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar, Union

from mu.config import RunConfig
from mu.faults import Fault
from mu.retry import RetryDecision, decide

__all__ = [
    "STRAGGLER_EVERY",
    "Action",
    "Assign",
    "Dismiss",
    "FailActor",
    "Launch",
    "Record",
    "Scheduler",
    "Stop",
    "Terminate",
]

W = TypeVar("W", bound=Hashable)

STRAGGLER_EVERY: Final = 1.0
"""Seconds between straggler checks (``--speculate``)."""
_MIN_SAMPLES: Final = 3
"""Finished visits of a state before its median judges stragglers."""


@dataclass(frozen=True, slots=True)
class Launch:
    """Invoke ``count`` workers; ``why`` (may be empty) says what for, for the log."""

    count: int
    why: str = ""


@dataclass(frozen=True, slots=True)
class Assign(Generic[W]):
    """Start ``actor`` on ``worker``: attempt number ``attempt`` (from 1); send ``fault``,
    the attempt's rehearsal plan, before the job's first command (None: not a rehearsal)."""

    worker: W
    actor: int
    attempt: int
    fault: Fault | None


@dataclass(frozen=True, slots=True)
class Dismiss(Generic[W]):
    """No work for ``worker``: tell it ``quit:``."""

    worker: W


@dataclass(frozen=True, slots=True)
class Terminate(Generic[W]):
    """End ``worker``'s attempt from outside with ``reason``; ``quit``: tell it ``quit:``
    first (a twin that lost: the worker is healthy). A :class:`Record` of it follows."""

    worker: W
    reason: str
    quit: bool = False


@dataclass(frozen=True, slots=True)
class Record(Generic[W]):
    """An attempt ended: record it. ``verdict`` is the retry policy's, for a failed attempt
    that was its actor's last live one (None for a success, a twin that lost, or a failed
    twin whose other half still runs)."""

    worker: W
    actor: int
    attempt: int
    ok: bool
    error: str | None
    verdict: RetryDecision | None


@dataclass(frozen=True, slots=True)
class FailActor:
    """``actor`` ended without a worker ever taking it (or the last time), for ``reason``."""

    actor: int
    reason: str


@dataclass(frozen=True, slots=True)
class Stop:
    """Every actor has ended: the run is over."""


Action = Union[  # noqa: UP007
    Launch, Assign[W], Dismiss[W], Terminate[W], Record[W], FailActor, Stop
]
"""What the loop is told to do (a generic alias: ``Action[W]``)."""

Progress = Callable[[W], Union[tuple[float, str], None]]  # noqa: UP007
"""A running worker's current state: ``(entered at, state name)``, or None if unknown."""

_NOTHING: Final[tuple[()]] = ()


class Scheduler(Generic[W]):
    """The run's policy (see the module docstring): events in, actions out.

    Args:
        config: the run's configuration (actors, spares, retries, deadlines, speculation,
            faults).
        can_launch: a launcher exists; without one nothing is launched, retried, or
            starved (workers join by hand).
    """

    def __init__(self, config: RunConfig, *, can_launch: bool = True) -> None:
        self.config = config
        self.can_launch = can_launch
        faults = config.faults
        self._faults = faults if faults is not None and faults.for_workers else None
        self._queue: deque[int] = deque(config.actor_numbers())
        self._pending = set(self._queue)  # actors not yet ended
        self._running: dict[int, list[W]] = {}  # actor -> its live attempts (2: twins)
        self._attempt_of: dict[W, tuple[int, int]] = {}  # live worker -> (actor, attempt)
        self._attempts: dict[int, int] = {}  # actor -> workers it was given so far
        self._speculated: set[int] = set()  # actors given a twin
        self._durations: dict[str, list[float]] = {}  # state -> sorted durations
        self._deadlines: list[tuple[float, int, W]] = []  # (-m deadline, seq, worker)
        self._seq = itertools.count()
        self._run_deadline: float | None = None
        self._next_straggler_check = 0.0
        self._owed = 0
        self._launches = 0  # launch calls not yet returned
        self._last_launch_end = 0.0
        self._stopping = False
        self.accepted = 0
        """Invocations accepted by every launch call returned so far."""
        self.launch_error: str | None = None
        """The last launch call's error, if any."""
        self.over = False
        """Every actor has ended (:class:`Stop` was said)."""

    # -- what the loop may ask ------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """The run is ending (run deadline, stop): nothing is retried any more."""
        return self._stopping

    @property
    def waiting(self) -> int:
        """Entries in the work queue (an actor may wait for a twin while it runs)."""
        return len(self._queue)

    @property
    def running(self) -> Mapping[int, Sequence[W]]:
        """Actor -> its live attempts' workers."""
        return self._running

    @property
    def owed(self) -> int:
        """Workers launched and not yet arrived (rule 2)."""
        return self._owed

    def is_pending(self, actor: int) -> bool:
        """Whether ``actor`` has not ended yet."""
        return actor in self._pending

    def is_running(self, worker: W) -> bool:
        """Whether ``worker`` carries a live attempt."""
        return worker in self._attempt_of

    @property
    def wake_at(self) -> float | None:
        """When the next deadline falls due (call :meth:`tick` then), or None."""
        deadlines = self._deadlines
        if not deadlines:
            return self._run_deadline
        if self._run_deadline is None:
            return deadlines[0][0]
        return min(deadlines[0][0], self._run_deadline)

    # -- events ---------------------------------------------------------------------------

    def start(self, now: float) -> Sequence[Action[W]]:
        """The run begins: launch a worker per actor and the spares."""
        if self.config.run_deadline:
            self._run_deadline = now + self.config.run_deadline
        self._next_straggler_check = now
        if not self.can_launch:
            return _NOTHING
        return [self._launch(self.config.workers_to_launch)]

    def launched(self, count: int, accepted: int, error: str | None, now: float) -> None:
        """A launch call of ``count`` workers returned at ``now``: ``accepted`` were started
        (``error``: why not all). The next :meth:`tick` decides what follows."""
        self._launches -= 1
        self.accepted += accepted
        if error:
            self.launch_error = error
        self._owed = max(0, self._owed - (count - accepted))  # never coming
        self._last_launch_end = now

    def hello(self, worker: W, now: float) -> Sequence[Action[W]]:
        """``worker`` authenticated: give it the front of the queue, or dismiss it."""
        self._owed = max(0, self._owed - 1)
        queue, pending = self._queue, self._pending
        while queue and queue[0] not in pending:
            queue.popleft()  # ended meanwhile (a twin that came too late)
        if not queue:
            return [Dismiss(worker)]
        actor = queue.popleft()
        attempt = self._attempts.get(actor, 0) + 1
        self._attempts[actor] = attempt
        self._running.setdefault(actor, []).append(worker)
        self._attempt_of[worker] = (actor, attempt)
        if self.config.worker_deadline:
            heapq.heappush(
                self._deadlines, (now + self.config.worker_deadline, next(self._seq), worker))
        fault = self._faults.plan(actor, attempt - 1) if self._faults is not None else None
        return [Assign(worker, actor, attempt, fault)]

    def finished(self, worker: W, timestamps: Iterable[tuple[float, str]] = ()
                 ) -> Sequence[Action[W]]:
        """``worker``'s actor reached a terminal state; ``timestamps`` are its states'
        ``(entered at, name)`` (what straggler judgements learn from)."""
        entry = self._detach(worker)
        if entry is None:
            return _NOTHING
        actor, attempt = entry
        actions: list[Action[W]] = [Record(worker, actor, attempt, True, None, None)]
        if self.config.speculate:
            self._learn(timestamps)
        reason = f"superseded: attempt {attempt} finished first"
        for twin in list(self._running.get(actor, ())):  # the first to finish wins
            twin_attempt = self._attempt_of[twin][1]
            self._detach(twin)
            actions.append(Terminate(twin, reason, quit=True))
            actions.append(Record(twin, actor, twin_attempt, False, reason, None))
        actions += self._ended(actor)
        return actions

    def failed(self, worker: W, reason: str, *, by_coordinator: bool = False
               ) -> Sequence[Action[W]]:
        """``worker``'s attempt failed for ``reason``; ``by_coordinator``: the loop ended it
        (a broken or silent connection, a worker that stopped reading)."""
        if worker not in self._attempt_of:
            return _NOTHING
        return self._fail_attempt(worker, reason, by_coordinator)

    def tick(self, now: float, *, connections: int = 0, progress: Progress[W] | None = None
             ) -> Sequence[Action[W]]:
        """Time passed: deadlines, starvation, stragglers.

        Args:
            now: the current time (the same clock as every other event's).
            connections: connections open, authenticated or not (a worker may be in its
                handshake: rule 6).
            progress: each running worker's current state, for straggler checks (None:
                none are made).
        """
        if self.over:
            return _NOTHING
        actions: list[Action[W]] = []
        deadlines, run_deadline = self._deadlines, self._run_deadline
        while deadlines and deadlines[0][0] <= now:
            if run_deadline is not None and run_deadline <= deadlines[0][0]:
                break  # the run's deadline comes first
            worker = heapq.heappop(deadlines)[2]
            if worker in self._attempt_of:  # else stale: that attempt ended
                reason = f"deadline of {self.config.worker_deadline:g} s passed"
                actions.append(Terminate(worker, reason))
                actions += self._fail_attempt(worker, reason, True)
        if run_deadline is not None and now >= run_deadline and not self._stopping:
            passed = f"run deadline of {self.config.run_deadline:g} s passed"
            self._run_deadline = None
            actions += self._stop_all(passed, "the run deadline passed")
            return actions
        if self._queue and self.can_launch:
            actions += self._starve(now, connections)
        if self.config.speculate and progress is not None and now >= self._next_straggler_check:
            self._next_straggler_check = now + STRAGGLER_EVERY
            actions += self._stragglers(now, progress)
        return actions

    def stop(self, reason: str) -> Sequence[Action[W]]:
        """Stop from outside: end every live attempt and every actor left, for ``reason``;
        retry nothing."""
        return self._stop_all(reason, reason)

    # -- the decisions --------------------------------------------------------------------

    def _launch(self, count: int, why: str = "") -> Launch:
        self._launches += 1
        self._owed += count  # owed from now on: they may say hello before the call returns
        return Launch(count, why)

    def _detach(self, worker: W) -> tuple[int, int] | None:
        """Take ``worker``'s attempt out of the running ones: ``(actor, attempt)``."""
        entry = self._attempt_of.pop(worker, None)
        if entry is not None:
            live = self._running[entry[0]]
            live.remove(worker)
            if not live:
                del self._running[entry[0]]
        return entry

    def _fail_attempt(self, worker: W, reason: str, by_coordinator: bool
                      ) -> list[Action[W]]:
        entry = self._detach(worker)
        if entry is None:
            return []
        actor, attempt = entry
        if actor in self._running:  # its twin goes on
            return [Record(worker, actor, attempt, False, reason, None)]
        verdict = decide(reason, self._attempts[actor], self.config.retries,
                         by_coordinator=by_coordinator, stopping=self._stopping)
        if verdict.retry and not self.can_launch:
            verdict = RetryDecision(False, "not retried: no launcher to start a worker")
        actions: list[Action[W]] = [Record(worker, actor, attempt, False, reason, verdict)]
        if verdict.retry:
            self._queue.appendleft(actor)
            why = (f"retrying actor {actor}: attempt {self._attempts[actor] + 1} of "
                   f"{self.config.retries + 1}")
            actions.append(self._launch(1, why))
        else:
            actions += self._ended(actor)
        return actions

    def _ended(self, actor: int) -> list[Action[W]]:
        self._pending.discard(actor)
        if self._pending or self.over:
            return []
        self.over = True
        return [Stop()]

    def _stop_all(self, live_reason: str, unstarted_reason: str) -> list[Action[W]]:
        self._stopping = True
        actions: list[Action[W]] = []
        for workers in list(self._running.values()):
            for worker in list(workers):
                actions.append(Terminate(worker, live_reason))
                actions += self._fail_attempt(worker, live_reason, True)
        for actor in sorted(self._pending):
            actions.append(FailActor(actor, unstarted_reason))
            actions += self._ended(actor)
        self._queue.clear()
        return actions

    def _starve(self, now: float, connections: int) -> list[Action[W]]:
        """Rule 6: fail the waiting actors no worker can come for any more."""
        if self._launches:
            return []
        owed, limit = self._owed, self.config.arrival_timeout
        if owed and now - self._last_launch_end > limit:
            why = f"{owed} launched worker(s) never arrived within {limit:g} s"
        elif owed or connections:
            return []
        else:
            why = self.launch_error or f"the launch started {self.accepted} worker(s)"
        actions: list[Action[W]] = []
        queue = self._queue
        while queue:
            actor = queue.popleft()
            if actor in self._pending and actor not in self._running:
                actions.append(FailActor(actor, f"no worker came for it ({why})"))
                actions += self._ended(actor)
            # else: ended meanwhile, or a twin that never came for an actor that runs on
        return actions

    def _learn(self, timestamps: Iterable[tuple[float, str]]) -> None:
        """Add a finished attempt's state durations to the samples stragglers are judged by."""
        for (start, name), (end, _next) in itertools.pairwise(timestamps):
            bisect.insort(self._durations.setdefault(name, []), end - start)

    def _stragglers(self, now: float, progress: Progress[W]) -> list[Action[W]]:
        """Rule 5: a twin for each actor whose current state has lasted much longer than
        that state's median among finished attempts."""
        factor = self.config.speculate
        assert factor is not None
        actions: list[Action[W]] = []
        for actor, live in list(self._running.items()):
            if actor in self._speculated or len(live) != 1:
                continue
            where = progress(live[0])
            if where is None:
                continue
            entered, name = where
            samples = self._durations.get(name)
            if not samples or len(samples) < _MIN_SAMPLES:
                continue
            median = samples[len(samples) // 2]
            lasted = now - entered
            if lasted > max(factor * median, self.config.speculate_after):
                self._speculated.add(actor)
                self._queue.appendleft(actor)
                if self.can_launch:
                    actions.append(self._launch(1, (
                        f"actor {actor} has been in {name} for {lasted:.1f} s (median "
                        f"{median:.2f} s): launching a backup worker")))
        return actions
