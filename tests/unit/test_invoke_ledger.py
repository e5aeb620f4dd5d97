"""The invoke ledger (backends.ledger): a whole launch's account, driven without a socket.

A hypothesis state machine plays the pump and the endpoint at once: it takes invocations onto
simulated connections, answers them (2xx, 429 with or without a retry-after, 5xx, other 4xx),
drops connections with requests in flight and moves the clock. After every step the counts
must add up; at the end every invocation has ended accepted, or failed with a reason.
"""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import backends.ledger
from backends.ledger import CONNECT_FAILURES, Backoff, InvokeLedger
from mu.retry import decide

REGIONS = ("us-east-1", "eu-west-1", "ap-south-1")
STATUSES = (200, 202, 202, 202, 429, 429, 500, 503, 400, 403, 404, 413)

bases = st.floats(0.001, 2.0)
caps = st.floats(0.001, 60.0)
attempts = st.integers(1, 200)


class _Extreme(random.Random):
    """A jitter source that always draws the low or the high end of the range."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


# -- back-off --------------------------------------------------------------------------------


@given(bases, caps, attempts, st.integers(0, 2**32))
def test_backoff_is_drawn_from_the_upper_half_of_its_ceiling(
    base: float, cap: float, attempt: int, seed: int
) -> None:
    backoff = Backoff(base, cap)
    ceiling = backoff.ceiling(attempt)
    assert ceiling == (min(cap, base * 2.0 ** (attempt - 1)) if attempt < 60 else cap)
    delay = backoff.delay(attempt, None, random.Random(seed))
    assert 0 < ceiling / 2 <= delay <= ceiling <= cap


@given(bases, st.integers(1, 20), st.floats(1.0, 100.0))
def test_backoff_never_shrinks_before_the_cap(base: float, attempt: int, room: float) -> None:
    backoff = Backoff(base, base * 2.0**attempt * room)  # attempt + 1 is still below the cap
    assert backoff.ceiling(attempt) <= backoff.ceiling(attempt + 1)
    # the lowest draw of the next attempt is the highest draw of this one
    assert backoff.delay(attempt + 1, None, _Extreme(high=False)) >= backoff.delay(
        attempt, None, _Extreme(high=True)
    )


@given(bases, caps, st.integers(1, 80))
def test_backoff_ceilings_rise_to_the_cap_and_stay(base: float, cap: float, attempt: int) -> None:
    backoff = Backoff(base, cap)
    assert backoff.ceiling(attempt) <= backoff.ceiling(attempt + 1) <= cap


@given(bases, caps, attempts, st.floats(allow_nan=False))
def test_a_servers_retry_after_replaces_the_draw_capped(
    base: float, cap: float, attempt: int, retry_after: float
) -> None:
    delay = Backoff(base, cap).delay(attempt, retry_after, random.Random(0))
    assert delay == min(cap, max(0.0, retry_after))


def test_backoff_is_bounded() -> None:
    backoff = Backoff(0.1, 1.0)
    delays = [backoff.delay(attempt, None, random.Random(attempt)) for attempt in range(1, 30)]
    assert all(0 < d <= 1.0 for d in delays)
    assert backoff.delay(3, 600.0, random.Random(0)) == 1.0  # retryAfterSeconds is capped too
    assert Backoff(0.1, 1.0).ceiling(10**6) == 1.0  # no overflow however many attempts


# -- the ledger, by example ------------------------------------------------------------------


def test_round_robin_and_a_clean_launch() -> None:
    ledger = InvokeLedger("f", 5, ("a", "b", "a"), now=10.0, max_attempts=3)
    assert [r.region for r in ledger.records] == ["a", "b", "a", "a", "b"]
    assert (ledger.ready("a"), ledger.ready("b")) == (3, 2)
    sent = [ledger.take("a", 11.0), ledger.take("a", 11.0), ledger.take("b", 11.5)]
    assert sent == [0, 2, 1]
    for index in (0, 2, 1):
        assert ledger.answered(index, 202, 12.0) is None
    for index in (3, 4):
        region = ledger.records[index].region
        assert ledger.take(region, 13.0) == index
        assert ledger.answered(index, 202, 14.0) is None
    assert ledger.take("a", 15.0) is None and ledger.finished
    report = ledger.report(20.0)
    assert (report.started, report.finished, report.accepted) == (10.0, 20.0, 5)
    assert [(i.sent_at, i.done_at) for i in report.invocations][:2] == [(11.0, 12.0), (11.5, 12.0)]
    assert report.by_region() == {
        "a": {"accepted": 3, "failed": 0, "throttled": 0},
        "b": {"accepted": 2, "failed": 0, "throttled": 0},
    }


def test_throttled_until_the_last_attempt_fails_with_the_answer() -> None:
    ledger = InvokeLedger("f", 1, ("us-east-1",), now=0.0, max_attempts=3,
                          backoff=Backoff(0.1, 1.0), rng=random.Random(1))
    now = 0.0
    for attempt in (1, 2, 3):
        assert ledger.take("us-east-1", now) == 0
        assert ledger.answered(0, 429, now, "TooManyRequestsException", "Rate exceeded") is None
        due = ledger.next_due()
        if attempt < 3:
            assert due is not None and now + 0.1 * 2 ** (attempt - 1) / 2 <= due
            now = due
            ledger.release(now)
    assert ledger.finished and ledger.next_due() is None
    (inv,) = ledger.report(now).invocations
    assert (inv.accepted, inv.attempts, inv.throttled, inv.status) == (False, 3, 3, 429)
    assert inv.error == "gave up after 3 attempts: 429 TooManyRequestsException: Rate exceeded"


def test_an_answer_no_retry_can_change_aborts_naming_the_function() -> None:
    ledger = InvokeLedger("png2y4m_x", 4, ("eu-west-1",), now=0.0, max_attempts=8)
    first, second = ledger.take("eu-west-1", 1.0), ledger.take("eu-west-1", 1.0)
    assert first is not None and second is not None
    assert ledger.answered(first, 202, 2.0) is None
    abort = ledger.answered(second, 404, 2.0, "ResourceNotFoundException",
                            "Function not found: png2y4m_x")
    assert abort == (
        "invoke png2y4m_x in eu-west-1: ResourceNotFoundException: Function not found: png2y4m_x"
    )
    errors = [i.error for i in ledger.report(3.0).invocations]
    assert errors == [
        None,
        "404 ResourceNotFoundException: Function not found: png2y4m_x",
        "not sent: launch aborted",
        "not sent: launch aborted",
    ]


def test_lost_requests_go_back_first_in_order_until_attempts_run_out() -> None:
    ledger = InvokeLedger("f", 4, ("r",), now=0.0, max_attempts=2)
    assert [ledger.take("r", 0.0), ledger.take("r", 0.0)] == [0, 1]
    ledger.lost([0, 1], "server closed the connection", 1.0)
    assert ledger.resent == 2
    assert [ledger.take("r", 2.0) for _ in range(4)] == [0, 1, 2, 3]
    ledger.lost([0], "r closed the connection", 3.0)
    assert ledger.records[0].error == "no response after 2 attempts: r closed the connection"
    assert ledger.counts()["r"].failed == 1 and ledger.resent == 3


def test_a_region_gives_up_after_consecutive_connect_failures() -> None:
    ledger = InvokeLedger("f", 1, ("a", "b"), now=0.0, max_attempts=1)
    assert not any(ledger.connect_failed("a") for _ in range(CONNECT_FAILURES - 1))
    ledger.connected("a")  # a success starts the count over
    assert not any(ledger.connect_failed("a") for _ in range(CONNECT_FAILURES - 1))
    assert not ledger.connect_failed("b")
    assert ledger.connect_failed("a")


def test_an_answer_for_an_invocation_not_in_flight_is_a_bug() -> None:
    ledger = InvokeLedger("f", 2, ("r",), now=0.0, max_attempts=2)
    with pytest.raises(AssertionError, match="invocation 1 is ready, not in flight"):
        ledger.answered(1, 202, 0.0)
    assert ledger.take("r", 0.0) == 0
    ledger.answered(0, 202, 0.0)
    with pytest.raises(AssertionError, match="invocation 0 is done"):
        ledger.lost([0], "x", 0.0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        InvokeLedger("f", 1, ("r",), now=0.0, max_attempts=0)
    with pytest.raises(ValueError, match="regions"):
        InvokeLedger("f", 1, (), now=0.0, max_attempts=1)


@given(st.integers(1, 12), st.integers(1, 12), st.sampled_from([429, 500, 502, 503]))
def test_retry_or_give_up_is_mu_retry_decide(max_attempts: int, sends: int, status: int) -> None:
    """The bound on attempts is the coordinator's own policy, with max_attempts - 1 retries."""
    ledger = InvokeLedger("f", 1, ("r",), now=0.0, max_attempts=max_attempts)
    now = 0.0
    for attempt in range(1, min(sends, max_attempts) + 1):
        assert ledger.take("r", now) == 0
        ledger.answered(0, status, now, "E", "m")
        decision = decide(f"{status} E: m", attempt, max_attempts - 1, by_coordinator=True)
        assert ledger.finished is not decision.retry
        due = ledger.next_due()
        if due is None:
            break
        now = due
        ledger.release(now)


