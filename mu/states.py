"""Per-worker state machines, sans-IO: the 2016 state classes, made pure.

Theory of operation
-------------------
A job is a graph of *state classes*. The coordinator keeps one current state per worker and
feeds it the worker's messages; each state answers with the next state and the commands to
send. States never touch sockets or the clock: time comes from an injected ``clock``
callable, and the connection object (:mod:`mu.actor`) moves the bytes.

Rule 1 — the worker goes first. The first state of a job receives the worker's hello
(``OK:HELLO:...``) as its first message, so first states expect ``"OK"`` like in 2016.

Rule 2 — a state either waits for a message or it does not. A state whose
:attr:`~MachineState.waiting` is false is advanced at once with ``transition(None)``;
:func:`advance` does that until the machine waits or ends (and ends it in
:class:`ErrorState` if it never waits, rather than spinning).

Rule 3 — responses match by prefix. A waiting state compares the message with what it
expects (``"OK:RETRIEV"`` matches ``OK:RETRIEVE(...)`` and ``OK:RETRIEVING(...)``). A message
starting ``FAIL``, or one that does not match, leads to :class:`ErrorState` holding a message
that names the state, what it expected and what came.

Rule 4 — ``INFO:key:value`` updates are asynchronous: they never count as the response a
state waits for. By default they are stored in ``info[key]``; :class:`InfoWatcherState`
is kicked by them. A worker's INFO never overwrites a key the job's states own: the counter
of every loop in progress (:class:`ForLoopState`'s ``iterKey``) and every key a state
reserved with :meth:`MachineState.reserve`. Such an INFO fails the machine, naming the key.

Rule 5 — everything a state knows travels with it: ``actorNum``, the ``info`` dict, the run's
(frozen) ``config`` object, the ``clock`` and the ``timestamps`` list, to which every state
appends ``(clock(), name)`` when it is entered. There are no globals.

Writing a job: subclass the classes below and set their attributes (``expect``,
``command``, ``nextState``, ``commandlist``, ...). Because a state names the class that
follows it, define states in reverse order, or assign ``nextState`` after the class it names
exists (``RetrieveAndRunState.nextState = RetrieveLoopState``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from mu.errors import LocalProtocolError
from mu.protocol import expected_response

__all__ = [
    "MAX_IMMEDIATE_STEPS",
    "CommandListState",
    "ErrorState",
    "ForLoopState",
    "IfElseState",
    "InfoWatcherState",
    "MachineState",
    "MultiPassState",
    "OnePassState",
    "StateFactory",
    "SuperpositionState",
    "TerminalState",
    "TerminatedState",
    "Transition",
    "advance",
]

StateFactory: TypeAlias = Callable[["MachineState"], "MachineState"]
"""Anything that builds the next state from the current one (usually a state class)."""

Transition: TypeAlias = "tuple[MachineState, list[str]]"
"""The next state and the commands to send, in order."""

Clock: TypeAlias = Callable[[], float]

MAX_IMMEDIATE_STEPS = 100_000
"""How many transitions may happen without a message before a machine is declared stuck."""

_MAX_SHOWN = 200


def _clip(text: str) -> str:
    """Shorten a message for an error text (binary output can be long)."""
    return text if len(text) <= _MAX_SHOWN else f"{text[:_MAX_SHOWN]}... ({len(text)} chars)"


def _zero_clock() -> float:
    return 0.0


class MachineState:
    """Base of every state: wait for ``expect``, send ``command``, go to ``nextState``.

    Args:
        prevState: the state this one follows; everything it carries is inherited.
            ``None`` for the first state of a machine.
        actorNum: the actor number (first state only).
        config: the job's frozen configuration object (first state only).
        info: the dict that travels from state to state (first state only; default new).
        clock: the time source for :attr:`timestamps` (first state only; default 0.0).
    """

    expect: str | None = None
    command: str | None = None
    nextState: StateFactory | None = None
    extra: str = ""

    def __init__(
        self,
        prevState: MachineState | None = None,
        actorNum: int = 0,
        *,
        config: Any = None,
        info: dict[str, Any] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if prevState is not None:
            self.actorNum: int = prevState.actorNum
            self.info: dict[str, Any] = prevState.info
            self.config: Any = prevState.config
            self.clock: Clock = prevState.clock
            self.timestamps: list[tuple[float, str]] = prevState.timestamps
            self._loops: set[str] = prevState._loops
            self._reserved: set[str] = prevState._reserved
        else:
            self.actorNum = actorNum
            self.info = {} if info is None else info
            self.config = config
            self.clock = clock or _zero_clock
            self.timestamps = []
            self._loops = set()
            self._reserved = set()
        self.timestamps.append((self.clock(), self.name))

    # -- introspection -------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The state's name in run records: its class name."""
        return type(self).__name__

    @property
    def waiting(self) -> bool:
        """Whether this state needs a message before it can move on."""
        return self.expecting() is not None

    def expecting(self) -> str | None:
        """The prefix of the message this state waits for now, or ``None``."""
        return self.expect

    def __str__(self) -> str:
        return f"{self.name} {self.extra}".rstrip()

    def __repr__(self) -> str:
        return f"<{self.name} actor={self.actorNum} expecting={self.expecting()!r}>"

    # -- transitions ---------------------------------------------------------------------

    def transition(self, msg: str | None) -> Transition:
        """Consume one message (``None`` when not :attr:`waiting`).

        Returns:
            The next state (possibly ``self``) and the commands to send.

        Raises:
            LocalProtocolError: ``msg`` is ``None`` while the state waits for a message.
        """
        if msg is None:
            if self.waiting:
                raise LocalProtocolError(f"{self.name} waits for a message; got none")
            return self.post_transition(None)
        if msg.startswith("INFO:"):
            key, _, value = msg[5:].partition(":")
            if key in self._loops or key in self._reserved:
                return self.fail(
                    f"{self.name}: the worker's {_clip(msg)!r} would overwrite info[{key!r}], "
                    "which the job's states own"
                )
            return self.on_info(key, value)
        if msg.startswith("FAIL"):
            return self.fail(f"worker failed in {self.name}: {_clip(msg)}")
        expected = self.expecting()
        if expected is None or not msg.startswith(expected):
            return self.fail(f"{self.name} expected {expected!r}, got {_clip(msg)!r}")
        return self.post_transition(msg)

    def post_transition(self, msg: str | None) -> Transition:
        """Act on an accepted message (or on entry, for non-waiting states)."""
        commands = [self.command] if self.command is not None else []
        return self.goto(self.nextState), commands

    def reserve(self, *keys: str) -> None:
        """Keep ``info[key]`` for the job's states: a worker's INFO for it fails the machine
        instead of overwriting it (loop counters are reserved while their loop runs)."""
        self._reserved.update(keys)

    def on_info(self, key: str, value: str) -> Transition:
        """Handle ``INFO:key:value``; by default store it in ``info`` and stay."""
        self.info[key] = value
        return self, []

    def goto(self, factory: StateFactory | None) -> MachineState:
        """Build the next state, or fail naming the missing link."""
        if factory is None:
            return ErrorState(self, f"{self.name} has no next state")
        return factory(self)

    def fail(self, message: str) -> Transition:
        """Move to :class:`ErrorState` with ``message``."""
        return ErrorState(self, message), []


