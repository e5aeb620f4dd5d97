"""The pure scheduler: examples of each rule, then the whole policy by property (STYLE 11, 16).

Workers are integers here; the clock is a number each test moves by hand. :class:`Run`
applies the actions the way the coordinator does: a terminated worker's ``failed`` event is
reported back (and must be ignored: the scheduler has already recorded it).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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

from mu.config import RunConfig
from mu.faults import FaultSpec
from mu.retry import decide
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

ROOT = Path(__file__).resolve().parents[2]

LOST = "connection closed by worker in Small"  # transient: the worker was lost
REFUSED = "worker failed in Small: FAIL(retrieve: no bucket set)"  # permanent


class Run:
    """A scheduler and everything it said, applied as the coordinator applies it."""

    def __init__(self, can_launch: bool = True, **config: Any) -> None:
        config.setdefault("port", 0)
        self.config = RunConfig(**config)
        self.s: Scheduler[int] = Scheduler(self.config, can_launch=can_launch)
        self.said: list[Action[int]] = []
        self.next_worker = 0
        self.start = self.do(self.s.start(0.0))

    def do(self, actions: Sequence[Action[int]]) -> list[Action[int]]:
        self.said += actions
        for action in actions:
            if isinstance(action, Terminate):  # the loop reports the attempt's end back
                assert self.s.failed(action.worker, action.reason, by_coordinator=True) == ()
        return list(actions)

    def hello(self, now: float = 0.0) -> tuple[int, list[Action[int]]]:
        worker = self.next_worker
        self.next_worker += 1
        return worker, self.do(self.s.hello(worker, now))

    def tick(self, now: float, connections: int = 0, **progress: tuple[float, str]
             ) -> list[Action[int]]:
        where = {int(k[1:]): v for k, v in progress.items()}  # w3=(t, "S"): worker 3
        return self.do(self.s.tick(now, connections=connections, progress=where.get))


def records(actions: Sequence[Action[int]]) -> list[Record[int]]:
    return [a for a in actions if isinstance(a, Record)]


# ----------------------------------------------------------------------------- rule 1, 2


def test_workers_take_the_queue_in_order_and_the_rest_are_dismissed() -> None:
    run = Run(num_actors=2, offset=5, extra_workers=1)
    assert run.start == [Launch(3)]
    assert run.hello()[1] == [Assign(0, 5, 1, None)]
    assert run.hello()[1] == [Assign(1, 6, 1, None)]
    assert run.hello()[1] == [Dismiss(2)]
    assert run.s.finished(0) == [Record(0, 5, 1, True, None, None)]
    assert run.s.finished(1) == [Record(1, 6, 1, True, None, None), Stop()]
    assert run.s.over


def test_an_explicit_actor_list_is_the_queue() -> None:
    run = Run(actors=[7, 2, 9])
    assert [run.hello()[1][0] for _ in range(3)] == [
        Assign(0, 7, 1, None), Assign(1, 2, 1, None), Assign(2, 9, 1, None)]


def test_a_duplicated_hello_stands_in_for_no_worker_still_owed() -> None:
    run = Run(num_actors=1)
    run.hello()
    run.hello()  # a duplicated invocation: nobody was owed it
    assert run.s.owed == 0
    run.s.launched(1, 1, None, 0.0)
    assert run.s.owed == 0
    assert run.do(run.s.failed(0, LOST))[1:] == [Launch(1, "retrying actor 0: attempt 2 of 3")]
    assert run.s.owed == 1  # the retry's worker is owed, whatever arrived before


def test_workers_that_come_before_their_launch_returns_are_not_owed() -> None:
    run = Run(num_actors=2)
    run.hello()
    run.s.launched(2, 1, None, 0.0)  # one came already; one could not be started
    assert run.s.owed == 0
    fails = run.tick(0.1)
    assert fails == [FailActor(1, "no worker came for it (the launch started 1 worker(s))")]


# ----------------------------------------------------------------------------- rule 3


def test_a_transient_failure_goes_back_to_the_front_and_a_spare_takes_it() -> None:
    run = Run(num_actors=3, extra_workers=1, retries=2)
    run.hello()
    run.hello()
    actions = run.do(run.s.failed(1, LOST))
    (record,) = records(actions)
    assert (record.actor, record.attempt, record.error) == (1, 1, LOST)
    assert record.verdict is not None and record.verdict.why == "retried: the worker was lost"
    assert actions[1] == Launch(1, "retrying actor 1: attempt 2 of 3")
    assert run.hello()[1] == [Assign(2, 1, 2, None)]  # the spare: actor 1 before actor 2
    assert run.hello()[1] == [Assign(3, 2, 1, None)]


def test_a_failure_that_cannot_change_ends_the_actor() -> None:
    run = Run(num_actors=1, retries=3)
    run.hello()
    actions = run.do(run.s.failed(0, REFUSED))
    (record,) = records(actions)
    assert record.verdict == decide(REFUSED, 1, 3)
    assert not record.verdict.retry and actions[-1] == Stop()
    assert not any(isinstance(a, Launch) for a in actions)


def test_retries_are_bounded() -> None:
    run = Run(num_actors=1, retries=2)
    verdicts = []
    while not run.s.over:
        worker, _ = run.hello()
        (record,) = records(run.do(run.s.failed(worker, LOST)))
        assert record.verdict is not None
        verdicts.append(record.verdict.why)
    assert verdicts == ["retried: the worker was lost"] * 2 + [
        "not retried (the worker was lost): all 2 retries used"]
    assert [a.count for a in run.said if isinstance(a, Launch)] == [1, 1, 1]


def test_without_a_launcher_nothing_is_launched_or_retried() -> None:
    run = Run(can_launch=False, num_actors=1)
    assert run.start == []
    run.hello()
    (record,) = records(run.do(run.s.failed(0, LOST)))
    assert record.verdict is not None
    assert record.verdict.why == "not retried: no launcher to start a worker"
    assert run.tick(1e6) == []  # and nothing starves: workers join by hand


def test_events_for_a_worker_that_runs_nothing_are_ignored() -> None:
    run = Run(num_actors=1)
    run.hello()
    run.hello()  # dismissed
    assert run.s.failed(1, LOST) == () and run.s.finished(1) == ()
    assert run.s.finished(0) == [Record(0, 0, 1, True, None, None), Stop()]
    assert run.s.finished(0) == () and run.s.failed(0, LOST) == ()


# ----------------------------------------------------------------------------- rule 4


def test_an_attempt_past_its_deadline_is_terminated_and_retried() -> None:
    run = Run(num_actors=2, worker_deadline=10.0)
    run.hello(0.0)
    run.hello(5.0)
    assert run.s.wake_at == 10.0
    assert run.tick(9.9) == []
    actions = run.tick(10.0)
    assert actions[0] == Terminate(0, "deadline of 10 s passed")
    (record,) = records(actions)
    assert record.verdict is not None and record.verdict.why == "retried: a timeout"
    assert actions[-1] == Launch(1, "retrying actor 0: attempt 2 of 3")
    run.s.finished(1)
    assert run.tick(15.0) == []  # worker 1's deadline is stale: it finished


def test_at_the_run_deadline_everything_ends_and_nothing_is_retried() -> None:
    run = Run(num_actors=3, run_deadline=60.0, worker_deadline=60.0)
    run.hello()
    run.hello()
    assert run.s.wake_at == 60.0
    actions = run.tick(60.0)
    assert [a for a in actions if isinstance(a, Terminate)] == [
        Terminate(0, "run deadline of 60 s passed"), Terminate(1, "run deadline of 60 s passed")]
    assert all(r.verdict is not None
               and r.verdict.why == "not retried (a timeout): the run was ending"
               for r in records(actions))
    assert actions[-2:] == [FailActor(2, "the run deadline passed"), Stop()]
    assert run.s.stopping and run.s.over and run.tick(120.0) == []


def test_stop_ends_every_attempt_and_every_actor_left() -> None:
    run = Run(num_actors=2)
    run.hello()
    actions = run.do(run.s.stop("the run was stopped"))
    assert actions[0] == Terminate(0, "the run was stopped")
    assert records(actions)[0].verdict is not None
    assert "the run was ending" in records(actions)[0].verdict.why  # type: ignore[union-attr]
    assert actions[-2:] == [FailActor(1, "the run was stopped"), Stop()]
    assert run.hello()[1] == [Dismiss(1)]


# ----------------------------------------------------------------------------- rule 5


def speculating(**config: Any) -> Run:
    """Three attempts of state S took 1 s each; worker 3 (actor 3) has been in S since 0."""
    run = Run(num_actors=4, speculate=3.0, speculate_after=1.0, **config)
    for _ in range(4):
        run.hello(0.0)
    for n in range(3):
        run.s.finished(n, [(0.0, "S"), (1.0, "Final")])
    return run


def test_a_straggler_gets_one_twin_and_the_first_to_finish_wins() -> None:
    run = speculating()
    assert run.tick(2.9, w3=(0.0, "S")) == []  # within 3 x the median
    launch = run.tick(4.0, w3=(0.0, "S"))
    assert launch == [Launch(1, "actor 3 has been in S for 4.0 s (median 1.00 s): "
                                "launching a backup worker")]
    assert run.tick(10.0, w3=(0.0, "S")) == []  # once per actor
    assert run.hello(10.0)[1] == [Assign(4, 3, 2, None)]
    actions = run.do(run.s.finished(4))
    assert actions == [
        Record(4, 3, 2, True, None, None),
        Terminate(3, "superseded: attempt 2 finished first", quit=True),
        Record(3, 3, 1, False, "superseded: attempt 2 finished first", None),
        Stop(),
    ]


def test_the_straggler_itself_may_win() -> None:
    run = speculating()
    run.tick(4.0, w3=(0.0, "S"))
    run.hello(4.5)
    actions = run.do(run.s.finished(3))
    assert actions[1] == Terminate(4, "superseded: attempt 1 finished first", quit=True)
    assert records(actions)[1].attempt == 2


def test_a_failed_twin_leaves_the_actor_to_the_other() -> None:
    run = speculating(retries=0)
    run.tick(4.0, w3=(0.0, "S"))
    run.hello(4.5)
    assert run.do(run.s.failed(4, LOST)) == [Record(4, 3, 2, False, LOST, None)]
    assert run.s.is_pending(3) and run.s.is_running(3)
    assert run.s.finished(3)[-1] == Stop()


def test_a_twin_that_never_comes_does_not_end_the_straggler() -> None:
    run = speculating(arrival_timeout=30.0)
    run.tick(4.0, w3=(0.0, "S"))
    run.s.launched(4, 4, None, 0.0)
    run.s.launched(1, 1, None, 4.0)
    assert run.tick(100.0, w3=(0.0, "S")) == []  # the twin is given up; actor 3 runs on
    assert run.s.waiting == 0 and run.s.is_running(3)
    assert run.s.finished(3) == [Record(3, 3, 1, True, None, None), Stop()]


def test_no_straggler_checks_before_three_samples_or_without_speculate() -> None:
    run = Run(num_actors=3, speculate=2.0)
    for _ in range(3):
        run.hello()
    run.s.finished(0, [(0.0, "S"), (1.0, "F")])
    run.s.finished(1, [(0.0, "S"), (1.0, "F")])
    assert run.tick(100.0, w2=(0.0, "S")) == []
    plain = Run(num_actors=4)
    for _ in range(4):
        plain.hello()
    for n in range(3):
        plain.s.finished(n, [(0.0, "S"), (1.0, "F")])
    assert plain.tick(100.0, w3=(0.0, "S")) == []


# ----------------------------------------------------------------------------- rule 6


def test_workers_that_never_arrive_fail_their_actors_after_the_arrival_timeout() -> None:
    run = Run(num_actors=2, arrival_timeout=0.5)
    assert run.tick(5.0) == []  # the launch call has not returned
    run.s.launched(2, 2, None, 5.0)
    assert run.tick(5.5) == []
    reason = "no worker came for it (2 launched worker(s) never arrived within 0.5 s)"
    assert run.tick(5.6) == [FailActor(0, reason), FailActor(1, reason), Stop()]


@pytest.mark.parametrize(("error", "why"), [
    (None, "the launch started 0 worker(s)"),
    ("LaunchError: function fn not found", "LaunchError: function fn not found"),
])
def test_a_launch_that_started_nobody_fails_the_actors_once_no_connection_is_open(
        error: str | None, why: str) -> None:
    run = Run(num_actors=1)
    run.s.launched(1, 0, error, 0.0)
    assert run.tick(1.0, connections=1) == []  # a worker may be in its handshake
    assert run.tick(1.0) == [FailActor(0, f"no worker came for it ({why})"), Stop()]


# ----------------------------------------------------------------------------- rule 7


def test_every_assignment_carries_its_attempts_fault_plan() -> None:
    spec = FaultSpec(crash=0.5, s3_error=0.1, seed=11)
    run = Run(num_actors=2, faults=spec)
    assert run.hello()[1] == [Assign(0, 0, 1, spec.plan(0, 0))]
    run.do(run.s.failed(0, LOST))
    assert run.hello()[1] == [Assign(1, 0, 2, spec.plan(0, 1))]  # its retry: the next plan
    assert run.hello()[1] == [Assign(2, 1, 1, spec.plan(1, 0))]
    assert Run(num_actors=1, faults=FaultSpec(duplicate=0.5)).hello()[1] == [
        Assign(0, 0, 1, None)]  # nothing for the workers to inject


# ----------------------------------------------------------------------------- purity


def test_the_scheduler_imports_only_the_stdlib_and_the_pure_core() -> None:
    tree = ast.parse((ROOT / "mu" / "scheduler.py").read_text())
    imported = {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    ours = {m for m in imported if m.split(".")[0] == "mu"}
    assert ours <= {"mu.config", "mu.faults", "mu.retry"}
    assert not imported & {"time", "socket", "ssl", "select", "selectors", "threading"}


# ----------------------------------------------------------------------------- properties

REASONS = [
    (LOST, False),
    (REFUSED, False),
    ("worker failed in Small: FAIL(upload s3://b/k: SlowDown)", False),
    ("Small expected 'OK:SET', got 'OK:UPLOAD(x)'", False),
    ("worker failed in Small: OK:RETVAL(1):OUTPUT():COMMAND(x)", False),
    ("worker stopped reading: 9 bytes queued, limit 8", True),
]


@st.composite
def run_configs(draw: st.DrawFn) -> RunConfig:
    return RunConfig(
        num_actors=draw(st.integers(1, 5)),
        offset=draw(st.integers(0, 3)),
        actors=draw(st.none() | st.lists(st.integers(0, 30), min_size=1, max_size=5,
                                         unique=True)),
        extra_workers=draw(st.integers(0, 2)),
        port=0,
        retries=draw(st.integers(0, 3)),
        worker_deadline=draw(st.sampled_from([None, 30.0])),
        run_deadline=draw(st.sampled_from([None, 400.0])),
        arrival_timeout=60.0,
        speculate=draw(st.sampled_from([None, 2.0])),
        faults=draw(st.sampled_from([None, FaultSpec(crash=0.3, s3_error=0.1, seed=5)])),
    )


class SchedulerMachine(RuleBasedStateMachine):
    """Any order of launches returning, hellos (asked for or not), finishes, failures,
    ticks and a stop; the model checks every action against the policy's promises."""

    @initialize(config=run_configs(), can_launch=st.booleans())
    def setup(self, config: RunConfig, can_launch: bool) -> None:
        self.config = config
        self.can_launch = can_launch
        self.s: Scheduler[int] = Scheduler(config, can_launch=can_launch)
        self.now = 0.0
        self.next_worker = 0
        self.launches: list[int] = []  # launch calls in flight, by count
        self.running: dict[int, tuple[int, int, float]] = {}  # worker -> actor, attempt, since
        self.attempts: dict[int, int] = defaultdict(int)
        self.won: dict[int, int] = {}  # actor -> the attempt that finished
        self.lost: dict[int, str] = {}  # actor -> why it ended failed
        self.retried = 0
        self.stops = 0
        self.expect_launch = False
        self.apply(self.s.start(self.now))

    # -- applying and checking every action ----------------------------------------------

    def apply(self, actions: Sequence[Action[int]]) -> None:
        for action in actions:
            if self.expect_launch:  # a retry verdict comes with exactly its worker's launch
                assert isinstance(action, Launch) and action.count == 1
                self.expect_launch = False
            if isinstance(action, Launch):
                assert self.can_launch and action.count >= 1
                self.launches.append(action.count)
            elif isinstance(action, Assign):
                self.assigned(action)
            elif isinstance(action, Dismiss):
                assert action.worker not in self.running
            elif isinstance(action, Terminate):
                assert action.reason and action.worker in self.running
                if action.quit:  # a twin that lost: the first to finish won
                    actor = self.running[action.worker][0]
                    assert action.reason == f"superseded: attempt {self.won[actor]} finished first"
                assert self.s.failed(action.worker, "connection closed", by_coordinator=True) == ()
            elif isinstance(action, Record):
                self.recorded(action)
            elif isinstance(action, FailActor):
                assert action.reason
                assert action.actor not in self.won and action.actor not in self.lost
                assert all(a != action.actor for a, _, _ in self.running.values())
                self.lost[action.actor] = action.reason
            else:
                assert isinstance(action, Stop)
                self.stops += 1
                assert set(self.won) | set(self.lost) == set(self.config.actor_numbers())
        assert not self.expect_launch

    def assigned(self, action: Assign[int]) -> None:
        actor = action.actor
        assert actor in self.config.actor_numbers()
        assert actor not in self.won and actor not in self.lost  # never an ended actor
        assert action.worker not in self.running
        self.attempts[actor] += 1
        assert action.attempt == self.attempts[actor]
        # One attempt, one per retry granted (at most --retries), one twin (--speculate).
        assert action.attempt <= self.config.retries + 1 + (1 if self.config.speculate else 0)
        faults = self.config.faults
        assert action.fault == (faults.plan(actor, action.attempt - 1) if faults else None)
        self.running[action.worker] = (actor, action.attempt, self.now)

    def recorded(self, record: Record[int]) -> None:
        actor, attempt, _since = self.running.pop(record.worker)
        assert (record.actor, record.attempt) == (actor, attempt)
        if record.ok:
            assert actor not in self.won and actor not in self.lost  # never finished twice
            assert record.verdict is None
            self.won[actor] = attempt
            return
        assert record.error  # failed with a reason
        if record.verdict is None:  # a twin: the actor is the other's, or already won
            assert actor in self.won or any(a == actor for a, _, _ in self.running.values())
            return
        assert not any(a == actor for a, _, _ in self.running.values())
        if record.verdict.retry:
            assert self.can_launch and not self.s.stopping
            assert self.attempts[actor] <= self.config.retries  # retries are bounded
            self.retried += 1
            self.expect_launch = True
        else:
            self.lost[actor] = record.error

    # -- rules ----------------------------------------------------------------------------

    @precondition(lambda self: self.launches)
    @rule(data=st.data(), error=st.sampled_from([None, "LaunchError: throttled"]))
    def a_launch_call_returns(self, data: st.DataObject, error: str | None) -> None:
        count = self.launches.pop(data.draw(st.integers(0, len(self.launches) - 1)))
        accepted = data.draw(st.integers(0, count))
        self.s.launched(count, accepted, error if accepted < count else None, self.now)

    @rule()
    def a_worker_says_hello(self) -> None:
        worker = self.next_worker
        self.next_worker += 1
        self.apply(self.s.hello(worker, self.now))

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def a_worker_finishes(self, data: st.DataObject) -> None:
        worker = data.draw(st.sampled_from(sorted(self.running)))
        # Three visits of Small, 0.1 s each: one finish is enough to judge stragglers by.
        since = self.running[worker][2]
        visits = [(since + 0.1 * n, "Small") for n in range(3)]
        self.apply(self.s.finished(worker, [*visits, (since + 0.3, "Done")]))

    @precondition(lambda self: self.running)
    @rule(data=st.data(), reason=st.sampled_from(REASONS))
    def a_worker_fails(self, data: st.DataObject, reason: tuple[str, bool]) -> None:
        worker = data.draw(st.sampled_from(sorted(self.running)))
        self.apply(self.s.failed(worker, reason[0], by_coordinator=reason[1]))

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 5.0, 40.0, 100.0]), connections=st.integers(0, 2))
    def time_passes(self, dt: float, connections: int) -> None:
        self.now += dt
        self.apply(self.s.tick(self.now, connections=connections, progress=self.progress))

    @rule(stop=st.integers(0, 4))
    def maybe_stop(self, stop: int) -> None:
        if stop == 0:
            self.apply(self.s.stop("the run was stopped"))

    def progress(self, worker: int) -> tuple[float, str]:
        return self.running[worker][2], "Small"

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def the_model_and_the_scheduler_agree(self) -> None:
        live = {w for workers in self.s.running.values() for w in workers}
        assert live == set(self.running)
        assert self.s.owed >= 0
        assert self.stops == (1 if self.s.over else 0)
        assert not any(a in self.won for a, _, _ in self.running.values())

    def teardown(self) -> None:
        """Drive the run to its end: every actor ends done or failed with a reason."""
        if not hasattr(self, "s"):
            return
        for _ in range(100):
            if self.s.over:
                break
            while self.launches:
                count = self.launches.pop()
                self.s.launched(count, count, None, self.now)
            while self.s.waiting and not self.s.over:
                self.a_worker_says_hello()
            for worker in sorted(self.running):
                if worker in self.running:
                    self.apply(self.s.finished(worker, ()))
            self.now += 1000.0
            self.apply(self.s.tick(self.now, progress=self.progress))
        assert self.s.over and self.stops == 1
        actors = set(self.config.actor_numbers())
        assert set(self.won) | set(self.lost) == actors
        assert not set(self.won) & set(self.lost)
        assert all(self.lost.values())
        assert not self.running


SchedulerMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None)
TestSchedulerMachine = SchedulerMachine.TestCase


@settings(max_examples=200, deadline=None)
@given(config=run_configs(), hellos=st.lists(st.floats(0, 500), max_size=12))
def test_the_same_events_give_the_same_actions(config: RunConfig, hellos: list[float]) -> None:
    """Decisions depend on the events and the times given, nothing else."""
    def play() -> list[Action[int]]:
        s: Scheduler[int] = Scheduler(config)
        said = list(s.start(0.0))
        for worker, at in enumerate(sorted(hellos)):
            said += s.hello(worker, at)
            said += s.tick(at + 1.0, progress=lambda w: (0.0, "S"))
            if worker % 3 == 1:
                said += s.failed(worker, LOST)
            elif worker % 3 == 2:
                said += s.finished(worker, [(0.0, "S"), (at, "F")])
        return said + list(s.tick(1e6))

    assert play() == play()