@given(
    st.floats(0, 1e6), st.floats(0.001, 5.0), st.floats(0.0001, 1.0), st.integers(0, 2**32)
)
def test_the_clock_parameter_alone_says_when_a_retry_is_due(
    start: float, retry_after: float, early: float, seed: int
) -> None:
    ledger = InvokeLedger("f", 1, ("r",), now=start, max_attempts=2,
                          backoff=Backoff(0.05, 5.0), rng=random.Random(seed))
    ledger.take("r", start)
    ledger.answered(0, 429, start, "T", "slow down", retry_after)
    due = start + retry_after
    assert ledger.next_due() == due
    ledger.release(due - early * retry_after)
    assert ledger.ready("r") == 0 and ledger.counts()["r"].waiting == 1
    ledger.release(due)
    assert ledger.ready("r") == 1 and ledger.next_due() is None


def test_the_ledger_reads_no_clock_and_touches_no_socket() -> None:
    tree = ast.parse(Path(backends.ledger.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert not imported & {"time", "socket", "ssl", "selectors", "threading", "asyncio"}
    assert imported <= {"__future__", "heapq", "random", "collections", "dataclasses", "typing",
                        "mu"}


# -- the ledger, by property -----------------------------------------------------------------


class LaunchMachine(RuleBasedStateMachine):
    """The pump and the endpoint, played by hypothesis against one ledger."""

    @initialize(
        count=st.integers(0, 30),
        regions=st.lists(st.sampled_from(REGIONS), min_size=1, max_size=4),
        max_attempts=st.integers(1, 5),
        base=st.floats(0.001, 1.0),
        cap=st.floats(0.001, 10.0),
        seed=st.integers(0, 2**32),
    )
    def start(
        self, count: int, regions: list[str], max_attempts: int, base: float, cap: float,
        seed: int,
    ) -> None:
        self.now = 100.0
        self.max_attempts = max_attempts
        self.backoff = Backoff(base, cap)
        self.ledger = InvokeLedger("fn", count, regions, now=self.now, max_attempts=max_attempts,
                                   backoff=self.backoff, rng=random.Random(seed))
        self.region_of = [regions[i % len(regions)] for i in range(count)]
        self.conns: list[tuple[str, list[int]]] = []
        self.times = {self.now}
        self.throttled = dict.fromkeys(regions, 0)
        self.aborted: str | None = None
        self.due: dict[int, tuple[float, float]] = {}  # waiting -> earliest, latest due time

    def live(self) -> bool:
        return self.aborted is None and not self.ledger.finished

    @precondition(live)
    @rule(pick=st.integers(0, 100), depth=st.integers(1, 4), new=st.booleans())
    def send(self, pick: int, depth: int, new: bool) -> None:
        regions = [r for r in self.ledger.regions if self.ledger.ready(r)]
        if not regions:
            return
        region = regions[pick % len(regions)]
        conns = [c for c in self.conns if c[0] == region]
        if new or not conns:
            conns = [(region, [])]
            self.conns.append(conns[0])
        inflight = conns[pick % len(conns)][1]
        for _ in range(depth):
            index = self.ledger.take(region, self.now)
            if index is None:
                break
            assert self.region_of[index] == region
            inflight.append(index)

    @precondition(live)
    @rule(pick=st.integers(0, 100), status=st.sampled_from(STATUSES),
          retry_after=st.none() | st.floats(0, 30))
    def answer(self, pick: int, status: int, retry_after: float | None) -> None:
        busy = [c for c in self.conns if c[1]]
        if not busy:
            return
        region, inflight = busy[pick % len(busy)]
        index = inflight.pop(0)
        before = self.ledger.records[index].attempts
        abort = self.ledger.answered(index, status, self.now, "Err", "no", retry_after)
        record = self.ledger.records[index]
        if status == 429:
            self.throttled[region] += 1
        if status < 300:
            assert abort is None and record.state == "done" and record.error is None
        elif status == 429 or status >= 500:
            assert abort is None
            if before < self.max_attempts:
                assert record.state == "waiting"
                if retry_after is not None:
                    wait = min(self.backoff.cap, retry_after)
                    self.due[index] = (self.now + wait, self.now + wait)
                else:
                    ceiling = self.backoff.ceiling(before)
                    self.due[index] = (self.now + ceiling / 2, self.now + ceiling)
            else:
                assert record.error == f"gave up after {before} attempts: {status} Err: no"
        else:
            assert abort == f"invoke fn in {region}: Err: no" and record.state == "done"
            self.aborted = abort

    @precondition(live)
    @rule(pick=st.integers(0, 100))
    def drop(self, pick: int) -> None:
        if not self.conns:
            return
        _, inflight = self.conns.pop(pick % len(self.conns))
        resent = self.ledger.resent
        self.ledger.lost(inflight, "server closed the connection", self.now)
        assert self.ledger.resent == resent + len(inflight)

    @rule(step=st.floats(0, 20))  # always possible, also after the end
    def tick(self, step: float) -> None:
        self.now += step
        self.times.add(self.now)
        self.ledger.release(self.now)
        for index, (earliest, latest) in list(self.due.items()):
            if self.ledger.records[index].state != "waiting":
                assert earliest <= self.now  # released, never early
                del self.due[index]
            else:
                assert self.now < latest  # and never late

    @invariant()
    def counts_add_up(self) -> None:
        counts = self.ledger.counts()
        ended = 0
        for region, c in counts.items():
            assert c.accepted + c.failed + c.ready + c.in_flight + c.waiting == (
                self.region_of.count(region)
            )
            assert c.in_flight == sum(len(q) for r, q in self.conns if r == region)
            assert c.throttled == self.throttled[region]
            ended += c.accepted + c.failed
        assert ended + self.ledger.remaining == len(self.region_of)
        assert all(r.attempts <= self.max_attempts for r in self.ledger.records)

    def teardown(self) -> None:
        if not hasattr(self, "ledger"):
            return
        ledger = self.ledger
        if self.aborted is None:
            # drain: every connection drops, then the endpoint accepts whatever comes
            for _, inflight in self.conns:
                ledger.lost(inflight, "drain", self.now)
            while not ledger.finished:
                due = ledger.next_due()
                if due is not None and not any(ledger.ready(r) for r in ledger.regions):
                    self.now = max(self.now, due)
                    self.times.add(self.now)
                    ledger.release(self.now)
                for region in ledger.regions:
                    while (index := ledger.take(region, self.now)) is not None:
                        assert ledger.answered(index, 202, self.now) is None
        report = ledger.report(self.now + 1)
        assert [i.index for i in report.invocations] == list(range(len(self.region_of)))
        for inv in report.invocations:
            if self.aborted is None:
                # every invocation ends accepted, or failed with a reason
                assert inv.accepted is (inv.error is None)
                assert 1 <= inv.attempts <= self.max_attempts
                assert inv.sent_at in self.times and inv.done_at in self.times
                assert inv.sent_at <= inv.done_at
            else:
                assert inv.accepted or inv.error
            if inv.accepted:
                assert inv.status is not None and 200 <= inv.status < 300
        by_region = report.by_region()
        for region, c in ledger.counts().items():
            if region in by_region:
                assert by_region[region] == {
                    "accepted": c.accepted, "failed": c.failed + c.ready + c.in_flight + c.waiting,
                    "throttled": c.throttled,
                }


TestLaunchMachine = LaunchMachine.TestCase
TestLaunchMachine.settings = settings(max_examples=150, stateful_step_count=40)


@given(st.lists(st.tuples(st.sampled_from(["take", "answer", "drop", "tick"]),
                          st.sampled_from(STATUSES), st.floats(0, 5)), max_size=60),
       st.integers(0, 2**32))
def test_the_same_events_and_seed_give_the_same_report(
    script: list[tuple[str, int, float]], seed: int
) -> None:
    """Nothing hidden decides: no clock read, no shared random state."""

    def play() -> object:
        ledger = InvokeLedger("f", 12, REGIONS[:2], now=0.0, max_attempts=3,
                              rng=random.Random(seed))
        now, inflight = 0.0, []
        for action, status, step in script:
            if action == "take":
                for region in REGIONS[:2]:
                    index = ledger.take(region, now)
                    if index is not None:
                        inflight.append(index)
            elif action == "answer" and inflight:
                if ledger.answered(inflight.pop(0), status, now, "E", "m") is not None:
                    break
            elif action == "drop":
                ledger.lost(inflight, "gone", now)
                inflight = []
            else:
                now += step
                ledger.release(now)
        return ledger.report(now), ledger.counts(), ledger.next_due(), ledger.resent

    assert play() == play()