class TerminalState(MachineState):
    """A state the machine never leaves; every later message is ignored."""

    extra = "(terminal)"

    @property
    def waiting(self) -> bool:
        return False

    def transition(self, msg: str | None) -> Transition:
        return self, []


class ErrorState(TerminalState):
    """The machine failed; :attr:`message` says why."""

    extra = "(error)"

    def __init__(self, prevState: MachineState | None = None, message: str = "", **kw: Any):
        self.failed_in = prevState.name if prevState is not None else ""
        self.message = message
        super().__init__(prevState, **kw)


class TerminatedState(ErrorState):
    """The coordinator ended the machine (deadline, disconnect); :attr:`message` says why."""

    extra = "(terminated)"


class OnePassState(MachineState):
    """Wait for ``expect`` (or not, if ``None``), send ``command``, go to ``nextState``."""


class MultiPassState(MachineState):
    """Wait for ``passes`` messages that each match ``expect``, then send ``command``.

    Useful after pipelining several nonblocking commands: e.g. wait for N ``OK:UPLOAD``
    completions. Subclasses may set ``passes`` in ``__init__`` (from ``self.config``) and
    override :meth:`on_pass` to look at each message.
    """

    passes: int = 1

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        self.passes_done = 0

    def expecting(self) -> str | None:
        return self.expect if self.passes_done < self.passes else None

    def on_pass(self, msg: str) -> None:
        """Called with every accepted message."""

    def post_transition(self, msg: str | None) -> Transition:
        if msg is not None:
            self.on_pass(msg)
            self.passes_done += 1
            if self.passes_done < self.passes:
                return self, []
        return super().post_transition(msg)


