"""The sans-IO actor: hello and token, lifecycle table, bad input never raises (STYLE 11, 12)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mu.actor import (
    LIFECYCLE,
    Actor,
    Failed,
    Finished,
    HelloReceived,
    Lifecycle,
    Rejected,
)
from mu.errors import LocalProtocolError
from mu.protocol import NEED_DATA, FrameDecoder, encode_frame, encode_text
from mu.states import CommandListState, ErrorState, OnePassState, TerminalState, TerminatedState
from tests.strategies import chunked

TOKEN = "s3cret-token"


class Final(TerminalState):
    pass


class Job(CommandListState):
    commandlist = ["set:a:1", "run:", ("OK:R", "quit:")]
    nextState = Final


def events(actor: Actor) -> list[Any]:
    out = []
    while (ev := actor.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def sent(actor: Actor) -> list[str]:
    d = FrameDecoder()
    d.receive_data(actor.data_to_send())
    out = []
    while isinstance(frame := d.next_frame(), bytes):
        out.append(frame.decode())
    return out


def hello(token: str = TOKEN) -> bytes:
    return encode_text(f"OK:HELLO:{token}")


def started(job: type = Job, num: int = 4) -> Actor:
    actor = Actor(TOKEN, peer="127.0.0.1:5000")
    actor.receive_data(hello())
    assert events(actor) == [HelloReceived()]
    actor.start(num, job, config={"k": "v"})
    return actor


def test_whole_conversation() -> None:
    actor = started()
    assert actor.lifecycle is Lifecycle.RUNNING
    assert sent(actor) == ["set:a:1"]
    actor.receive_data(encode_text("OK:SET(a)"))
    assert sent(actor) == ["run:"]
    actor.receive_data(encode_text("OK:RETVAL(0):OUTPUT():COMMAND(x)"))
    assert sent(actor) == ["quit:"]
    (ev,) = events(actor)
    assert isinstance(ev, Finished) and isinstance(ev.state, Final)
    assert actor.lifecycle is Lifecycle.DONE
    assert actor.state is ev.state and actor.state.config == {"k": "v"}
    assert [n for _, n in actor.state.timestamps] == ["Job", "Final"]
    assert actor.messages_in == 3 and actor.messages_out == 3
    assert "Actor 4 DONE state=Final" in repr(actor)


@settings(max_examples=100)
@given(data=st.data())
def test_any_chunking_gives_the_same_conversation(data: st.DataObject) -> None:
    actor = Actor(TOKEN)
    stream = hello() + encode_text("OK:SET(a)") + encode_text("OK:RUNNING(x)")
    for chunk in data.draw(chunked(stream)):
        actor.receive_data(chunk)
        if actor.lifecycle is Lifecycle.READY:
            assert events(actor) == [HelloReceived()]
            actor.start(0, Job)
    assert actor.lifecycle is Lifecycle.DONE
    assert sent(actor) == ["set:a:1", "run:", "quit:"]


def test_frames_before_start_wait_in_the_decoder() -> None:
    actor = Actor(TOKEN)
    actor.receive_data(hello() + encode_text("OK:SET(a)"))
    assert actor.lifecycle is Lifecycle.READY
    actor.start(1, Job)
    assert sent(actor) == ["set:a:1", "run:"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (hello("wrong"), "wrong run token"),
        (encode_text("OK:HELLO"), "no run token"),
        (encode_text("OK:HELLO:"), "no run token"),
        (encode_text("GET / HTTP/1.1"), "expected hello"),
        (encode_text(f"OK:HELLOjunk:HELLO:{TOKEN}"), "expected hello"),
        (encode_text(f"xOK:HELLO:{TOKEN}"), "expected hello"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not 12 decimal digits"),
        (b"%012d " % (10**9), "exceeds maximum"),
        (b"", "closed before hello"),
    ],
)
def test_rejections(data: bytes, reason: str) -> None:
    actor = Actor(TOKEN, peer="10.0.0.1:1")
    actor.receive_data(data)
    (ev,) = events(actor)
    assert isinstance(ev, Rejected) and reason in ev.reason
    assert actor.lifecycle is Lifecycle.ERROR
    actor.receive_data(b"more")  # ignored after the end
    assert events(actor) == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (encode_text("FAIL(no such key)"), "no such key"),
        (encode_text("OK:UPLOAD(x)"), "expected 'OK:SET'"),
        (b"000000000009 OK:S", "stream ended inside a frame"),
        (b"zzz", "not 12 decimal digits"),
        (encode_text("gibberish"), "got 'gibberish'"),
    ],
)
def test_bad_input_while_running_fails_only_this_actor(data: bytes, reason: str) -> None:
    actor = started()
    sent(actor)
    actor.receive_data(data)
    actor.receive_data(b"")
    (ev,) = events(actor)
    assert isinstance(ev, Failed) and reason in ev.reason
    assert isinstance(actor.state, ErrorState) and reason in actor.state.message
    assert actor.lifecycle is Lifecycle.ERROR


def test_eof_while_running() -> None:
    actor = started()
    actor.receive_data(b"")
    (ev,) = events(actor)
    assert isinstance(ev, Failed) and ev.reason == "connection closed by worker in Job"


def test_terminate_running_and_awaiting() -> None:
    actor = started()
    actor.terminate("deadline of 30 s passed")
    (ev,) = events(actor)
    assert isinstance(ev, Failed) and isinstance(ev.state, TerminatedState)
    assert actor.state is ev.state and ev.state.failed_in == "Job"
    actor.terminate("again")  # no effect after the end
    assert events(actor) == []

    waiting = Actor(TOKEN)
    waiting.terminate("no hello within 10 s")
    assert events(waiting) == [Rejected("no hello within 10 s")]


def test_dismiss_surplus_worker() -> None:
    actor = Actor(TOKEN)
    actor.receive_data(hello())
    events(actor)
    actor.dismiss()
    assert actor.lifecycle is Lifecycle.DONE and sent(actor) == ["quit:"]


def test_first_state_that_does_not_wait_ignores_hello() -> None:
    class Fire(OnePassState):
        command = "echo:go"
        nextState = Final

    actor = started(Fire)
    assert sent(actor) == ["echo:go"]
    assert actor.lifecycle is Lifecycle.DONE


def test_injected_clock() -> None:
    ticks = itertools.count()
    actor = Actor(TOKEN, clock=lambda: float(next(ticks)))
    actor.receive_data(hello())
    actor.start(0, Job)
    assert actor.state is not None and actor.state.timestamps == [(0.0, "Job")]


def test_lifecycle_table_covers_every_lifecycle() -> None:
    assert set(LIFECYCLE) == set(Lifecycle)
    assert LIFECYCLE[Lifecycle.DONE] == {} and LIFECYCLE[Lifecycle.ERROR] == {}


# Every (lifecycle, input) pair: a valid lifecycle, or LocalProtocolError and ERROR.
INPUTS = ["hello", "bad-hello", "garbage", "eof", "ok", "fail", "start", "dismiss", "terminate"]


def reach(lifecycle: Lifecycle) -> Actor:
    actor = Actor(TOKEN)
    if lifecycle is Lifecycle.AWAIT_HELLO:
        return actor
    if lifecycle is Lifecycle.ERROR:
        actor.receive_data(b"x")
        return actor
    actor.receive_data(hello())
    if lifecycle is Lifecycle.READY:
        return actor
    actor.start(0, Job)
    if lifecycle is Lifecycle.DONE:
        actor.receive_data(encode_text("OK:SET(a)") + encode_text("OK:R"))
    return actor


@settings(max_examples=300)
@given(lifecycle=st.sampled_from(Lifecycle), inputs=st.lists(st.sampled_from(INPUTS), max_size=6))
def test_every_lifecycle_input_pair(lifecycle: Lifecycle, inputs: list[str]) -> None:
    actor = reach(lifecycle)
    assert actor.lifecycle is lifecycle
    for what in inputs:
        before = actor.lifecycle
        try:
            if what == "hello":
                actor.receive_data(hello())
            elif what == "bad-hello":
                actor.receive_data(hello("nope"))
            elif what == "garbage":
                actor.receive_data(b"\x00\xffjunk")
            elif what == "eof":
                actor.receive_data(b"")
            elif what == "ok":
                actor.receive_data(encode_text("OK:SET(a)"))
            elif what == "fail":
                actor.receive_data(encode_text("FAIL(x)"))
            elif what == "start":
                actor.start(1, Job)
            elif what == "dismiss":
                actor.dismiss()
            else:
                actor.terminate("stop")
        except LocalProtocolError as exc:
            assert what in ("start", "dismiss")
            assert "can't handle" in str(exc)
            assert actor.lifecycle is Lifecycle.ERROR
        else:
            if before in (Lifecycle.DONE, Lifecycle.ERROR):
                assert actor.lifecycle is before
        assert actor.lifecycle in Lifecycle
        events(actor)
        actor.data_to_send()


def test_large_frame_limit_is_configurable() -> None:
    actor = Actor(TOKEN, max_frame=16)
    actor.receive_data(encode_frame(b"OK:HELLO:" + b"x" * 100))
    (ev,) = events(actor)
    assert isinstance(ev, Rejected) and "exceeds maximum 16" in ev.reason


def test_a_hello_whose_token_is_not_utf8_is_rejected_not_raised() -> None:
    actor = Actor("t0k3n")
    actor.receive_data(encode_frame(b"OK:HELLO:\xff"))
    event = actor.next_event()
    assert isinstance(event, Rejected) and "wrong run token" in event.reason


@settings(max_examples=100)
@given(data=st.data(), request=st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                       min_size=1, max_size=40))
def test_the_request_id_info_is_kept_for_the_bill_and_seen_by_no_state(
    data: st.DataObject, request: str
) -> None:
    from mu.protocol import REQUEST_ID_INFO

    actor = Actor(TOKEN)
    stream = (hello() + encode_text(REQUEST_ID_INFO + request) + encode_text("OK:SET(a)")
              + encode_text("OK:RETVAL(0):OUTPUT():COMMAND(x)"))
    for chunk in data.draw(chunked(stream)):
        actor.receive_data(chunk)
        if actor.lifecycle is Lifecycle.READY:
            assert events(actor) == [HelloReceived()]
            actor.start(0, Job)
    assert actor.lifecycle is Lifecycle.DONE
    assert actor.request_id == request
    assert actor.state is not None and "lambda_request_id" not in actor.state.info
    assert sent(actor) == ["set:a:1", "run:", "quit:"]
