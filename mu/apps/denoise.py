"""The denoise job: a temporal filter over Y4M chunks whose workers trade halos through the relay.

Theory of operation
-------------------
Inputs are the Y4M chunks ``mu png2y4m`` writes, ``{video}-y4m_{f:02d}/%08d.y4m``, numbered
from 0, ``f`` frames each. Output frame ``t`` is the binomial average of input frames
``t-r .. t+r`` (``function/denoise``, with :mod:`mu.denoise` as its reference); the worker
that plays chunk ``i`` writes ``{video}-y4m_{f:02d}-tf{r}/%08d.y4m`` numbered ``i``.

A chunk's first and last ``r`` output frames need frames of its neighbours: the last ``r``
of chunk ``i-1`` (its *left halo*) and the first ``r`` of chunk ``i+1`` (its *right halo*).
The plan (:func:`plan_chunk`, pure) says, for each side of a chunk:

* nothing, at the video's edges (chunk 0 has no left side, the video's last chunk no right
  side: the filter repeats the edge frame there, as it does for the whole video) and when
  ``r`` is 0;
* *through the relay*, when the neighbour runs in the same run: each worker sends its own
  first ``r`` frames on its ``left`` link and its last ``r`` frames on its ``right`` link,
  and receives its halos on the same links. Links are numbered as DESIGN §8 says: chunk
  ``i``'s ``left`` is ``<me>`` ``2i`` paired with ``2i-1``, its ``right`` is ``2i+1``
  paired with ``2i+2`` (:func:`links`);
* *from S3*, when the neighbour's chunk exists but does not run (``--resume`` found it
  finished, ``-N`` left it out, or the run covers only part of the video): the worker
  retrieves the neighbour's input chunk and cuts the halo from it.

``r`` must not exceed ``f`` (a halo comes from one neighbour); :class:`DenoiseConfig`
refuses it before anything starts.

The machine (states defined in reverse order, each naming the next)::

    ConfigState (retrieve the chunk) --> CutState (denoise --head r / --tail r)
      --> ExchangeState, a superposition of the two sides:
            LeftSideState  (IfElse: a left side?) --no--> LeftEdgeState
              --yes--> LeftRouteState (IfElse: through the relay?) --no--> LeftFetchState
                --yes--> LeftSendState (link, send) --> LeftRecvState (recv)
                  --> LeftAwaitState (InfoWatcher: INFO:file:left) --> LeftGotState
                  --> LeftDoneState
                (a retry goes from LeftSendState to LeftFetchState)
            RightSideState ... the same on the right
      --> FilterState (denoise -r R [-p prev] [-n next]) --> UploadState --> FinalState

During the exchange the worker is nonblocking (``send``, ``recv`` and ``retrieve`` answer
at once and report their end later), so both sides move at once; each response names its
side (``OK:SEND(left:...)``, ``OK:RECV(right:...)``), and the superposition routes it to
that side's sub-machine. ``recv`` waits at most ``--halo-timeout`` seconds.

Faults (``--faults``, ``--retries``). A worker always sends its own halos before it waits
for its neighbours', so a neighbour is never stuck on it. A halo can still fail to come:
the neighbour died before sending, or it was delivered to this actor's previous attempt
(which died with it), or the link broke. Then ``recv`` fails (no file within the timeout,
or the link closed), and the side takes the *recovery path*: it retrieves the
neighbour's input chunk from S3 and cuts the halo from it, exactly as for a neighbour that
does not run. A halo is a pure function of the neighbour's input chunk, so the output is
the same bytes whichever way the halo came. A retry (``info["attempt"]`` > 1) takes the
recovery path at once, after sending its own halos: what its neighbours sent went to the
attempt that died, and a neighbour that has finished never sends again. A ``send`` that
fails is not fatal either: the neighbour recovers the same way. Halos that arrive late
(from a neighbour's retry) are left unread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mu.apps.encode import _failure
from mu.apps.png2y4m import FinalState, Png2Y4MConfig, UploadState
from mu.denoise import MAX_RADIUS
from mu.errors import ConfigError
from mu.states import (
    CommandListState,
    IfElseState,
    InfoWatcherState,
    MachineState,
    OnePassState,
    StateFactory,
    SuperpositionState,
    TerminalState,
    Transition,
    advance,
)

__all__ = [
    "DEFAULT_HALO_TIMEOUT",
    "MAX_RADIUS",
    "SIDES",
    "ChunkPlan",
    "ConfigState",
    "CutState",
    "DenoiseConfig",
    "ExchangeState",
    "FilterState",
    "FinalState",
    "Side",
    "UploadState",
    "links",
    "plan_chunk",
]

DEFAULT_HALO_TIMEOUT = 30.0
"""Seconds a worker waits for a halo before it takes the recovery path."""

SIDES = ("left", "right")

CHUNK = "##TMPDIR##/chunk.y4m"
OUTPUT = "##TMPDIR##/out.y4m"
SENT = {"left": "##TMPDIR##/head.y4m", "right": "##TMPDIR##/tail.y4m"}
"""What a chunk sends on each side: its first r frames to the left, its last r to the right."""
HALO = {"left": "##TMPDIR##/prev.y4m", "right": "##TMPDIR##/next.y4m"}
"""Where each side's halo lands: the r frames before the chunk, and the r after it."""
NEIGHBOUR = {"left": "##TMPDIR##/left-chunk.y4m", "right": "##TMPDIR##/right-chunk.y4m"}
"""Where the recovery path puts the neighbour's input chunk."""