_Step: TypeAlias = "tuple[str | None, str | None]"
"""One normalised command-list step: (expected response or None, command or None)."""


CommandEntry: TypeAlias = "str | tuple[str | None, str | None] | None"


class CommandListState(MachineState):
    """A straight-line list of ``(expected response, command)`` steps.

    ``commandlist`` entries:

    * ``"cmd"``: send ``cmd`` after the response to the previous command (``"OK"`` for the
      first entry; nothing to wait for if the previous entry sent nothing);
    * ``(expect, cmd)``: explicit; ``expect=None`` sends at once, ``cmd=None`` only waits;
    * ``None``: wait for the response to the previous command, send nothing.

    The response to the last command is left for the next state. With ``pipelined`` set,
    the first expectation is awaited, then every command is sent at once and the remaining
    expectations are checked in order as the responses arrive.
    """

    commandlist: Sequence[CommandEntry] = ()
    pipelined: bool = False

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        self.pos = 0
        self._pending: deque[str] = deque()
        self._steps: list[_Step] | None = None

    @property
    def steps(self) -> list[_Step]:
        """The normalised steps, built on first use so that ``__init__`` of a subclass may
        set ``self.commandlist`` after calling this one's."""
        if self._steps is None:
            self._steps = self.build_steps(self.commandlist)
        return self._steps

    @staticmethod
    def build_steps(entries: Sequence[CommandEntry]) -> list[_Step]:
        """Normalise ``commandlist`` entries into ``(expect, command)`` steps.

        Raises:
            LocalProtocolError: an entry is of the wrong type, or a string command's
                expected response cannot be derived.
        """
        steps: list[_Step] = []
        prev: str | None = None  # the previous step's command
        for i, entry in enumerate(entries):
            if isinstance(entry, tuple):
                if len(entry) != 2:
                    raise LocalProtocolError(f"commandlist entry {i} {entry!r} is not a pair")
                steps.append(entry)
                prev = entry[1]
                continue
            if entry is not None and not isinstance(entry, str):
                raise LocalProtocolError(f"commandlist entry {i} {entry!r} is not str/tuple/None")
            if i == 0:
                expect: str | None = "OK"
            else:
                expect = None if prev is None else expected_response(prev)
            steps.append((expect, entry))
            prev = entry
        return steps

    def expecting(self) -> str | None:
        if self._pending:
            return self._pending[0]
        steps = self._steps or self.steps
        if self.pos < len(steps):
            return steps[self.pos][0]
        return None

    def post_transition(self, msg: str | None) -> Transition:
        steps = self._steps or self.steps
        commands: list[str] = []
        if self._pending:
            self._pending.popleft()
        elif msg is not None or (self.pipelined and self.pos < len(steps)):
            # The current step's expectation was met (or, pipelined, there is none yet):
            # send its command.
            cmd = steps[self.pos][1]
            if cmd is not None:
                commands.append(cmd)
            self.pos += 1
            if self.pipelined:
                self._send_rest(commands)
        while not self._pending and self.pos < len(steps):
            expect, cmd = steps[self.pos]
            if expect is not None:
                return self, commands
            if cmd is not None:
                commands.append(cmd)
            self.pos += 1
        if self._pending:
            return self, commands
        return self.goto(self.nextState), commands

    def _send_rest(self, commands: list[str]) -> None:
        """Pipelined: send every remaining command now, and queue their expectations."""
        for expect, command in self.steps[self.pos :]:
            if expect is not None:
                self._pending.append(expect)
            if command is not None:
                commands.append(command)
        self.pos = len(self.steps)


