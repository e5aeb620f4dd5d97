"""One worker connection, sans-IO: bytes in, current state, bytes out.

Theory of operation
-------------------
An :class:`Actor` is the coordinator's side of one worker connection, shaped like
``h11.Connection``: the I/O layer calls :meth:`Actor.receive_data` with whatever arrived
(``b""`` for EOF), drains :meth:`Actor.next_event` until :data:`~mu.protocol.NEED_DATA`, and
writes whatever :meth:`Actor.data_to_send` returns. The actor never touches a socket.

The connection's lifecycle is the table :data:`LIFECYCLE`; a trigger the table lacks for the
current lifecycle is a :class:`~mu.errors.LocalProtocolError` (a bug in the caller)::

    AWAIT_HELLO --hello--> READY --start--> RUNNING --finish--> DONE
         |                   |                 |
         +--reject--> ERROR  +--fail--> ERROR  +--fail--> ERROR
    (READY --dismiss--> DONE: a surplus worker told to quit)

1. The worker speaks first: ``OK:HELLO:<token>``. A wrong or missing token, bad framing or
   EOF before the hello gives a :class:`Rejected` event: the peer is not a worker.
2. After :class:`HelloReceived` the coordinator calls :meth:`Actor.start` with an actor
   number and the job's first state, which receives the hello as its first message (the
   worker goes first, as in 2016). Frames that arrive before ``start()`` wait in the decoder.
3. While RUNNING every message advances the state machine (:func:`mu.states.advance`); the
   commands it returns are framed into the outbox. A terminal state gives :class:`Finished`,
   an :class:`~mu.states.ErrorState` gives :class:`Failed` with its message.
4. Nothing the peer sends makes the actor raise: bad framing, EOF mid-run and unexpected
   messages all end in ERROR with a reason. That includes a state that raises while it
   handles a message (a job's bug, or a worker's message it did not foresee): the exception
   fails this actor only, with a reason naming the state, the message and the error.
"""

from __future__ import annotations

import enum
import hmac
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from mu.errors import LocalProtocolError, ProtocolError
from mu.protocol import (
    CLOSED,
    DEFAULT_MAX_FRAME,
    NEED_DATA,
    REQUEST_ID_INFO,
    FrameDecoder,
    Sentinel,
    decode_text,
    encode_text,
)
from mu.states import (
    ErrorState,
    MachineState,
    TerminalState,
    TerminatedState,
    _clip,
    advance,
)

__all__ = [
    "HELLO_PREFIX",
    "LIFECYCLE",
    "Actor",
    "Event",
    "Failed",
    "Finished",
    "HelloReceived",
    "Lifecycle",
    "Rejected",
    "lifecycle_diagram",
]

HELLO_PREFIX: Final = "OK:HELLO"


class Lifecycle(enum.Enum):
    """Where a connection is in its life (see the module docstring)."""

    AWAIT_HELLO = "AWAIT_HELLO"
    READY = "READY"
    RUNNING = "RUNNING"
    DONE = "DONE"
    ERROR = "ERROR"


LIFECYCLE: Final[dict[Lifecycle, dict[str, Lifecycle]]] = {
    Lifecycle.AWAIT_HELLO: {"hello": Lifecycle.READY, "reject": Lifecycle.ERROR},
    Lifecycle.READY: {
        "start": Lifecycle.RUNNING,
        "dismiss": Lifecycle.DONE,
        "fail": Lifecycle.ERROR,
    },
    Lifecycle.RUNNING: {"finish": Lifecycle.DONE, "fail": Lifecycle.ERROR},
    Lifecycle.DONE: {},
    Lifecycle.ERROR: {},
}
"""Lifecycle -> trigger -> next lifecycle. Anything missing is a protocol error."""

_READING: Final = (Lifecycle.AWAIT_HELLO, Lifecycle.RUNNING)
"""Lifecycles in which received frames are decoded (a READY actor leaves them buffered)."""
_ENDED: Final = (Lifecycle.DONE, Lifecycle.ERROR)

_S3_ANSWERS: Final = (("OK:RETRIEVE(", "GET"), ("FAIL(retrieve s3://", "GET"),
                      ("OK:UPLOAD(", "PUT"), ("FAIL(upload s3://", "PUT"))
"""A worker's final answer to ``retrieve``/``upload`` and the S3 request it made (one
``get_object`` or ``put_object``; a failed transfer is counted too: S3 bills most failed
requests). Nonblock acknowledgements (``OK:RETRIEVING(``) are not answers."""