# ------------------------------------------------------------------------- the plan (pure)


def links(chunk: int) -> dict[str, tuple[int, int]]:
    """Chunk ``chunk``'s links as ``side -> (me, partner)`` (DESIGN §8's numbering).

    >>> links(3)
    {'left': (6, 5), 'right': (7, 8)}
    """
    return {"left": (2 * chunk, 2 * chunk - 1), "right": (2 * chunk + 1, 2 * chunk + 2)}


@dataclass(frozen=True)
class Side:
    """How one side of a chunk gets its halo.

    Attributes:
        name: ``"left"`` or ``"right"``.
        neighbour: the neighbouring chunk's number.
        me, partner: the link's numbers at the relay.
        via_relay: the neighbour runs in this run (halos cross the relay); otherwise the
            halo is cut from the neighbour's input chunk in S3.
        send: the ``denoise`` option that cuts what this chunk sends on this side
            (``--head`` on the left, ``--tail`` on the right).
        take: the option that cuts this side's halo from the neighbour's chunk.
    """

    name: str
    neighbour: int
    me: int
    partner: int
    via_relay: bool

    @property
    def send(self) -> str:
        return "--head" if self.name == "left" else "--tail"

    @property
    def take(self) -> str:
        return "--tail" if self.name == "left" else "--head"


@dataclass(frozen=True)
class ChunkPlan:
    """What one chunk's worker does about its halos (:func:`plan_chunk`)."""

    chunk: int
    radius: int
    left: Side | None
    right: Side | None

    @property
    def sides(self) -> tuple[Side, ...]:
        return tuple(s for s in (self.left, self.right) if s is not None)

    def side(self, name: str) -> Side | None:
        return self.left if name == "left" else self.right


def plan_chunk(
    chunk: int, radius: int, last_chunk: int | None, running: frozenset[int] | None = None
) -> ChunkPlan:
    """The plan for chunk ``chunk`` of a video.

    Args:
        chunk: the chunk (0 is the video's first).
        radius: the filter's radius ``r``; 0 needs no halos.
        last_chunk: the video's last chunk (None: it lies beyond every chunk that runs).
        running: the chunks that run in this run (None: every chunk).

    >>> plan_chunk(0, 2, 3).left is None, plan_chunk(3, 2, 3).right is None
    (True, True)
    >>> plan_chunk(1, 2, 3, frozenset({1})).right.via_relay
    False
    """
    if chunk < 0 or (last_chunk is not None and chunk > last_chunk):
        raise ConfigError(f"chunk {chunk} is outside the video (chunks 0..{last_chunk})")
    sides: dict[str, Side | None] = {"left": None, "right": None}
    if radius > 0:
        neighbours = {"left": chunk - 1, "right": chunk + 1}
        for name, (me, partner) in links(chunk).items():
            other = neighbours[name]
            if other < 0 or (last_chunk is not None and other > last_chunk):
                continue  # the video's edge: the filter repeats the edge frame
            runs = running is None or other in running
            sides[name] = Side(name, other, me, partner, runs)
    return ChunkPlan(chunk, radius, sides["left"], sides["right"])