class IfElseState(MachineState):
    """Go to ``consequentState`` if ``testfn()`` is true, else to ``alternativeState``.

    Like every state it may wait for ``expect`` and send ``command`` first; by default it
    does neither and branches at once.
    """

    consequentState: StateFactory | None = None
    alternativeState: StateFactory | None = None

    def testfn(self) -> bool:
        """The branch condition; override it."""
        raise NotImplementedError(f"{self.name} must define testfn()")

    def post_transition(self, msg: str | None) -> Transition:
        commands = [self.command] if self.command is not None else []
        branch = self.consequentState if self.testfn() else self.alternativeState
        return self.goto(branch), commands


class ForLoopState(MachineState):
    """A counted loop header: ``for info[iterKey] in range(iterInit, iterFin)``.

    Entering from outside the loop sets ``info[iterKey] = iterInit``; coming back from the
    loop body increments it. While it is below ``iterFin`` the machine goes to
    ``loopState``, else (or as soon as ``info[breakKey]`` is not ``None``) to
    ``exitState``. Subclasses may set ``iterInit``/``iterFin`` in ``__init__``.
    """

    loopState: StateFactory | None = None
    exitState: StateFactory | None = None
    iterKey: str = "i"
    iterInit: int = 0
    iterFin: int = 0
    breakKey: str | None = None

    def post_transition(self, msg: str | None) -> Transition:
        commands = [self.command] if self.command is not None else []
        key = self.iterKey
        if key in self._loops:
            self.info[key] += 1
        else:
            self._loops.add(key)
            self.info[key] = self.iterInit
        broken = self.breakKey is not None and self.info.get(self.breakKey) is not None
        if broken or self.info[key] >= self.iterFin:
            self._loops.discard(key)
            return self.goto(self.exitState), commands
        return self.goto(self.loopState), commands


class InfoWatcherState(MachineState):
    """A state that is kicked by ``INFO`` updates.

    An ``INFO:key:value`` whose key is ``kickKey`` (any key if ``None``) is stored in
    ``info``, passed to :meth:`kicked`, and moves the machine to ``kickState`` (sending
    ``kickCommand`` if set). Other messages are handled like :class:`OnePassState`. The
    state always waits: with ``expect = None`` only INFO updates move it.
    """

    kickKey: str | None = None
    kickState: StateFactory | None = None
    kickCommand: str | None = None

    @property
    def waiting(self) -> bool:
        return True

    def kicked(self, key: str, value: str) -> None:
        """Called for every INFO update that kicks this state."""

    def on_info(self, key: str, value: str) -> Transition:
        self.info[key] = value
        if self.kickKey is not None and key != self.kickKey:
            return self, []
        self.kicked(key, value)
        commands = [self.kickCommand] if self.kickCommand is not None else []
        return self.goto(self.kickState), commands


