"""The relay's pairing core, sans-IO: bytes and the time in, delivery decisions out.

Theory of operation
-------------------
Workers cannot accept connections on Lambda, so two workers that need to talk both dial the
relay (DESIGN §8, the 2016 ``lambda_state_server`` semantics). This module decides everything
the relay does; :mod:`mu.relay` only moves bytes between sockets and this object.

A connection's first frame is ``HELLO_STATE:<run>:<me>:<partner>`` (``<me>`` and
``<partner>`` ASCII decimal). From then on every frame it sends is delivered, whole and in
order, to the live connection that said ``<me>`` = its ``<partner>`` in the same run. A
frame whose partner is not connected (yet, or any more) is *held* (a tombstone) for
:attr:`RelayLimits.tombstone` seconds and delivered first thing when the partner says
hello; after that it is dropped and counted as expired. The relay answers nothing to a
hello: a client's only sign of the relay's own voice is a last frame ``FAIL(relay:
<reason>)`` just before the relay closes it (wrong run token, malformed hello, a second
live connection with the same ``<me>`` in a run, no hello in time, a frame over the size
limit, or held bytes over a bound).

The caller (the pump) reports events and applies the actions each call returns:

=========================================  ==================================================
event                                      actions it may return
=========================================  ==================================================
:meth:`RelayCore.connected` (cid, now)     none (starts the hello deadline)
:meth:`RelayCore.received` (cid, bytes)    :class:`Deliver` to partners, :class:`Pause` of
                                           the sender, :class:`Close` of the sender
:meth:`RelayCore.written` (cid, n)         :class:`Resume` of senders paused on ``cid``
:meth:`RelayCore.closed` (cid)             :class:`Resume` (their partner is gone: frames
                                           are held from now on)
:meth:`RelayCore.tick` (now)               :class:`Close` (no hello in time); held frames
                                           expire
=========================================  ==================================================

Memory is bounded in two ways. Frames for a *live* partner are handed to the pump at once
(:class:`Deliver`); the pump reports with :meth:`RelayCore.written` what its socket took, and
while more than :attr:`RelayLimits.window` bytes wait for one connection, every sender to it
is paused (:class:`Pause`: the pump stops reading it, so TCP pushes back on that sender
alone; a slow reader stalls nobody else). Frames for an *absent* partner are held here, and
held bytes are bounded per partner, per run and in all; each held frame is charged
:data:`HELD_OVERHEAD` bytes beyond its length, so a flood of empty frames is bounded too.
A frame that would exceed a bound ends its sender: ``FAIL(relay: ...)`` naming the bound and
the value. Before its hello a connection may send at most :attr:`RelayLimits.max_hello`
bytes, after it frames of at most :attr:`RelayLimits.max_frame`.

Everything is keyed by the connection id the pump chose; the clock is a parameter. Nothing
here raises for anything a peer sends: bad input closes that connection only.
"""

from __future__ import annotations

import heapq
import re
from collections import deque
from dataclasses import dataclass
from typing import Final

from mu.errors import RemoteProtocolError
from mu.protocol import NEED_DATA, FrameDecoder, Sentinel, encode_frame, encode_text

__all__ = [
    "DEFAULT_RELAY_PORT",
    "HELD_OVERHEAD",
    "HELLO_PREFIX",
    "Action",
    "Close",
    "Deliver",
    "Pause",
    "RelayCore",
    "RelayLimits",
    "RelayStats",
    "Resume",
    "fail_frame",
    "hello_text",
]

DEFAULT_RELAY_PORT: Final = 13337
"""The relay's port beside the coordinator and for ``mu relay`` (``--relay-port``)."""
HELLO_PREFIX: Final = "HELLO_STATE:"
HELD_OVERHEAD: Final = 64
"""Bytes charged to each held frame beyond its length (its entry in the queue)."""

_HELLO: Final = re.compile(r"HELLO_STATE:(?P<run>[^:]*):(?P<me>[0-9]{1,18}):"
                           r"(?P<partner>[0-9]{1,18})")