@dataclass(frozen=True)
class DenoiseConfig(Png2Y4MConfig):
    """What a denoise run filters and how (``-v -b -f``, ``--radius``, ``--halo-timeout``).

    Attributes:
        radius: the filter's radius ``r``, 0..:data:`MAX_RADIUS`, at most ``frames``.
        halo_timeout: seconds a worker waits for a halo before the recovery path.
        last_chunk: the video's last chunk (None: beyond every chunk that runs), found in
            S3 by the job's preflight.
        running: the chunks that run (None: all), fixed by the preflight.
    """

    informat: str = "y4m"
    radius: int = 2
    halo_timeout: float = DEFAULT_HALO_TIMEOUT
    last_chunk: int | None = None
    running: frozenset[int] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.radius <= MAX_RADIUS:
            raise ConfigError(f"--radius {self.radius} is outside 0..{MAX_RADIUS}")
        if self.radius > self.frames:
            raise ConfigError(
                f"--radius {self.radius} is more than -f {self.frames} frames per chunk: a "
                f"chunk's halo of {self.radius} frames must come from its neighbour alone "
                f"(use -f >= {self.radius} or a smaller --radius)")
        if not (math.isfinite(self.halo_timeout) and 0 < self.halo_timeout <= 900):
            raise ConfigError(f"--halo-timeout {self.halo_timeout:g}: give more than 0 and at most "
                              "900 seconds")

    @property
    def input_prefix(self) -> str:
        return f"{self.video}-y4m_{self.frames:02d}/"

    @property
    def output_prefix(self) -> str:
        return f"{self.video}-y4m_{self.frames:02d}-tf{self.radius}/"

    def chunk_input_key(self, chunk: int) -> str:
        """S3 key of input chunk ``chunk``."""
        return f"{self.input_prefix}{chunk:08d}.y4m"

    def plan(self, chunk: int) -> ChunkPlan:
        return plan_chunk(chunk, self.radius, self.last_chunk, self.running)


# ------------------------------------------------------------------------------ the states


def _checked(state: CommandListState, msg: str | None, what: str) -> Transition:
    """A command list's transition, failing the machine on a non-zero ``./denoise`` exit."""
    reason = _failure(msg, "denoise", what)
    if reason is not None:
        return state.fail(reason)
    return CommandListState.transition(state, msg)


class FilterState(CommandListState):
    """Cut the halos the recovery path fetched, filter the chunk, set up the upload.

    Once the filter has written its output, the inputs go (the chunk, the halos, what was
    sent, a fetched neighbour's chunk): the upload needs only the output, and deleting them
    before it gives their pages back while other workers still write theirs (the local
    emulator's ``/tmp`` is a tmpfs: memory).
    """

    extra = "(filtering)"
    nextState = UploadState

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        cfg: DenoiseConfig = self.config
        plan = cfg.plan(self.actorNum)
        r = cfg.radius
        commands: list[Any] = [(None, "seti:nonblock:0")]
        halos = ""
        inputs = [CHUNK]
        for side in plan.sides:
            if self.info.get(f"fetched_{side.name}"):
                commands.append(f"run:./denoise {side.take} {r} -o {HALO[side.name]} "
                                f"{NEIGHBOUR[side.name]}")
                inputs.append(NEIGHBOUR[side.name])
            if side.via_relay:
                inputs.append(SENT[side.name])
            halos += f" {'-p' if side.name == 'left' else '-n'} {HALO[side.name]}"
            inputs.append(HALO[side.name])
        commands += [
            f"run:./denoise -r {r} -o {OUTPUT}{halos} {CHUNK} && rm -f {' '.join(inputs)}",
            ("OK:RETVAL(0)", f"set:fromfile:{OUTPUT}"),
            f"set:outkey:{cfg.output_key(self.actorNum)}",
            None,
        ]
        self.commandlist = commands

    def transition(self, msg: str | None) -> Transition:
        return _checked(self, msg, f"filtering chunk {self.actorNum}")


def _failed(command: str, side: str, msg: str) -> bool:
    """Whether ``msg`` is ``command`` failing on ``side``'s link (its own failure, or the
    link gone: ``FAIL(recv left: ...)``, ``FAIL(recv: no link named left)``)."""
    return msg.startswith(f"FAIL({command} {side}:") or msg == (
        f"FAIL({command}: no link named {side})")


