"""The bookkeeping of one Event launch: a pure, sans-IO invoke ledger.

Theory of operation
-------------------
A launch sends N Event invocations, round-robin over the regions, and must end with every
one of them accepted or failed, exactly once. :class:`InvokeLedger` keeps that account and
makes every decision about it; the HTTP pump in :mod:`backends.aws_lambda` owns the sockets
and the clock, tells the ledger what happened and asks it what to send next. The ledger
imports no socket, selector, TLS or clock: every method that depends on time takes ``now``
(seconds on any monotonic scale), and the jitter comes from the ``rng`` passed in, so a test
drives a whole launch, retries and back-offs included, without a socket or a sleep.

Each invocation has an index, a region (``index % len(regions)``) and a record that is in
exactly one place at a time::

    ready      --take()-->              in flight
    in flight  --answered(2xx)-->       done (accepted)
    in flight  --answered(429, 5xx)-->  waiting, or done (failed) when no attempt is left
    in flight  --answered(other 4xx)--> done (failed), and the launch aborts
    in flight  --lost()-->              ready (at the front), or done (failed) when none is left
    waiting    --release(now)-->        ready, once its back-off is over

* **The status decides what kind of failure it is.** 2xx accepts. 429 (throttled) and 5xx
  are transient. Any other 4xx (unknown function, bad credentials, payload too large) would
  hit every invocation alike: :meth:`InvokeLedger.answered` fails that invocation and returns
  the text the launch aborts with. A request in flight on a connection that closed or broke
  was not answered (:meth:`InvokeLedger.lost`): it is sent again (at-least-once; counted as
  ``resent``), first in its region's queue.
* **The bound on attempts is :func:`mu.retry.decide`**, the policy the coordinator uses for
  workers, with ``max_attempts - 1`` retries; the ledger has already judged the failure
  transient from the HTTP status (which :func:`mu.retry.classify`, reading words, cannot see),
  so it asks as the party that ended the attempt (``by_coordinator=True``).
* **Back-off** (:class:`Backoff`) is exponential with "equal jitter": after attempt *a* the
  ceiling is ``min(cap, base * 2 ** (a - 1))`` and the delay is drawn from
  ``[ceiling / 2, ceiling]``, so until the cap the delays never shrink from one attempt to
  the next (the lowest delay of attempt *a + 1* is the ceiling of attempt *a*). A server's
  ``retryAfterSeconds`` (or ``Retry-After``) replaces the draw, capped at ``cap``.
* **Per region** the ledger counts accepted, failed, throttled, in flight and waiting
  invocations, and consecutive failed connects: after ``connect_failures`` of them the region
  gives up (:meth:`InvokeLedger.connect_failed`) and the pump aborts the launch.

:meth:`InvokeLedger.report` turns the records into the :class:`~mu.launch.LaunchReport` the
launcher returns; an invocation not ended when the launch aborted reads
``"not sent: launch aborted"``.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from mu.launch import Invocation, LaunchReport
from mu.retry import decide

__all__ = ["CONNECT_FAILURES", "Backoff", "InvokeLedger", "RegionCounts"]

CONNECT_FAILURES: Final = 8
"""Consecutive failed connects (or TLS handshakes) after which a region gives up."""

READY: Final = "ready"
IN_FLIGHT: Final = "in flight"
WAITING: Final = "waiting"
DONE: Final = "done"


@dataclass(frozen=True)
class Backoff:
    """Bounded exponential back-off with equal jitter.

    Args:
        base: the first ceiling in seconds (doubles per attempt).
        cap: the largest delay in seconds (also caps a server's ``retryAfterSeconds``).

    Example::

        >>> Backoff(0.05, 5.0).ceiling(3)
        0.2
    """

    base: float = 0.05
    cap: float = 5.0

    def ceiling(self, attempt: int) -> float:
        """The largest delay after attempt number ``attempt`` (1-based)."""
        # The exponent is bounded so that a huge attempt count cannot overflow a float.
        return min(self.cap, self.base * 2.0 ** min(max(attempt - 1, 0), 64))

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before attempt ``attempt + 1``.

        Args:
            attempt: the attempt that failed, counting from 1.
            retry_after: the server's own wish, if it said one (capped at ``cap``).
            rng: the source of the jitter.

        Returns:
            ``min(cap, max(0, retry_after))``, or a draw from ``[ceiling/2, ceiling]``.
        """
        if retry_after is not None:
            return min(self.cap, max(0.0, retry_after))
        ceiling = self.ceiling(attempt)
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class RegionCounts:
    """Where one region's invocations are (see :meth:`InvokeLedger.counts`)."""

    accepted: int
    failed: int
    throttled: int
    ready: int
    in_flight: int
    waiting: int


@dataclass(slots=True)
class _Record:
    region: str
    attempts: int = 0
    throttled: int = 0
    status: int | None = None
    error: str | None = None
    sent_at: float = 0.0
    done_at: float = 0.0
    state: str = READY


@dataclass(slots=True)
class _Region:
    ready: deque[int] = field(default_factory=deque)
    in_flight: int = 0
    waiting: int = 0
    accepted: int = 0
    failed: int = 0
    throttled: int = 0
    connect_failures: int = 0


class InvokeLedger:
    """The account of one launch: what to send next, and how each invocation ended.

    Args:
        function_name: the function invoked (named in the abort text).
        count: how many invocations.
        regions: the round-robin order of the regions (a name that repeats gets more).
        now: the launch's start time.
        max_attempts: sends per invocation before it is reported failed (>= 1).
        backoff: the retry delays.
        rng: the source of jitter (a fresh ``random.Random()`` by default).
        connect_failures: consecutive failed connects after which a region gives up.

    Example::

        >>> ledger = InvokeLedger("f", 2, ("us-east-1",), now=0.0, max_attempts=3)
        >>> ledger.take("us-east-1", 0.0), ledger.take("us-east-1", 0.0)
        (0, 1)
        >>> ledger.answered(0, 202, 0.1), ledger.answered(1, 202, 0.1), ledger.finished
        (None, None, True)
    """

    def __init__(
        self,
        function_name: str,
        count: int,
        regions: Sequence[str],
        *,
        now: float,
        max_attempts: int,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        connect_failures: int = CONNECT_FAILURES,
    ) -> None:
        if max_attempts < 1 or not regions:
            raise ValueError(f"max_attempts ({max_attempts}) must be >= 1, regions not empty")
        self.function_name = function_name
        self.max_attempts = max_attempts
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()
        self.connect_failures = connect_failures
        self.started = now
        self.regions = {region: _Region() for region in dict.fromkeys(regions)}
        self.records = [_Record(regions[i % len(regions)]) for i in range(count)]
        for index, record in enumerate(self.records):
            self.regions[record.region].ready.append(index)
        self.remaining = count
        self.resent = 0
        self._waiting: list[tuple[float, int]] = []  # heap of (due time, index)

    def __repr__(self) -> str:
        return (
            f"<InvokeLedger {self.function_name} {len(self.records) - self.remaining}/"
            f"{len(self.records)} ended, {len(self._waiting)} waiting>"
        )

    # -- what to send ---------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Every invocation has ended (accepted or failed)."""
        return self.remaining == 0

    def release(self, now: float) -> None:
        """Queue again every waiting invocation whose back-off is over at ``now``."""
        waiting = self._waiting
        while waiting and waiting[0][0] <= now:
            _, index = heapq.heappop(waiting)
            record = self.records[index]
            region = self.regions[record.region]
            region.waiting -= 1
            region.ready.append(index)
            record.state = READY

    def next_due(self) -> float | None:
        """When the next waiting invocation may be sent again (None: nothing waits)."""
        return self._waiting[0][0] if self._waiting else None

    def ready(self, region: str) -> int:
        """How many of ``region``'s invocations may be sent now."""
        return len(self.regions[region].ready)

    def has_work(self, region: str) -> bool:
        """Whether ``region`` has invocations to send, now or after a back-off."""
        state = self.regions[region]
        return bool(state.ready) or state.waiting > 0

    def take(self, region: str, now: float) -> int | None:
        """The next invocation to send to ``region`` (None: none ready); counts the attempt."""
        state = self.regions[region]
        if not state.ready:
            return None
        index = state.ready.popleft()
        state.in_flight += 1
        record = self.records[index]
        record.attempts += 1
        record.state = IN_FLIGHT
        if not record.sent_at:
            record.sent_at = now
        return index

    # -- what happened --------------------------------------------------------------------

    def answered(
        self,
        index: int,
        status: int,
        now: float,
        code: str = "",
        message: str = "",
        retry_after: float | None = None,
    ) -> str | None:
        """Account for the answer to an invocation in flight.

        Args:
            index: the invocation.
            status: the HTTP status.
            now: when the answer arrived.
            code: the AWS error type (``TooManyRequestsException``), for failures.
            message: the error message, for failures.
            retry_after: the server's ``retryAfterSeconds``, for failures.

        Returns:
            None, or the text to abort the launch with (an answer no retry can change).
        """
        record, region = self._landed(index)
        if 200 <= status < 300:
            self._end(record, region, status, None, now)
            return None
        reason = f"{status} {code}: {message}".strip()
        if status != 429 and status < 500:
            self._end(record, region, status, reason, now)
            return f"invoke {self.function_name} in {record.region}: {code or status}: {message}"
        if status == 429:
            record.throttled += 1
            region.throttled += 1
        if not self._may_retry(reason, record):
            gave_up = f"gave up after {record.attempts} attempts: {reason}"
            self._end(record, region, status, gave_up, now)
            return None
        record.status = status
        record.state = WAITING
        region.waiting += 1
        due = now + self.backoff.delay(record.attempts, retry_after, self.rng)
        heapq.heappush(self._waiting, (due, index))
        return None

    def lost(self, indexes: Iterable[int], reason: str, now: float) -> None:
        """Requests in flight got no answer (their connection closed): send them again.

        Args:
            indexes: the invocations in flight on the connection, oldest first; they go back
                to the front of their region's queue in that order.
            reason: why the connection ended.
            now: when.
        """
        for index in reversed(list(indexes)):
            record, region = self._landed(index)
            self.resent += 1
            if self._may_retry(reason, record):
                record.state = READY
                region.ready.appendleft(index)
            else:
                lost = f"no response after {record.attempts} attempts: {reason}"
                self._end(record, region, None, lost, now)

    def connect_failed(self, region: str) -> bool:
        """A connect or TLS handshake to ``region`` failed; True when the region gives up."""
        state = self.regions[region]
        state.connect_failures += 1
        return state.connect_failures >= self.connect_failures

    def connected(self, region: str) -> None:
        """A connection to ``region`` is ready: its count of failed connects starts over."""
        self.regions[region].connect_failures = 0

    # -- results ----------------------------------------------------------------------------

    def counts(self) -> dict[str, RegionCounts]:
        """Per region: accepted, failed, throttled, ready, in flight and waiting invocations."""
        return {
            name: RegionCounts(r.accepted, r.failed, r.throttled, len(r.ready), r.in_flight,
                               r.waiting)
            for name, r in self.regions.items()
        }

    def report(self, now: float) -> LaunchReport:
        """The launch's report at ``now``, one :class:`~mu.launch.Invocation` per index."""
        invocations = tuple(
            Invocation(
                index=i,
                region=r.region,
                accepted=r.state == DONE and r.error is None,
                status=r.status,
                error=r.error if r.state == DONE else "not sent: launch aborted",
                attempts=r.attempts,
                throttled=r.throttled,
                sent_at=r.sent_at,
                done_at=r.done_at,
            )
            for i, r in enumerate(self.records)
        )
        return LaunchReport(invocations, started=self.started, finished=now)

    # -- inside -------------------------------------------------------------------------------

    def _landed(self, index: int) -> tuple[_Record, _Region]:
        """The record of an invocation in flight, and its region's, now no longer in flight."""
        record = self.records[index]
        if record.state != IN_FLIGHT:  # the pump matched an answer it never sent: a bug
            raise AssertionError(f"invocation {index} is {record.state}, not in flight")
        region = self.regions[record.region]
        region.in_flight -= 1
        return record, region

    def _may_retry(self, reason: str, record: _Record) -> bool:
        return decide(reason, record.attempts, self.max_attempts - 1, by_coordinator=True).retry

    def _end(
        self, record: _Record, region: _Region, status: int | None, error: str | None, now: float
    ) -> None:
        record.state = DONE
        record.status = status
        record.error = error
        record.done_at = now
        if error is None:
            region.accepted += 1
        else:
            region.failed += 1
        self.remaining -= 1