def hello_text(run: str, me: int, partner: int) -> str:
    """The hello a client sends first: ``HELLO_STATE:<run>:<me>:<partner>``."""
    return f"{HELLO_PREFIX}{run}:{me}:{partner}"


def fail_frame(reason: str) -> bytes:
    """The relay's last frame to a client it ends: ``FAIL(relay: <reason>)``."""
    return encode_text(f"FAIL(relay: {reason})")


@dataclass(frozen=True)
class RelayLimits:
    """What one relay holds at most (all sizes in bytes, times in seconds).

    Attributes:
        max_frame: the largest frame payload a client may send after its hello (the worker
            sends files in frames of at most 1 MiB).
        max_hello: the largest first frame (the hello).
        window: bytes waiting to be written to one connection above which its senders are
            paused (back-pressure), resumed below half of it.
        held_per_partner: frames held for one absent ``<me>`` of a run.
        held_per_run: frames held for every absent ``<me>`` of a run.
        held_total: frames held for every run.
        tombstone: how long a held frame waits for its partner (600 s, as in 2016).
        hello_timeout: seconds from the connection (after TLS) to its hello.
        handshake_timeout: seconds from accept to the end of the TLS handshake (the pump's
            bound, as the coordinator's).
        max_connections: connections open at once (the pump closes a newcomer over it).
    """

    max_frame: int = 4 * 1024 * 1024
    max_hello: int = 1024
    window: int = 2 * 1024 * 1024
    held_per_partner: int = 64 * 1024 * 1024
    held_per_run: int = 256 * 1024 * 1024
    held_total: int = 512 * 1024 * 1024
    tombstone: float = 600.0
    hello_timeout: float = 10.0
    handshake_timeout: float = 10.0
    max_connections: int = 20_000

    def __post_init__(self) -> None:
        for name in ("max_frame", "max_hello", "window", "held_per_partner", "held_per_run",
                     "held_total", "max_connections"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("tombstone", "hello_timeout", "handshake_timeout"):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")


@dataclass(frozen=True, slots=True)
class Deliver:
    """Write ``data`` (whole frames) to connection ``cid``."""

    cid: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """End connection ``cid``: write ``farewell`` (the ``FAIL(relay: ...)`` frame; empty
    when the peer is gone) after what is queued for it, then close. The core has forgotten
    ``cid``: report nothing more about it."""

    cid: int
    reason: str
    farewell: bytes = b""


@dataclass(frozen=True, slots=True)
class Pause:
    """Stop reading from ``cid`` (its partner has a full window)."""

    cid: int


@dataclass(frozen=True, slots=True)
class Resume:
    """Read from ``cid`` again."""

    cid: int


Action = Deliver | Close | Pause | Resume


@dataclass(frozen=True)
class RelayStats:
    """Counts since the relay started (see :meth:`RelayCore.stats`).

    Attributes:
        connections: connections open now (with or without a hello).
        paired: connections open now that said a valid hello.
        hellos: valid hellos accepted since the start.
        refused: connections the relay ended (each also counted in ``reasons``).
        frames: frames relayed (handed to a partner's connection).
        bytes: payload bytes of those frames.
        held: bytes held now for absent partners (with :data:`HELD_OVERHEAD` per frame).
        peak_held: the most ``held`` ever was.
        queued: bytes handed to connections and not yet written.
        paused: connections paused now (their partner's window is full).
        peak_queued: the most ``queued`` ever was.
        expired_frames: held frames dropped after the tombstone time.
        runs: runs seen.
        reasons: relay-ended connections by kind: ``malformed_hello``, ``wrong_token``,
            ``duplicate_me``, ``no_hello``, ``protocol_error`` (framing, a frame over the
            size limit), ``held_limit``.
    """

    connections: int = 0
    paired: int = 0
    hellos: int = 0
    refused: int = 0
    frames: int = 0
    bytes: int = 0
    held: int = 0
    peak_held: int = 0
    queued: int = 0
    paused: int = 0
    peak_queued: int = 0
    expired_frames: int = 0
    runs: int = 0
    reasons: tuple[tuple[str, int], ...] = ()

    def line(self) -> str:
        """One line for a log or the end of ``mu relay``."""
        refused = f" ({', '.join(f'{k} {v}' for k, v in self.reasons)})" if self.reasons else ""
        return (f"{self.hellos} hellos in {self.runs} run(s), {self.frames} frames "
                f"({self.bytes} bytes) relayed, peak held {self.peak_held} bytes, peak "
                f"queued {self.peak_queued} bytes, {self.expired_frames} expired, "
                f"{self.refused} refused{refused}")


class _Link:
    """One connection as the core sees it."""

    __slots__ = ("cid", "decoder", "key", "partner", "paused", "queued", "run")

    def __init__(self, cid: int, max_hello: int) -> None:
        self.cid = cid
        self.decoder = FrameDecoder(max_hello, peer=f"connection {cid}")
        self.run: _Run | None = None  # set by the hello
        self.key = -1  # <me>
        self.partner = -1
        self.queued = 0  # bytes handed to the pump for it, not yet written
        self.paused = False


class _Held:
    """Frames held for one absent ``<me>`` of a run, oldest first, with their hold time."""

    __slots__ = ("bytes", "frames")

    def __init__(self) -> None:
        self.frames: deque[tuple[float, bytes]] = deque()
        self.bytes = 0


class _Run:
    """One run's live connections and held frames, by ``<me>``."""

    __slots__ = ("held", "held_bytes", "live", "name", "waiting")

    def __init__(self, name: str) -> None:
        self.name = name
        self.live: dict[int, _Link] = {}
        self.held: dict[int, _Held] = {}
        self.held_bytes = 0
        self.waiting: dict[int, set[int]] = {}  # <me> -> cids paused on its full window


class RelayCore:
    """The pairing decisions of one relay (see the module docstring).

    Args:
        token: the run token every hello must carry; None accepts any ``<run>`` (a
            standalone relay for jobs driven by hand).
        limits: the bounds (default :class:`RelayLimits`).
    """

    def __init__(self, token: str | None = None, limits: RelayLimits | None = None) -> None:
        self.token = token
        self.limits = limits or RelayLimits()
        self._links: dict[int, _Link] = {}
        self._runs: dict[str, _Run] = {}
        self._hello_heap: list[tuple[float, int]] = []
        self._expiry_heap: list[tuple[float, str, int]] = []  # (when, run, <me>)
        self._held = 0
        self._peak_held = 0
        self._queued = 0
        self._peak_queued = 0
        self._hellos = 0
        self._frames = 0
        self._bytes = 0
        self._expired = 0
        self._reasons: dict[str, int] = {}
        self._paired = 0

    # -- introspection --------------------------------------------------------------------

    @property
    def wake_at(self) -> float | None:
        """The earliest time :meth:`tick` may have something to do (None: nothing waits)."""
        times = [h[0][0] for h in (self._hello_heap, self._expiry_heap) if h]
        return min(times) if times else None

    def is_paused(self, cid: int) -> bool:
        link = self._links.get(cid)
        return link is not None and link.paused

    def held_bytes(self, run: str, me: int) -> int:
        """Bytes held now for ``<me>`` of ``run`` (frames and their overhead)."""
        r = self._runs.get(run)
        held = r.held.get(me) if r else None
        return held.bytes if held else 0

    def stats(self) -> RelayStats:
        return RelayStats(
            connections=len(self._links), paired=self._paired, hellos=self._hellos,
            refused=sum(self._reasons.values()), frames=self._frames, bytes=self._bytes,
            held=self._held, peak_held=self._peak_held, queued=self._queued,
            paused=sum(1 for link in self._links.values() if link.paused),
            peak_queued=self._peak_queued, expired_frames=self._expired,
            runs=len(self._runs), reasons=tuple(sorted(self._reasons.items())),
        )

    # -- events ---------------------------------------------------------------------------

    def connected(self, cid: int, now: float) -> list[Action]:
        """A new connection (TLS done): it must say hello within the hello timeout.

        Raises:
            ValueError: ``cid`` is already in use (a bug in the caller).
        """
        if cid in self._links:
            raise ValueError(f"connection {cid} is already known")
        self._links[cid] = _Link(cid, self.limits.max_hello)
        heapq.heappush(self._hello_heap, (now + self.limits.hello_timeout, cid))
        return []

    def received(self, cid: int, data: bytes, now: float) -> list[Action]:
        """Bytes from ``cid`` (``b""``: it closed its end). Unknown ``cid``: ignored."""
        link = self._links.get(cid)
        if link is None:
            return []
        decoder = link.decoder
        decoder.receive_data(data)
        actions: list[Action] = []
        while True:
            try:
                frame = decoder.next_frame()
            except RemoteProtocolError as exc:
                return self._end(link, "protocol_error", str(exc), actions)
            if isinstance(frame, Sentinel):
                if frame is not NEED_DATA:  # CLOSED: a clean end
                    self._forget(link, actions)
                    actions.append(Close(cid, "closed by the peer"))
                return actions
            if link.run is None:
                if not self._hello(link, frame, actions):
                    return actions
            elif not self._relay(link, frame, now, actions):
                return actions

    def written(self, cid: int, n: int) -> list[Action]:
        """The pump wrote ``n`` bytes of what was delivered to ``cid``."""
        link = self._links.get(cid)
        if link is None or n <= 0:
            return []
        link.queued -= n
        self._queued -= n
        actions: list[Action] = []
        if link.run is not None and link.queued <= self.limits.window // 2:
            self._resume_senders(link.run, link.key, actions)
        return actions

    def closed(self, cid: int, reason: str = "") -> list[Action]:
        """``cid`` is gone (EOF or a transport error); what was queued for it is lost."""
        link = self._links.get(cid)
        if link is None:
            return []
        actions: list[Action] = []
        self._forget(link, actions)
        return actions

    def tick(self, now: float) -> list[Action]:
        """Apply the deadlines due by ``now``: connections without a hello are ended, held
        frames older than the tombstone time are dropped."""
        actions: list[Action] = []
        heap = self._hello_heap
        while heap and heap[0][0] <= now:
            _, cid = heapq.heappop(heap)
            link = self._links.get(cid)
            if link is not None and link.run is None:
                self._end(link, "no_hello",
                          f"no hello within {self.limits.hello_timeout:g} s", actions)
        expiry = self._expiry_heap
        while expiry and expiry[0][0] <= now:
            _, name, me = heapq.heappop(expiry)
            run = self._runs.get(name)
            held = run.held.get(me) if run else None
            if run is None or held is None:
                continue  # delivered meanwhile
            ttl = self.limits.tombstone
            while held.frames and held.frames[0][0] + ttl <= now:
                _, frame = held.frames.popleft()
                self._unhold(run, held, len(frame) + HELD_OVERHEAD)
                self._expired += 1
            if held.frames:
                heapq.heappush(expiry, (held.frames[0][0] + ttl, name, me))
            else:
                del run.held[me]
        return actions

    # -- decisions ------------------------------------------------------------------------

    def _hello(self, link: _Link, frame: bytes, actions: list[Action]) -> bool:
        text = frame.decode("utf-8", "replace")
        match = _HELLO.fullmatch(text)
        if match is None:
            shown = text[:60] + ("..." if len(text) > 60 else "")
            self._end(link, "malformed_hello", f"malformed hello {shown!r}: expected "
                      "HELLO_STATE:<run>:<me>:<partner> with decimal <me> and <partner>", actions)
            return False
        name = match["run"]
        if self.token is not None and name != self.token:
            self._end(link, "wrong_token", "wrong run token in hello", actions)
            return False
        me, partner = int(match["me"]), int(match["partner"])
        run = self._runs.get(name)
        if run is None:
            run = self._runs[name] = _Run(name)
        if me in run.live:
            self._end(link, "duplicate_me", f"<me> {me} is already connected in this run",
                      actions)
            return False
        link.run, link.key, link.partner = run, me, partner
        link.decoder.max_frame = self.limits.max_frame
        run.live[me] = link
        self._hellos += 1
        self._paired += 1
        held = run.held.pop(me, None)
        if held is not None:  # tombstones: what came while it was away, first
            for _, frame_bytes in held.frames:
                self._unhold(run, held, len(frame_bytes) + HELD_OVERHEAD)
                self._deliver(link, frame_bytes, actions)
        # Senders paused on this <me> while it was away cannot be: absent partners hold.
        return True

    def _relay(self, link: _Link, payload: bytes, now: float, actions: list[Action]) -> bool:
        run = link.run
        assert run is not None
        frame = encode_frame(payload)
        target = run.live.get(link.partner)
        if target is not None:
            self._deliver(target, frame, actions)
            if target.queued > self.limits.window and not link.paused:
                link.paused = True
                run.waiting.setdefault(target.key, set()).add(link.cid)
                actions.append(Pause(link.cid))
            return True
        cost = len(frame) + HELD_OVERHEAD
        held = run.held.get(link.partner)
        limits = self.limits
        for what, have, bound in (
            (f"for <me> {link.partner}", held.bytes if held else 0, limits.held_per_partner),
            ("in this run", run.held_bytes, limits.held_per_run),
            ("in all runs", self._held, limits.held_total),
        ):
            if have + cost > bound:
                self._end(link, "held_limit", f"held bytes {what} would be {have + cost}, "
                          f"over the limit {bound} (<me> {link.partner} is not connected)",
                          actions)
                return False
        if held is None:
            held = run.held[link.partner] = _Held()
            heapq.heappush(self._expiry_heap, (now + limits.tombstone, run.name, link.partner))
        held.frames.append((now, frame))
        held.bytes += cost
        run.held_bytes += cost
        self._held += cost
        self._peak_held = max(self._peak_held, self._held)
        return True

    def _deliver(self, target: _Link, frame: bytes, actions: list[Action]) -> None:
        actions.append(Deliver(target.cid, frame))
        n = len(frame)
        target.queued += n
        self._queued += n
        self._peak_queued = max(self._peak_queued, self._queued)
        self._frames += 1
        self._bytes += n - 13  # the header is 12 digits and a space

    def _unhold(self, run: _Run, held: _Held, cost: int) -> None:
        held.bytes -= cost
        run.held_bytes -= cost
        self._held -= cost

    def _resume_senders(self, run: _Run, me: int, actions: list[Action]) -> None:
        for cid in sorted(run.waiting.pop(me, ())):
            sender = self._links.get(cid)
            if sender is not None and sender.paused:
                sender.paused = False
                actions.append(Resume(cid))

    def _end(self, link: _Link, kind: str, reason: str, actions: list[Action]) -> list[Action]:
        """The relay ends ``link`` (counted under ``kind``): its last frame says why."""
        self._forget(link, actions)
        self._reasons[kind] = self._reasons.get(kind, 0) + 1
        actions.append(Close(link.cid, reason, fail_frame(reason)))
        return actions

    def _forget(self, link: _Link, actions: list[Action]) -> None:
        del self._links[link.cid]
        self._queued -= link.queued
        link.queued = 0
        run = link.run
        if run is None:
            return
        if run.live.get(link.key) is link:
            del run.live[link.key]
            self._paired -= 1
        # Its senders were paused on its window: from now on their frames are held.
        self._resume_senders(run, link.key, actions)
        if link.paused:
            waiting = run.waiting.get(link.partner)
            if waiting is not None:
                waiting.discard(link.cid)
                if not waiting:
                    del run.waiting[link.partner]