class SideStep(MachineState):
    """A step of one side's sub-machine; :attr:`side` says which side.

    Each step names the following ones by role (``"recv"``, ``"fetch"``...) and
    :meth:`step` finds the class of that role on the same side.
    """

    side = ""

    def step(self, role: str) -> StateFactory:
        return SIDE_STEPS[self.side][role]

    @property
    def plan_side(self) -> Side:
        cfg: DenoiseConfig = self.config
        found = cfg.plan(self.actorNum).side(self.side)
        assert found is not None, f"{self.name} runs without a {self.side} side"
        return found

    def on_fail(self, msg: str) -> StateFactory | None:
        """Where a worker's ``FAIL`` takes this side, or None if it is not this side's to
        survive (then the whole machine fails)."""
        return None

    def after_send(self) -> StateFactory:
        """Receive the halo, or on a retry fetch it at once: what the neighbours sent went
        to the attempt that died (a neighbour that has finished never sends again)."""
        return self.step("fetch" if self.info.get("attempt", 1) > 1 else "recv")


class EdgeState(SideStep, TerminalState):
    extra = "(the video's edge: no halo)"


class DoneState(SideStep, TerminalState):
    extra = "(halo in place)"


class FetchState(SideStep, CommandListState):
    """The recovery path (and the way to a neighbour that does not run): retrieve the
    neighbour's input chunk; :class:`FilterState` cuts the halo from it."""

    extra = "(fetching the neighbour's chunk from S3)"

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        cfg: DenoiseConfig = self.config
        key = cfg.chunk_input_key(self.plan_side.neighbour)
        where = f"{cfg.bucket}/{key}"
        self.info[f"fetched_{self.side}"] = True
        self.commandlist = [
            (None, f"retrieve:{key}\0{NEIGHBOUR[self.side]}"),
            (f"OK:RETRIEVING({where})", None),
            (f"OK:RETRIEVE({where})", None),
        ]
        self.nextState = self.step("done")


class GotState(SideStep, OnePassState):
    """The halo has arrived (``INFO:file``); wait for ``recv`` to put it in place."""

    extra = "(halo arrived)"

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        self.expect = f"OK:RECV({self.side}:"
        self.nextState = self.step("done")

    def on_fail(self, msg: str) -> StateFactory | None:
        return self.step("fetch") if _failed("recv", self.side, msg) else None


class AwaitState(SideStep, InfoWatcherState):
    """Wait for the neighbour's halo: ``INFO:file:<side>:...`` kicks it (or the ``recv``
    that was waiting for the file ends first); a failed ``recv`` takes the recovery path."""

    extra = "(waiting for the halo)"
    kickKey = "file"

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        self.expect = f"OK:RECV({self.side}:"
        self.nextState = self.step("done")
        self.kickState = self.step("got")

    def on_info(self, key: str, value: str) -> Transition:
        if key == "file" and not value.startswith(f"{self.side}:"):
            self.info[key] = value
            return self, []
        return super().on_info(key, value)

    def on_fail(self, msg: str) -> StateFactory | None:
        return self.step("fetch") if _failed("recv", self.side, msg) else None


class RecvState(SideStep, CommandListState):
    """Ask for the next file on the side's link, waiting at most the halo timeout."""

    extra = "(receiving the halo)"

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        self.commandlist = [
            (None, f"recv:{self.side}:{HALO[self.side]}"),
            (f"OK:RECEIVING({self.side})", None),
        ]
        self.nextState = self.step("await")

    def on_fail(self, msg: str) -> StateFactory | None:
        return self.step("fetch") if _failed("recv", self.side, msg) else None


class SendState(SideStep, CommandListState):
    """Open the side's link and send this chunk's frames on it."""

    extra = "(sending the halo)"

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        side = self.plan_side
        self.commandlist = [
            (None, f"link:{self.side}:{side.me}:{side.partner}"),
            (f"OK:LINK({self.side})", f"send:{self.side}:{SENT[self.side]}"),
            (f"OK:SENDING({self.side})", None),
            (f"OK:SEND({self.side}:", None),
        ]
        self.nextState = self.after_send()

    def on_fail(self, msg: str) -> StateFactory | None:
        if self.expecting() == f"OK:LINK({self.side})" and msg.startswith("FAIL(link:"):
            return self.step("fetch")  # no link: nothing sent; the neighbour recovers too
        if _failed("send", self.side, msg):
            return self.after_send()  # not delivered: the neighbour recovers from S3
        return None


class RouteState(SideStep, IfElseState):
    """Through the relay if the neighbour runs in this run, else from S3."""

    def testfn(self) -> bool:
        return self.plan_side.via_relay

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        self.consequentState = self.step("send")
        self.alternativeState = self.step("fetch")


