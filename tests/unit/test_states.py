"""The state classes, by example and by property (STYLE rule 11).

A simulated correct worker answers every command the machine sends, in order; hypothesis
draws the command lists, the answers that go wrong, and the interleavings.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from mu.errors import LocalProtocolError
from mu.states import (
    MAX_IMMEDIATE_STEPS,
    CommandListState,
    ErrorState,
    ForLoopState,
    IfElseState,
    InfoWatcherState,
    MachineState,
    MultiPassState,
    OnePassState,
    SuperpositionState,
    TerminalState,
    TerminatedState,
    advance,
)

HELLO = "OK:HELLO:token"


def respond(command: str) -> str | None:
    """What a correct worker answers (blocking mode)."""
    name, _, args = command.partition(":")
    key = args.partition(":")[0]
    return {
        "set": f"OK:SET({key})",
        "seti": f"OK:SETI({key})",
        "get": "OK:GET(v)",
        "retrieve": "OK:RETRIEVE(bucket/key)",
        "upload": "OK:UPLOAD(bucket/key)",
        "run": "OK:RETVAL(0):OUTPUT():COMMAND(x)",
        "echo": f"OK:ECHO({args})",
        "quit": None,
    }[name]


class Final(TerminalState):
    extra = "(final)"


def command_list_class(entries: list[Any], pipelined: bool) -> type[CommandListState]:
    return type(
        "Listed",
        (CommandListState,),
        {"commandlist": entries, "pipelined": pipelined, "nextState": Final},
    )


@dataclass
class Run:
    state: MachineState
    sent: list[str]
    max_outstanding: int


def drive(
    first: MachineState,
    answer: Callable[[int, str], str | None] = lambda i, c: respond(c),
    hello: str | None = HELLO,
) -> Run:
    """Feed the hello, then answer each sent command in order until the machine ends."""
    state, sent = advance(first, hello if first.waiting else None)
    outstanding: deque[str] = deque(sent)
    max_out = len(outstanding)
    i = 0
    while outstanding and not isinstance(state, TerminalState):
        command = outstanding.popleft()
        reply = answer(i, command)
        i += 1
        if reply is None:
            continue
        state, more = advance(state, reply)
        sent.extend(more)
        outstanding.extend(more)
        max_out = max(max_out, len(outstanding))
    return Run(state, sent, max_out)


commands = st.one_of(
    st.builds(lambda k, v: f"set:{k}:{v}", st.sampled_from("abc"), st.integers(0, 9)),
    st.builds(lambda k, v: f"seti:{k}:{v}", st.sampled_from("xyz"), st.integers(0, 9)),
    st.sampled_from(["retrieve:", "upload:", "run:", "run:./png2y4m -o out in"]),
    st.builds(lambda n: f"echo:{n}", st.integers(0, 99)),
)


# ---------------------------------------------------------------- CommandListState


@settings(max_examples=200)
@given(cmds=st.lists(commands, min_size=1, max_size=12), pipelined=st.booleans())
def test_correct_worker_gets_exact_commands_in_order(cmds: list[str], pipelined: bool) -> None:
    run = drive(command_list_class(cmds, pipelined)(None))
    assert isinstance(run.state, Final)
    assert run.sent == cmds
    if pipelined:
        assert run.max_outstanding == len(cmds)
    else:
        assert run.max_outstanding == 1


@settings(max_examples=200)
@given(
    cmds=st.lists(commands, min_size=2, max_size=10),
    pipelined=st.booleans(),
    data=st.data(),
    fail=st.booleans(),
)
def test_wrong_or_fail_answer_goes_to_error_state(
    cmds: list[str], pipelined: bool, data: st.DataObject, fail: bool
) -> None:
    # Responses to commands 0..n-2 are awaited by this state; the last one is not.
    bad = data.draw(st.integers(0, len(cmds) - 2))
    reply = f"FAIL(boom {bad})" if fail else "OK:UNEXPECTED"
    run = drive(
        command_list_class(cmds, pipelined)(None),
        answer=lambda i, c: reply if i == bad else respond(c),
    )
    assert isinstance(run.state, ErrorState)
    assert reply in run.state.message
    assert run.state.failed_in == "Listed"
    # Nothing after the failure point is sent in blocking mode.
    if not pipelined:
        assert run.sent == cmds[: bad + 1]


def test_bad_hello_goes_to_error_state() -> None:
    state, sent = advance(command_list_class(["set:a:1"], False)(None), "FAIL(nope)")
    assert isinstance(state, ErrorState)
    assert "FAIL(nope)" in state.message
    assert sent == []


def test_tuple_and_none_entries() -> None:
    entries = [
        ("OK:HELLO", "set:a:1"),
        (None, "set:b:2"),  # sent at once, without waiting for OK:SET(a)
        ("OK:SET(a)", None),  # only waits
        ("OK:SET(b)", "run:"),
        None,  # waits for the run's response, sends nothing
        "set:c:3",  # previous entry sent nothing: sent at once
    ]
    cls = command_list_class(entries, False)
    state, sent = advance(cls(None), HELLO)
    assert sent == ["set:a:1", "set:b:2"]
    state, sent = advance(state, "OK:SET(a)")
    assert sent == []
    state, sent = advance(state, "OK:SET(b)")
    assert sent == ["run:"]
    state, sent = advance(state, "OK:RUNNING(x)")
    assert sent == ["set:c:3"]
    assert isinstance(state, Final)


def test_subclass_may_set_commandlist_in_init() -> None:
    class PerActor(CommandListState):
        nextState = Final

        def __init__(self, prevState: MachineState | None = None, *a: Any, **kw: Any) -> None:
            super().__init__(prevState, *a, **kw)
            self.commandlist = [f"set:actor:{self.actorNum}", None]

    run = drive(PerActor(None, 7))
    assert run.sent == ["set:actor:7"]
    assert isinstance(run.state, Final)


def test_empty_commandlist_moves_on_at_once() -> None:
    state, sent = advance(command_list_class([], False)(None), None)
    assert isinstance(state, Final)
    assert sent == []


@pytest.mark.parametrize("entry", [42, ("a", "b", "c")])
def test_bad_commandlist_entries_are_named(entry: Any) -> None:
    with pytest.raises(LocalProtocolError, match="entry 0"):
        advance(command_list_class([entry], False)(None), HELLO)


def test_info_never_counts_as_a_response() -> None:
    state, _ = advance(command_list_class(["geti:n", "set:a:1"], False)(None), HELLO)
    state, sent = advance(state, "INFO:n:5")
    assert sent == [] and state.info["n"] == "5"
    state, sent = advance(state, "OK:GETI(n)")
    assert sent == ["set:a:1"]


def test_long_messages_are_clipped_in_errors() -> None:
    state, _ = advance(command_list_class(["set:a:1", "set:b:2"], False)(None), HELLO)
    state, _ = advance(state, "FAIL(" + "x" * 10_000 + ")")
    assert isinstance(state, ErrorState)
    assert len(state.message) < 400 and "chars)" in state.message


# ---------------------------------------------------------------- OnePass / MultiPass


def test_one_pass_state() -> None:
    class Once(OnePassState):
        expect = "OK:HELLO"
        command = "echo:hi"
        nextState = Final

    state, sent = advance(Once(None), HELLO)
    assert isinstance(state, Final) and sent == ["echo:hi"]
    state, sent = advance(Once(None), "OK:SOMETHING")
    assert isinstance(state, ErrorState) and "expected 'OK:HELLO'" in state.message


def test_waiting_state_needs_a_message() -> None:
    class Once(OnePassState):
        expect = "OK"

    with pytest.raises(LocalProtocolError, match="waits for a message"):
        Once(None).transition(None)


def test_missing_next_state_is_an_error_state() -> None:
    state, _ = advance(OnePassState(None), None)
    assert isinstance(state, ErrorState) and "no next state" in state.message


@given(passes=st.integers(1, 20))
def test_multi_pass_waits_for_each_pass(passes: int) -> None:
    seen: list[str] = []

    class Many(MultiPassState):
        expect = "OK:UPLOAD"
        command = "quit:"
        nextState = Final

        def __init__(self, prevState: MachineState | None = None, *a: Any, **kw: Any) -> None:
            super().__init__(prevState, *a, **kw)
            self.passes = passes

        def on_pass(self, msg: str) -> None:
            seen.append(msg)

    state: MachineState = Many(None)
    for i in range(passes):
        assert not isinstance(state, TerminalState)
        state, sent = advance(state, f"OK:UPLOAD(b/{i})")
    assert isinstance(state, Final) and sent == ["quit:"]
    assert seen == [f"OK:UPLOAD(b/{i})" for i in range(passes)]


# ---------------------------------------------------------------- ForLoop / IfElse


def make_loop(init: int, fin: int, break_at: int | None) -> type[MachineState]:
    class Body(CommandListState):
        commandlist = [(None, "echo:x"), ("OK:ECHO", None)]

        def __init__(self, prevState: MachineState | None = None, *a: Any, **kw: Any) -> None:
            super().__init__(prevState, *a, **kw)
            self.commandlist = [(None, f"echo:{self.info['k']}"), ("OK:ECHO", None)]
            if break_at is not None and self.info["k"] == break_at:
                self.info["stop"] = True

    class Loop(ForLoopState):
        loopState = Body
        exitState = Final
        iterKey = "k"
        iterInit = init
        iterFin = fin
        breakKey = "stop" if break_at is not None else None

    Body.nextState = Loop
    return Loop


@settings(max_examples=100)
@given(init=st.integers(-3, 5), fin=st.integers(-3, 12), brk=st.none() | st.integers(-3, 12))
def test_for_loop_iteration_counts(init: int, fin: int, brk: int | None) -> None:
    run = drive(make_loop(init, fin, brk)(None), hello=None)
    assert isinstance(run.state, Final)
    expected = list(range(init, fin))
    if brk is not None and brk in expected:
        expected = expected[: expected.index(brk) + 1]
    assert run.sent == [f"echo:{k}" for k in expected]


def test_loop_reentered_from_outside_restarts() -> None:
    loop = make_loop(0, 2, None)

    class Outer(ForLoopState):
        iterKey = "o"
        iterFin = 3
        loopState = loop
        exitState = Final

    loop.exitState = Outer  # type: ignore[attr-defined]
    run = drive(Outer(None), hello=None)
    assert isinstance(run.state, Final)
    assert run.sent == ["echo:0", "echo:1"] * 3


@pytest.mark.parametrize("flag", [True, False])
def test_if_else_branches(flag: bool) -> None:
    class Yes(TerminalState):
        pass

    class No(TerminalState):
        pass

    class Branch(IfElseState):
        consequentState = Yes
        alternativeState = No

        def testfn(self) -> bool:
            return bool(self.config["flag"])

    state, _ = advance(Branch(None, config={"flag": flag}), None)
    assert type(state) is (Yes if flag else No)
    assert [name for _, name in state.timestamps] == ["Branch", "Yes" if flag else "No"]


def test_if_else_without_testfn_says_so() -> None:
    with pytest.raises(NotImplementedError, match="testfn"):
        advance(IfElseState(None), None)


def test_machine_that_never_waits_ends_in_error() -> None:
    class Spin(IfElseState):
        def testfn(self) -> bool:
            return True

    Spin.consequentState = Spin
    state, _ = advance(Spin(None), None)
    assert isinstance(state, ErrorState)
    assert f"{MAX_IMMEDIATE_STEPS} transitions without waiting" in state.message


# ---------------------------------------------------------------- InfoWatcher


def test_info_watcher_is_kicked_by_its_key() -> None:
    class Done(TerminalState):
        pass

    kicks: list[tuple[str, str]] = []

    class Watch(InfoWatcherState):
        kickKey = "peer"
        kickState = Done
        kickCommand = "echo:kicked"

        def kicked(self, key: str, value: str) -> None:
            kicks.append((key, value))

    state, sent = advance(Watch(None), None)
    assert state.waiting and sent == []
    state, sent = advance(state, "INFO:other:1")
    assert isinstance(state, Watch) and state.info["other"] == "1"
    state, sent = advance(state, "INFO:peer:hello")
    assert isinstance(state, Done) and sent == ["echo:kicked"]
    assert kicks == [("peer", "hello")]


def test_info_watcher_rejects_other_messages() -> None:
    state, _ = advance(InfoWatcherState(None), "OK:SET(a)")
    assert isinstance(state, ErrorState)


# ---------------------------------------------------------------- Superposition


def sub_machine(tag: str, steps: int) -> type[CommandListState]:
    entries: list[Any] = [(None, f"echo:{tag}0")]
    for j in range(1, steps):
        entries.append((f"OK:ECHO({tag}{j - 1})", f"echo:{tag}{j}"))
    entries.append((f"OK:ECHO({tag}{steps - 1})", None))
    return type(f"Sub{tag}", (CommandListState,), {"commandlist": entries, "nextState": Final})


def superposition(lengths: list[int]) -> type[MachineState]:
    subs = [sub_machine(chr(ord("a") + i), n) for i, n in enumerate(lengths)]

    class Both(SuperpositionState):
        state_constructors = subs
        nextState = Final
        command = "quit:"

    class Start(OnePassState):
        expect = "OK:HELLO"
        nextState = Both

    return Start


@settings(max_examples=200)
@given(lengths=st.lists(st.integers(1, 5), min_size=1, max_size=4), data=st.data())
def test_superposition_under_every_interleaving(lengths: list[int], data: st.DataObject) -> None:
    state, sent = advance(superposition(lengths)(None), HELLO)
    outstanding = list(sent)
    all_sent = list(sent)
    while outstanding and not isinstance(state, TerminalState):
        command = outstanding.pop(data.draw(st.integers(0, len(outstanding) - 1)))
        state, more = advance(state, respond(command) or "")
        outstanding.extend(more)
        all_sent.extend(more)
    assert isinstance(state, Final)
    expected = {f"echo:{chr(ord('a') + i)}{j}" for i, n in enumerate(lengths) for j in range(n)}
    assert all_sent[-1] == "quit:"
    assert sorted(all_sent[:-1]) == sorted(expected)


def test_superposition_requeues_early_responses() -> None:
    state, sent = advance(superposition([2, 1])(None), HELLO)
    assert sorted(sent) == ["echo:a0", "echo:b0"]
    # A late-expected response first: held, not an error.
    state, sent = advance(state, "OK:ECHO(b0)")
    assert isinstance(state, SuperpositionState) and not state.held
    state, sent = advance(state, "OK:ECHO(a0)")
    assert sent == ["echo:a1"]
    state, sent = advance(state, "OK:ECHO(a1)")
    assert isinstance(state, Final) and sent == ["quit:"]


def test_superposition_holds_then_routes() -> None:
    state, _ = advance(superposition([2])(None), HELLO)
    state, sent = advance(state, "OK:ECHO(a1)")  # not yet expected: held
    assert isinstance(state, SuperpositionState) and list(state.held) == ["OK:ECHO(a1)"]
    state, sent = advance(state, "OK:ECHO(a0)")  # unblocks, then the held one drains
    assert isinstance(state, Final) and sent == ["echo:a1", "quit:"]


def test_superposition_that_can_never_drain_fails() -> None:
    state, _ = advance(superposition([1])(None), HELLO)
    state, _ = advance(state, "OK:ECHO(nobody)")
    state, _ = advance(state, "OK:ECHO(a0)")
    assert isinstance(state, ErrorState)
    assert "cannot route 1 response" in state.message and "nobody" in state.message


def test_superposition_bounds_held_responses() -> None:
    state, _ = advance(superposition([1])(None), HELLO)
    for i in range(SuperpositionState.max_held + 1):
        state, _ = advance(state, f"OK:ECHO(x{i})")
        if isinstance(state, ErrorState):
            break
    assert isinstance(state, ErrorState) and "cannot route" in state.message


def test_superposition_sub_failure_fails_all() -> None:
    state, _ = advance(superposition([2, 2])(None), HELLO)
    state, _ = advance(state, "FAIL(disk full)")
    assert isinstance(state, ErrorState) and "disk full" in state.message


def test_superposition_of_info_watchers() -> None:
    class Kicked(TerminalState):
        pass

    class Watch(InfoWatcherState):
        kickState = Kicked

    class Both(SuperpositionState):
        state_constructors = [Watch, Watch]
        nextState = Final

    state, _ = advance(Both(None), None)
    state, _ = advance(state, "INFO:a:1")
    assert isinstance(state, SuperpositionState)
    state, _ = advance(state, "INFO:b:2")
    assert isinstance(state, Final)
    state2, _ = advance(advance(Both(None), None)[0], "OK:SET(a)")
    assert isinstance(state2, ErrorState) and "no sub-machine waits" in state2.message


# ---------------------------------------------------------------- carried context


def test_context_travels_and_timestamps_use_the_clock() -> None:
    ticks = itertools.count(100)

    class Second(TerminalState):
        pass

    class First(OnePassState):
        expect = "OK"
        nextState = Second

    first = First(None, 5, config="cfg", info={"seed": 1}, clock=lambda: float(next(ticks)))
    state, _ = advance(first, HELLO)
    assert state.actorNum == 5 and state.config == "cfg" and state.info == {"seed": 1}
    assert state.timestamps == [(100.0, "First"), (101.0, "Second")]
    assert str(state) == "Second (terminal)"
    assert "actor=5" in repr(state)


def test_terminal_states_ignore_messages() -> None:
    final = Final(None)
    assert final.transition("OK:anything") == (final, [])
    err = TerminatedState(None, "deadline 5 s passed")
    assert err.transition("FAIL(x)") == (err, [])
    assert err.message == "deadline 5 s passed" and isinstance(err, ErrorState)


# ---------------------------------------------------------------- stateful


class PipelineMachine(RuleBasedStateMachine):
    """A worker that answers the oldest outstanding command, or sends INFO, at will."""

    @initialize(cmds=st.lists(commands, min_size=1, max_size=10), pipelined=st.booleans())
    def setup(self, cmds: list[str], pipelined: bool) -> None:
        self.cmds = cmds
        self.state, self.sent = advance(command_list_class(cmds, pipelined)(None), HELLO)
        self.outstanding: deque[str] = deque(self.sent)
        self.infos: dict[str, str] = {}

    @precondition(lambda self: self.outstanding and not isinstance(self.state, TerminalState))
    @rule()
    def answer_next(self) -> None:
        reply = respond(self.outstanding.popleft())
        if reply is not None:
            self.state, more = advance(self.state, reply)
            self.sent.extend(more)
            self.outstanding.extend(more)

    @rule(key=st.sampled_from(["progress", "peer"]), value=st.text("abc123", max_size=5))
    def send_info(self, key: str, value: str) -> None:
        ended = isinstance(self.state, TerminalState)
        self.state, more = advance(self.state, f"INFO:{key}:{value}")
        assert more == []
        if not ended:  # a terminal state ignores everything
            self.infos[key] = value

    @invariant()
    def never_fails_and_sends_a_prefix(self) -> None:
        assert not isinstance(self.state, ErrorState)
        assert self.sent == self.cmds[: len(self.sent)]
        for key, value in self.infos.items():
            assert self.state.info[key] == value

    @invariant()
    def done_when_all_but_the_last_are_answered(self) -> None:
        if isinstance(self.state, Final):
            assert self.sent == self.cmds


TestPipelineMachine = PipelineMachine.TestCase
TestPipelineMachine.settings = settings(max_examples=60, stateful_step_count=30)


class SuperpositionMachine(RuleBasedStateMachine):
    """Sub-machines answered in any order, with INFO updates in between."""

    @initialize(lengths=st.lists(st.integers(1, 4), min_size=1, max_size=3))
    def setup(self, lengths: list[int]) -> None:
        self.state, sent = advance(superposition(lengths)(None), HELLO)
        self.outstanding = list(sent)
        self.total = sum(lengths)
        self.sent = list(sent)

    @precondition(lambda self: self.outstanding and not isinstance(self.state, TerminalState))
    @rule(data=st.data())
    def answer_any(self, data: st.DataObject) -> None:
        command = self.outstanding.pop(data.draw(st.integers(0, len(self.outstanding) - 1)))
        self.state, more = advance(self.state, respond(command) or "")
        self.outstanding.extend(more)
        self.sent.extend(more)

    @rule(value=st.integers(0, 9))
    def send_info(self, value: int) -> None:
        self.state, more = advance(self.state, f"INFO:progress:{value}")
        assert more == []

    @invariant()
    def consistent(self) -> None:
        assert not isinstance(self.state, ErrorState)
        if isinstance(self.state, Final):
            assert len(self.sent) == self.total + 1 and self.sent[-1] == "quit:"


TestSuperpositionMachine = SuperpositionMachine.TestCase
TestSuperpositionMachine.settings = settings(max_examples=60, stateful_step_count=30)