def _s3_request(text: str) -> str:
    """``GET``/``PUT`` when ``text`` answers an S3 transfer, else ""."""
    return next((kind for prefix, kind in _S3_ANSWERS if text.startswith(prefix)), "")


def lifecycle_diagram() -> str:
    """The :data:`LIFECYCLE` table as a Mermaid state diagram (docs/protocol.md embeds it)."""
    lines = ["stateDiagram-v2", f"    [*] --> {Lifecycle.AWAIT_HELLO.value}"]
    for source, moves in LIFECYCLE.items():
        for trigger, target in moves.items():
            lines.append(f"    {source.value} --> {target.value}: {trigger}")
    lines += [f"    {Lifecycle.DONE.value} --> [*]", f"    {Lifecycle.ERROR.value} --> [*]"]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class HelloReceived:
    """The peer said hello with the right token: it is a worker, ready to start."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """The peer is not a worker of this run (bad token, bad framing, no hello)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The state machine reached a terminal, non-error state."""

    state: MachineState


@dataclass(frozen=True, slots=True)
class Failed:
    """The state machine ended in error; ``state`` is the ErrorState (None if never started)."""

    state: MachineState | None
    reason: str


Event = HelloReceived | Rejected | Finished | Failed


class Actor:
    """The coordinator's sans-IO view of one worker connection.

    Args:
        token: the run token the worker must present in its hello.
        max_frame: the largest frame accepted from the peer.
        peer: a name for error messages (the peer address, until an actor number is known).
        clock: the time source handed to the state machine.
    """

    __slots__ = (
        "_decoder",
        "_events",
        "_hello",
        "_outbox",
        "_token",
        "actorNum",
        "clock",
        "last_response",
        "lifecycle",
        "messages_in",
        "messages_out",
        "peer",
        "reason",
        "request_id",
        "s3_requests",
        "state",
    )

    def __init__(
        self,
        token: str,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        peer: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token = token.encode()
        self._decoder = FrameDecoder(max_frame, peer)
        self._events: deque[Event] = deque()
        self._outbox: list[bytes] = []
        self._hello = ""
        self.peer = peer
        self.clock = clock
        self.lifecycle = Lifecycle.AWAIT_HELLO
        self.state: MachineState | None = None
        self.actorNum: int | None = None
        self.last_response = ""
        self.reason = ""
        self.request_id = ""  # the worker's Lambda invocation (REQUEST_ID_INFO), if told
        self.s3_requests = {"GET": 0, "PUT": 0}  # transfers the worker answered, for the bill
        self.messages_in = 0
        self.messages_out = 0

    def __repr__(self) -> str:
        state = self.state.name if self.state is not None else None
        return (
            f"<Actor {self.actorNum} {self.lifecycle.value} state={state} "
            f"last={self.last_response[:60]!r}>"
        )

    # -- lifecycle table -----------------------------------------------------------------

    def _move(self, trigger: str) -> None:
        try:
            self.lifecycle = LIFECYCLE[self.lifecycle][trigger]
        except KeyError:
            was = self.lifecycle
            self.lifecycle = Lifecycle.ERROR
            self.reason = f"can't handle {trigger!r} in lifecycle {was.value}"
            raise LocalProtocolError(self.reason) from None

    @property
    def ended(self) -> bool:
        """Whether the connection reached DONE or ERROR."""
        return self.lifecycle in _ENDED

    # -- input ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the worker (``b""`` for EOF) and process them."""
        decoder = self._decoder
        if self.lifecycle in _ENDED or decoder.at_eof:
            return  # nothing can follow EOF on a real stream; never raise for peer input
        decoder.receive_data(data)
        self._pump()

    def _pump(self) -> None:
        decoder = self._decoder
        while self.lifecycle in _READING:
            try:
                frame = decoder.next_frame()
            except ProtocolError as exc:
                self._end_remote(str(exc.as_remote()))
                return
            if frame is NEED_DATA:
                return
            if frame is CLOSED:
                self._end_remote(self._eof_reason())
                return
            self.messages_in += 1
            text = decode_text(frame)
            self.last_response = text
            if self.lifecycle is Lifecycle.RUNNING and text.startswith(REQUEST_ID_INFO):
                self.request_id = text[len(REQUEST_ID_INFO):]  # for the bill; no state's
                continue
            if self.lifecycle is Lifecycle.RUNNING:
                assert self.state is not None
                kind = _s3_request(text)
                if kind:
                    self.s3_requests[kind] += 1
                try:
                    transition = advance(self.state, text)
                except Exception as exc:  # the job's code: it fails this actor, nothing else
                    self._crashed(self.state.name, self.state, text, exc)
                    return
                self._settle(*transition)
            else:
                self._on_hello(text)

    def _eof_reason(self) -> str:
        if self.lifecycle is Lifecycle.AWAIT_HELLO:
            return "connection closed before hello"
        name = self.state.name if self.state is not None else "no state"
        return f"connection closed by worker in {name}"

    def _on_hello(self, text: str) -> None:
        head, sep, token = text.partition(HELLO_PREFIX + ":")  # exactly OK:HELLO:<token>
        if text == HELLO_PREFIX or (sep and not head and not token):
            self._reject("hello carries no run token")
        elif head or not sep:
            self._reject(f"expected hello, got {text[:80]!r}")
        elif not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), self._token):
            self._reject("hello carries a wrong run token")
        else:
            self._hello = text
            self._move("hello")
            self._events.append(HelloReceived())

    def _reject(self, reason: str) -> None:
        self.reason = reason
        self._move("reject")
        self._events.append(Rejected(reason))

    def _end_remote(self, reason: str) -> None:
        """The peer broke the protocol or went away: end this connection, never raise."""
        if self.lifecycle is Lifecycle.AWAIT_HELLO:
            self._reject(reason)
        else:
            self._fail(ErrorState(self.state, reason) if self.state else None, reason)

    def _settle(self, state: MachineState, commands: list[str]) -> None:
        self.state = state
        if commands:
            self._queue(commands)
        if isinstance(state, ErrorState):
            self._fail(state, state.message)
        elif isinstance(state, TerminalState):
            self._move("finish")
            self._events.append(Finished(state))

    def _crashed(self, name: str, state: MachineState | None, text: str | None,
                 exc: Exception) -> None:
        """State ``name`` raised while handling ``text`` (None: on start): fail with the
        state, the message and the error."""
        what = "on start" if text is None else f"handling {_clip(text)!r}"
        reason = f"{name} raised {type(exc).__name__} {what}: {_clip(str(exc))}"
        self._fail(ErrorState(state, reason) if state is not None else None, reason)

    def _fail(self, state: MachineState | None, reason: str) -> None:
        if state is not None:
            self.state = state
        self.reason = reason
        self._move("fail")
        self._events.append(Failed(state, reason))

    # -- output and control --------------------------------------------------------------

    def next_event(self) -> Event | Sentinel:
        """The next event, or :data:`~mu.protocol.NEED_DATA` when there is none."""
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    def start(
        self,
        actorNum: int,
        first_state: Callable[..., MachineState],
        config: Any = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        """Begin driving the worker as actor ``actorNum`` from ``first_state``.

        The first state is built with this actor's clock and, if it waits for a message,
        fed the worker's hello.

        Raises:
            LocalProtocolError: the actor is not READY (no hello yet, or already started).
        """
        self._move("start")
        self.actorNum = actorNum
        state: MachineState | None = None
        try:
            state = first_state(None, actorNum, config=config, info=info, clock=self.clock)
            transition = advance(state, self._hello if state.waiting else None)
        except Exception as exc:  # the job's code: it fails this actor, nothing else
            name = state.name if state else getattr(first_state, "__name__", "the first state")
            self._crashed(name, state, None, exc)  # None: never the hello (it holds the token)
            return
        self._settle(*transition)
        self._pump()

    def dismiss(self) -> None:
        """Tell a surplus worker to quit (no work left for it)."""
        self._move("dismiss")
        self.send_command("quit:")

    def terminate(self, reason: str) -> None:
        """End the machine from outside (deadline, shutdown): TerminatedState, Failed event.

        Before a hello this rejects the peer; after the end it does nothing.
        """
        if self.lifecycle is Lifecycle.AWAIT_HELLO:
            self._reject(reason)
        elif not self.ended:
            self._fail(TerminatedState(self.state, reason) if self.state else None, reason)

    def send_command(self, command: str) -> None:
        """Queue one command for the worker."""
        self._queue((command,))

    def _queue(self, commands: Sequence[str]) -> None:
        self._outbox.extend(map(encode_text, commands))
        self.messages_out += len(commands)

    def data_to_send(self) -> bytes:
        """Everything queued for the worker since the last call, framed."""
        if not self._outbox:
            return b""
        data = b"".join(self._outbox)
        self._outbox.clear()
        return data