class SideState(SideStep, IfElseState):
    """Whether this chunk has a neighbour on this side (not at the video's edges, r > 0)."""

    def testfn(self) -> bool:
        return self.config.plan(self.actorNum).side(self.side) is not None

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        self.consequentState = self.step("route")
        self.alternativeState = self.step("edge")


_ROLES: dict[str, type[SideStep]] = {
    "side": SideState, "route": RouteState, "send": SendState, "recv": RecvState,
    "await": AwaitState, "got": GotState, "fetch": FetchState, "done": DoneState,
    "edge": EdgeState,
}

SIDE_STEPS: dict[str, dict[str, type[SideStep]]] = {
    side: {
        role: type(f"{side.title()}{base.__name__}", (base,), {"side": side,
                                                              "__module__": __name__})
        for role, base in _ROLES.items()
    }
    for side in SIDES
}
"""Each side's states: ``SIDE_STEPS["left"]["send"]`` is ``LeftSendState``, and so on."""


class ExchangeState(SuperpositionState):
    """Both sides at once: a sub-machine per side, from ``LeftSideState`` and
    ``RightSideState``.

    Beyond :class:`~mu.states.SuperpositionState`'s routing: ``INFO:file:<side>:...`` goes
    to that side's sub-machine, and a ``FAIL`` a side survives (:meth:`SideStep.on_fail`)
    moves that side on instead of failing the machine (the ``FAIL`` is kept in
    ``info["halo_failure_<side>"]``). ``link`` answers at once, in the order the links were
    asked for, so a ``FAIL(link: ...)`` belongs to the first side still waiting for its
    ``OK:LINK``.
    """

    extra = "(trading halos)"
    state_constructors = (SIDE_STEPS["left"]["side"], SIDE_STEPS["right"]["side"])
    nextState = FilterState

    def transition(self, msg: str | None) -> Transition:
        if msg is not None and msg.startswith("FAIL"):
            for i, sub in enumerate(self.subs):
                if not isinstance(sub, SideStep):
                    continue
                target = sub.on_fail(msg)
                if target is not None:
                    sub.info[f"halo_failure_{sub.side}"] = msg
                    new, commands = advance(sub.goto(target), None)
                    self.subs[i] = new
                    after, more = self.post_transition(None)
                    return after, commands + more
        return super().transition(msg)

    def on_info(self, key: str, value: str) -> Transition:
        if key != "file":
            self.info[key] = value
            return self, []
        for i, sub in enumerate(self.subs):
            if isinstance(sub, AwaitState) and value.startswith(f"{sub.side}:"):
                new, commands = advance(sub, f"INFO:{key}:{value}")
                self.subs[i] = new
                after, more = self.post_transition(None)
                return after, commands + more
        self.info[key] = value  # a halo that came before its side waited, or a late copy
        return self, []


class CutState(CommandListState):
    """Cut what this chunk sends: its first r frames (left) and last r frames (right);
    then make the worker nonblocking for the exchange."""

    extra = "(cutting the halos to send)"
    nextState = ExchangeState

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        cfg: DenoiseConfig = self.config
        commands: list[Any] = []
        for side in cfg.plan(self.actorNum).sides:
            if side.via_relay:
                run = f"run:./denoise {side.send} {cfg.radius} -o {SENT[side.name]} {CHUNK}"
                commands.append((None, run) if not commands else ("OK:RETVAL(0)", run))
        timeout = f"set:recv_timeout:{cfg.halo_timeout:g}"
        commands.append((None, timeout) if not commands else ("OK:RETVAL(0)", timeout))
        commands += ["seti:nonblock:1", None]
        self.commandlist = commands

    def transition(self, msg: str | None) -> Transition:
        return _checked(self, msg, f"cutting the halos of chunk {self.actorNum}")


class ConfigState(CommandListState):
    """The first state: configure the worker and retrieve its chunk."""

    extra = "(configuring, retrieving the chunk)"
    nextState = CutState

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        cfg: DenoiseConfig = self.config
        self.commandlist = [
            ("OK:HELLO", "seti:nonblock:0"),
            f"set:bucket:{cfg.bucket}",
            f"set:inkey:{cfg.chunk_input_key(self.actorNum)}",
            f"set:targfile:{CHUNK}",
            "retrieve:",
            None,
        ]