class SuperpositionState(MachineState):
    """Run several sub-machines on one connection, then go to ``nextState``.

    Each entry of ``state_constructors`` builds a sub-machine's first state from this one
    (so they share ``info``, ``config`` and the timestamps). Commands the sub-machines send
    go out in order. Each response goes to the first sub-machine that expects it; one that
    no sub-machine expects now is held and retried after every step, as in 2016. If held
    responses can never be consumed (every sub-machine has ended, or none waits for
    anything, or more than ``max_held`` pile up), the machine fails instead of spinning.
    ``FAIL`` from the worker or an error in any sub-machine fails the whole state.
    """

    state_constructors: Sequence[StateFactory] = ()
    max_held: int = 1024

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        self.held: deque[str] = deque()
        self.subs: list[MachineState] = []
        self._initial: list[str] = []
        for ctor in self.state_constructors:
            sub, commands = advance(ctor(self), None)
            self.subs.append(sub)
            self._initial.extend(commands)

    def expecting(self) -> str | None:
        # Any message may be for one of the sub-machines; routing decides.
        if any(not isinstance(s, TerminalState) for s in self.subs):
            return ""
        return None

    def take_initial_commands(self) -> list[str]:
        """Commands the sub-machines sent on entry (collected once by :func:`advance`)."""
        commands, self._initial = self._initial, []
        return commands

    def on_info(self, key: str, value: str) -> Transition:
        for i, sub in enumerate(self.subs):
            if isinstance(sub, InfoWatcherState):
                new, commands = advance(sub, f"INFO:{key}:{value}")
                self.subs[i] = new
                return self._settle(commands)
        return super().on_info(key, value)

    def post_transition(self, msg: str | None) -> Transition:
        commands: list[str] = []
        if msg is not None:
            self.held.append(msg)
        progress = True
        while progress and self.held:
            progress = False
            for _ in range(len(self.held)):
                message = self.held.popleft()
                target = self._route(message)
                if target is None:
                    self.held.append(message)
                    continue
                new, more = advance(self.subs[target], message)
                self.subs[target] = new
                commands.extend(more)
                progress = True
                if isinstance(new, ErrorState):
                    break
        return self._settle(commands)

    def _route(self, message: str) -> int | None:
        for i, sub in enumerate(self.subs):
            expected = sub.expecting()
            live = not isinstance(sub, TerminalState)
            if live and expected is not None and message.startswith(expected):
                return i
        return None

    def _settle(self, commands: list[str]) -> Transition:
        for sub in self.subs:
            if isinstance(sub, ErrorState):
                return ErrorState(self, f"{self.name}: {sub.message}"), commands
        live = [s for s in self.subs if not isinstance(s, TerminalState)]
        if self.held and (not live or len(self.held) > self.max_held):
            return self.fail(
                f"{self.name} cannot route {len(self.held)} response(s), first "
                f"{_clip(self.held[0])!r}; sub-machines expect "
                f"{[s.expecting() for s in live]!r}"
            )[0], commands
        if self.held and all(s.expecting() is None for s in live):
            return self.fail(
                f"{self.name} holds {_clip(self.held[0])!r} but no sub-machine waits"
            )[0], commands
        if not live:
            done = [self.command] if self.command is not None else []
            return self.goto(self.nextState), commands + done
        return self, commands


def advance(state: MachineState, msg: str | None) -> Transition:
    """Feed ``msg`` to ``state``, then run every transition that needs no message.

    Returns:
        The state the machine rests in (waiting, or terminal) and every command to send.
        A machine that keeps moving for :data:`MAX_IMMEDIATE_STEPS` transitions without
        waiting ends in :class:`ErrorState`.
    """
    commands: list[str] = []
    if msg is not None:
        state, commands = state.transition(msg)
    for _ in range(MAX_IMMEDIATE_STEPS):
        if isinstance(state, SuperpositionState):
            commands.extend(state.take_initial_commands())
        if isinstance(state, TerminalState) or state.waiting:
            return state, commands
        state, more = state.transition(None)
        commands.extend(more)
    return ErrorState(
        state, f"{state.name} made {MAX_IMMEDIATE_STEPS} transitions without waiting"
    ), commands
