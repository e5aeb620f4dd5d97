"""One actor's messages fail at most that actor; strangers are held within bounds.

* A state that raises while it handles a message fails its actor with a reason naming the
  state, the message and the error; the actor never raises (property over arbitrary texts).
* A worker's ``INFO`` cannot overwrite the keys a job's states own (a loop counter in
  progress, a reserved key); other INFO keys still reach ``info`` and kick
  :class:`~mu.states.InfoWatcherState`.
* :class:`~mu.net.Admission`, the pure policy for unauthenticated connections: never above
  its bounds, drops the oldest, never the newcomer, and a connection is dropped only after
  at least ``min(total, per_address)`` others arrived behind it.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mu.actor import Actor, Failed, Finished, HelloReceived, Lifecycle
from mu.apps.png2y4m import ConfigState, Png2Y4MConfig
from mu.net import Admission
from mu.protocol import NEED_DATA, FrameDecoder, encode_text, expected_response
from mu.states import (
    CommandListState,
    ErrorState,
    ForLoopState,
    InfoWatcherState,
    MachineState,
    MultiPassState,
    OnePassState,
    SuperpositionState,
    TerminalState,
    advance,
)

TOKEN = "tok"


class Done(TerminalState):
    pass


class Parse(MultiPassState):
    """Trusts the worker: ``int()`` of what follows ``OK:N:`` (raises on anything else)."""

    expect = "OK:N:"
    passes = 2
    nextState = Done

    def on_pass(self, msg: str) -> None:
        self.info["total"] = self.info.get("total", 0) + int(msg[5:])


class Body(OnePassState):
    expect = "OK:E"
    command = "echo:x"


class Loop(ForLoopState):
    iterKey = "frame"
    iterFin = 3
    loopState = Body
    exitState = Parse


Body.nextState = Loop


class Start(CommandListState):
    commandlist = [("OK:HELLO", "echo:x")]
    nextState = Loop


class Kicked(OnePassState):
    expect = "OK:ECHO"
    nextState = Done


class Watch(InfoWatcherState):
    kickKey = "go"
    kickState = Kicked


def events(actor: Actor) -> list[Any]:
    out = []
    while (event := actor.next_event()) is not NEED_DATA:
        out.append(event)
    return out


def started(first: Any = Start, config: Any = None) -> Actor:
    actor = Actor(TOKEN, peer="127.0.0.1:1")
    actor.receive_data(encode_text(f"OK:HELLO:{TOKEN}"))
    assert isinstance(events(actor)[0], HelloReceived)
    actor.start(7, first, config)
    return actor


def feed(actor: Actor, *texts: str) -> list[Any]:
    actor.receive_data(b"".join(encode_text(t) for t in texts))
    return events(actor)


# ----------------------------------------------------------------- a state that raises


def test_a_state_that_raises_fails_its_actor_with_state_message_and_error() -> None:
    actor = started()
    got = feed(actor, "OK:ECHO(x)", "OK:ECHO(x)", "OK:ECHO(x)", "OK:N:1", "OK:N:x")
    assert len(got) == 1 and isinstance(got[0], Failed)
    assert actor.lifecycle is Lifecycle.ERROR
    assert got[0].reason == (
        "Parse raised ValueError handling 'OK:N:x': invalid literal for int() with base 10: 'x'"
    )
    assert isinstance(actor.state, ErrorState) and actor.state.failed_in == "Parse"


def test_a_first_state_that_raises_on_start_fails_its_actor() -> None:
    class Broken(OnePassState):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            raise KeyError("bucket")

    actor = started(Broken)
    got = events(actor)
    assert [type(e) for e in got] == [Failed]
    assert got[0].reason == "Broken raised KeyError on start: 'bucket'"
    assert TOKEN not in got[0].reason


def test_the_png2y4m_job_survives_a_frame_counter_sent_by_the_worker() -> None:
    """The issue's case: ``INFO:frame:x`` mid-loop made ForLoopState do ``"x" + 1``."""
    actor = started(ConfigState, Png2Y4MConfig(video="v", bucket="b", frames=3))
    commands: list[str] = []
    while "retrieve:" not in commands:  # answer each command until the first retrieve
        decoder = FrameDecoder()
        decoder.receive_data(actor.data_to_send())
        commands = []
        while isinstance(frame := decoder.next_frame(), bytes):
            commands.append(frame.decode())
        assert commands and not events(actor)
        if "retrieve:" not in commands:
            feed(actor, *(f"{expected_response(c)}(x)" for c in commands))
    got = feed(actor, "INFO:frame:x", "OK:RETRIEVE(b/k)")
    assert [type(e) for e in got] == [Failed]
    assert "INFO:frame:x" in got[0].reason and "'frame'" in got[0].reason


@st.composite
def worker_text(draw: st.DrawFn) -> str:
    head = draw(st.sampled_from(
        ["OK:ECHO(x)", "OK:N:", "OK:E", "OK", "FAIL(", "INFO:frame:", "INFO:total:", "INFO:go:",
         "INFO:", "OK:HELLO:", ""]
    ))
    return head + draw(st.text(max_size=8))


@given(st.lists(worker_text(), max_size=30), st.sampled_from([Start, Watch]))
@settings(max_examples=300, deadline=None)
def test_no_worker_text_makes_an_actor_raise(texts: list[str], first: Any) -> None:
    actor = started(first)
    got = events(actor)
    for text in texts:
        got += feed(actor, text)
    ends = [e for e in got if isinstance(e, Failed | Finished)]
    assert len(ends) <= 1
    if actor.lifecycle is Lifecycle.ERROR:
        assert isinstance(ends[0], Failed) and ends[0].reason
    elif actor.lifecycle is Lifecycle.DONE:
        assert isinstance(ends[0], Finished)
    else:
        assert actor.lifecycle is Lifecycle.RUNNING and not ends


# ---------------------------------------------------------------- INFO and owned keys


def test_info_for_a_loop_counter_in_progress_fails_the_machine() -> None:
    state, _ = advance(Start(None, 1), "OK:HELLO:t")
    assert isinstance(state, Body) and state.info["frame"] == 0
    state, _ = advance(state, "INFO:frame:99")
    assert isinstance(state, ErrorState)
    assert state.message == (
        "Body: the worker's 'INFO:frame:99' would overwrite info['frame'], "
        "which the job's states own"
    )
    assert state.info["frame"] == 0


def test_info_for_other_keys_and_after_the_loop_still_lands_in_info() -> None:
    state = Start(None, 1)
    state, _ = advance(state, "INFO:frame:early")
    assert state.info["frame"] == "early"
    state, _ = advance(state, "OK:HELLO:t")  # before the loop: not owned yet
    for _ in range(3):
        state, _ = advance(state, "OK:ECHO(x)")
    assert isinstance(state, Parse) and state.info["frame"] == 3
    state, _ = advance(state, "INFO:frame:late")  # the loop is over: no longer owned
    assert state.info["frame"] == "late"


def test_reserved_keys_are_kept_and_info_watchers_still_kick() -> None:
    class Guarded(Watch):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.reserve("quota")

    state: MachineState = Guarded(None, 1)
    assert isinstance(advance(state, "INFO:quota:1")[0], ErrorState)
    state = Guarded(None, 1)
    state, commands = advance(state, "INFO:other:1")
    assert isinstance(state, Guarded) and state.info["other"] == "1"
    state, commands = advance(state, "INFO:go:now")
    assert isinstance(state, Kicked) and commands == []
    assert state.info["go"] == "now"


def test_a_superposition_routes_info_to_its_watcher_but_not_for_owned_keys() -> None:
    class Both(SuperpositionState):
        state_constructors = [Watch]
        nextState = Done

    state, _ = advance(Both(None, 1), None)
    state.reserve("k")
    assert isinstance(advance(state, "INFO:k:1")[0], ErrorState)
    state, _ = advance(Both(None, 1), None)
    assert isinstance(advance(state, "INFO:go:1")[0], Both)


# ----------------------------------------------------------- admission of strangers


@given(
    st.integers(1, 6), st.integers(1, 6),
    st.lists(st.tuples(st.booleans(), st.sampled_from("abc"), st.integers(0, 40)), max_size=80),
)
@settings(max_examples=300, deadline=None)
def test_admission_keeps_bounds_and_drops_only_the_oldest(
    total: int, per_address: int, ops: list[tuple[bool, str, int]]
) -> None:
    policy: Admission[int] = Admission(total, per_address)
    order: list[tuple[int, str]] = []  # held, oldest first (the model)
    arrivals: dict[int, int] = {}  # key -> how many were admitted before it
    for n, (admit, address, pick) in enumerate(ops):
        if admit or not order:
            evicted = policy.admit(n, address)
            assert n not in evicted
            for key in evicted:  # each is the oldest of its address or of all
                same = [k for k, a in order if a == order_address(order, key)]
                assert key in (order[0][0], same[0])
                assert len(arrivals) - arrivals[key] >= min(total, per_address)
                order = [(k, a) for k, a in order if k != key]
            order.append((n, address))
            arrivals[n] = len(arrivals)
        else:
            key = order[pick % len(order)][0]
            policy.forget(key)
            order = [(k, a) for k, a in order if k != key]
        assert len(policy) == len(order) <= total
        for a in "abc":
            assert policy.count(a) == sum(1 for _, b in order if b == a) <= per_address
        assert policy.oldest() == (order[0][0] if order else None)


def order_address(order: list[tuple[int, str]], key: int) -> str:
    return next(a for k, a in order if k == key)


def test_admission_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="bounds must be >= 1, got total=0, per_address=1"):
        Admission(0, 1)
