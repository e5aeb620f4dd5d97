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

Frames are cut through: the core reads each frame's 13-byte header itself, and when the
partner is live the frame's bytes go to it as they arrive (:class:`Deliver` of whatever part
came), so no frame is ever assembled for a live partner and a connection costs at most one
read and its partner's window, whatever the frame size. A frame whose partner is *absent*
when its header arrives is assembled and held whole; its whole announced size is charged at
the header, so a bound is checked before any of it is kept. Two consequences: a frame that
has begun towards a connection that goes away is lost with it (as what was queued for it),
its remainder dropped; and a sender that goes away inside a frame it was cutting through
ends its partner's connection too, which holds a part of a frame and cannot go on (counted
as ``truncated``).

Memory is bounded in two ways. For a *live* partner the pump reports with
:meth:`RelayCore.written` what its socket took, and while more than
:attr:`RelayLimits.window` bytes wait for one connection, every sender to it is paused
(:class:`Pause`: the pump stops reading it, so TCP pushes back on that sender alone; a slow
reader stalls nobody else). Frames for an *absent* partner are held here, bounded per
partner, per run and in all; each held frame is charged :data:`HELD_OVERHEAD` bytes beyond
its length, so a flood of empty frames is bounded too. A frame that would exceed a bound
ends its sender: ``FAIL(relay: ...)`` naming the bound and the value. A hello may be at
most :attr:`RelayLimits.max_hello` bytes, any later frame :attr:`RelayLimits.max_frame`.

Everything is keyed by the connection id the pump chose; the clock is a parameter. Nothing
here raises for anything a peer sends: bad input closes that connection only.
"""

from __future__ import annotations

import heapq
import re
from collections import deque
from dataclasses import dataclass
from typing import Final

from mu.errors import FrameTooLarge
from mu.protocol import DIGITS, HEADER_LEN, encode_text

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
        max_connections: connections open at once (over it, the pump drops the oldest
            connection still in its TLS handshake for a newcomer, or else the newcomer).
        max_unauthenticated: connections still in their TLS handshake held at once; the
            oldest is dropped for a newcomer (the coordinator's bound).
        max_unauthenticated_per_address: the same from one source address.
        socket_buffer: the kernel's send and receive buffers of each connection (the pump
            sets them on its listening socket; the kernel doubles the value for its
            bookkeeping), so that the kernel's memory for the relay's connections is bounded
            too; None leaves them to the kernel's autotuning. 128 KiB carries about 125 MB/s
            per connection at a 1 ms round trip (workers in the relay's region), and keeps
            2,000 connections' buffers at most 1 GB, under the TCP memory pressure threshold
            of a machine of about 16 GB or more (``net.ipv4.tcp_mem``): in pressure the kernel
            drops segments and TCP waits out retransmit timeouts.
    """

    max_frame: int = 4 * 1024 * 1024
    max_hello: int = 1024
    window: int = 256 * 1024
    held_per_partner: int = 64 * 1024 * 1024
    held_per_run: int = 256 * 1024 * 1024
    held_total: int = 512 * 1024 * 1024
    tombstone: float = 600.0
    hello_timeout: float = 10.0
    handshake_timeout: float = 10.0
    max_connections: int = 20_000
    max_unauthenticated: int = 8192
    max_unauthenticated_per_address: int = 4096
    socket_buffer: int | None = 128 * 1024

    def __post_init__(self) -> None:
        for name in ("max_frame", "max_hello", "window", "held_per_partner", "held_per_run",
                     "held_total", "max_connections", "max_unauthenticated",
                     "max_unauthenticated_per_address"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.socket_buffer is not None and self.socket_buffer < 4096:
            raise ValueError(f"socket_buffer must be >= 4096 or None, got {self.socket_buffer}")
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
            size limit), ``held_limit``, ``truncated`` (its partner left inside a frame).
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
    """One connection as the core sees it, and where the frame it is sending goes."""

    __slots__ = ("building", "cid", "closed", "cost", "dest", "gate", "header", "key",
                 "partner", "paused", "pending", "queued", "remaining", "run")

    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.run: _Run | None = None  # set by the hello
        self.key = -1  # <me>
        self.partner = -1
        self.queued = 0  # bytes handed to the pump for it, not yet written
        self.paused = False
        self.closed = False
        self.header = bytearray()  # the part of a frame header received so far
        self.remaining = 0  # payload bytes of the current frame still to come
        self.dest: _Link | None = None  # the live partner the current frame is cut through to
        self.building: bytearray | None = None  # the current frame, whole (held, or the hello)
        self.cost = 0  # held bytes reserved for the frame being built
        # As a receiver: the sender cutting a frame through to it now, and the whole frames
        # of other senders waiting for that frame to end (held: charged as held bytes).
        self.gate: _Link | None = None
        self.pending: deque[tuple[float, bytes, _Link]] = deque()


class _Held:
    """Frames held for one absent ``<me>`` of a run, oldest first, with their hold time."""

    __slots__ = ("bytes", "frames")

    def __init__(self) -> None:
        self.frames: deque[tuple[float, bytes]] = deque()
        self.bytes = 0  # the frames' cost, and what frames being built for it reserved


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
        """Bytes held now for ``<me>`` of ``run`` (frames, their overhead, and what frames
        still arriving for it reserved)."""
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
        self._links[cid] = _Link(cid)
        heapq.heappush(self._hello_heap, (now + self.limits.hello_timeout, cid))
        return []

    def received(self, cid: int, data: bytes, now: float) -> list[Action]:
        """Bytes from ``cid`` (``b""``: it closed its end). Unknown ``cid``: ignored."""
        link = self._links.get(cid)
        if link is None:
            return []
        actions: list[Action] = []
        if not data:
            inside = link.remaining > 0 or bool(link.header)
            self._forget(link, actions)
            actions.append(Close(cid, "ended inside a frame" if inside else "closed by the peer"))
            return actions
        view = memoryview(data)
        i, n = 0, len(data)
        while i < n:
            if link.remaining == 0:  # a header, or its rest
                need = HEADER_LEN - len(link.header)
                link.header += view[i:i + need]
                i += need
                if len(link.header) < HEADER_LEN:
                    if not link.header.isdigit():
                        self._bad_header(link, actions)
                    return actions
                if not self._begin(link, now, actions):
                    return actions
                if link.remaining:
                    continue
            else:
                take = min(link.remaining, n - i)
                # the usual case, a read inside a frame: hand it on without a copy
                self._payload(link, data if take == n else view[i:i + take], actions)
                i += take
                link.remaining -= take
                if link.remaining:
                    continue
            if not self._complete(link, now, actions):  # a whole frame (or an empty one)
                return actions
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
                self._unhold(run, me, len(frame) + HELD_OVERHEAD)
                self._expired += 1
            if held.frames:
                heapq.heappush(expiry, (held.frames[0][0] + ttl, name, me))
        return actions

    # -- frames ---------------------------------------------------------------------------

    def _bad_header(self, link: _Link, actions: list[Action]) -> None:
        header = bytes(link.header)
        what = ("is not 12 decimal digits and a space" if not header[:DIGITS].isdigit()
                else "lacks the space after the length")
        self._end(link, "protocol_error",
                  f"frame header {header!r} {what} from connection {link.cid}", actions)

    def _begin(self, link: _Link, now: float, actions: list[Action]) -> bool:
        """A whole header arrived: check it and decide where the frame goes. False: ``link``
        was ended."""
        header = bytes(link.header)
        if header[DIGITS] != 0x20 or not header[:DIGITS].isdigit():
            self._bad_header(link, actions)
            return False
        length = int(header[:DIGITS])
        run = link.run
        limit = self.limits.max_hello if run is None else self.limits.max_frame
        if length > limit:
            error = FrameTooLarge(length, limit, f"connection {link.cid}")
            self._end(link, "protocol_error", str(error), actions)
            return False
        link.header.clear()
        link.remaining = length
        if run is None:  # the hello, assembled
            link.building = bytearray()
            return True
        target = run.live.get(link.partner)
        if target is not None and target.gate is None:  # cut through
            link.dest = target
            target.gate = link
            self._send(link, target, header, 0, actions)
            return True
        # Held whole: its partner is absent, or busy with another sender's frame.
        why = "busy with another sender's frame" if target else "not connected"
        cost = HELD_OVERHEAD + HEADER_LEN + length
        held = run.held.get(link.partner)
        limits = self.limits
        for what, have, bound in (
            (f"for <me> {link.partner}", held.bytes if held else 0, limits.held_per_partner),
            ("in this run", run.held_bytes, limits.held_per_run),
            ("in all runs", self._held, limits.held_total),
        ):
            if have + cost > bound:
                self._end(link, "held_limit", f"held bytes {what} would be {have + cost}, "
                          f"over the limit {bound} (<me> {link.partner} is {why})", actions)
                return False
        self._hold(run, link.partner, cost)
        link.building = bytearray(header)
        link.cost = cost
        return True

    def _payload(self, link: _Link, chunk: bytes | memoryview, actions: list[Action]) -> None:
        if link.building is not None:
            link.building += chunk
        elif link.dest is not None:
            if link.dest.closed:  # its partner left inside the frame: the rest goes nowhere
                link.dest = None
            else:
                self._send(link, link.dest, bytes(chunk), len(chunk), actions)

    def _complete(self, link: _Link, now: float, actions: list[Action]) -> bool:
        """The current frame has ended. False: ``link`` was ended (its hello refused)."""
        frame, link.building = link.building, None
        dest, link.dest = link.dest, None
        run = link.run
        if run is None:
            assert frame is not None
            return self._hello(link, bytes(frame), actions)
        if frame is None:  # cut through
            if dest is not None and not dest.closed:
                self._frames += 1
                dest.gate = None
                self._release(dest, actions)
            return True
        # A held frame: its partner may have said hello, or become free, meanwhile.
        self._unhold(run, link.partner, link.cost)
        link.cost = 0
        whole = bytes(frame)
        target = run.live.get(link.partner)
        if target is not None and target.gate is None:
            self._frames += 1
            self._send(link, target, whole, len(whole) - HEADER_LEN, actions)
            return True
        cost = len(whole) + HELD_OVERHEAD
        self._hold(run, link.partner, cost)
        if target is not None:  # after the frame it is receiving now
            target.pending.append((now, whole, link))
            return True
        held = run.held[link.partner]
        if not held.frames:
            heapq.heappush(self._expiry_heap, (now + self.limits.tombstone, run.name,
                                               link.partner))
        held.frames.append((now, whole))
        return True

    def _release(self, target: _Link, actions: list[Action]) -> None:
        """``target``'s gate is free: deliver the whole frames that waited for it."""
        run = target.run
        assert run is not None
        while target.pending:
            _, frame, sender = target.pending.popleft()
            self._unhold(run, target.key, len(frame) + HELD_OVERHEAD)
            self._frames += 1
            if sender.closed:
                self._deliver(target, frame, actions)
                self._bytes += len(frame) - HEADER_LEN
            else:
                self._send(sender, target, frame, len(frame) - HEADER_LEN, actions)

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
        run.live[me] = link
        self._hellos += 1
        self._paired += 1
        held = run.held.get(me)
        if held is not None:  # tombstones: what came while it was away, first
            while held.frames:
                _, frame_bytes = held.frames.popleft()
                self._unhold(run, me, len(frame_bytes) + HELD_OVERHEAD)
                self._frames += 1
                self._deliver(link, frame_bytes, actions)
                self._bytes += len(frame_bytes) - HEADER_LEN
        return True

    def _send(self, sender: _Link, target: _Link, data: bytes, payload: int,
              actions: list[Action]) -> None:
        """Hand ``data`` (holding ``payload`` bytes of frame payload) from ``sender`` to
        ``target``; pause ``sender`` when that fills ``target``'s window."""
        self._deliver(target, data, actions)
        self._bytes += payload
        if target.queued > self.limits.window and not sender.paused:
            sender.paused = True
            assert sender.run is not None
            sender.run.waiting.setdefault(target.key, set()).add(sender.cid)
            actions.append(Pause(sender.cid))

    def _deliver(self, target: _Link, data: bytes, actions: list[Action]) -> None:
        actions.append(Deliver(target.cid, data))
        n = len(data)
        target.queued += n
        self._queued += n
        self._peak_queued = max(self._peak_queued, self._queued)

    def _hold(self, run: _Run, me: int, cost: int) -> None:
        held = run.held.get(me)
        if held is None:
            held = run.held[me] = _Held()
        held.bytes += cost
        run.held_bytes += cost
        self._held += cost
        self._peak_held = max(self._peak_held, self._held)

    def _unhold(self, run: _Run, me: int, cost: int) -> None:
        held = run.held[me]
        held.bytes -= cost
        run.held_bytes -= cost
        self._held -= cost
        if not held.bytes:
            del run.held[me]

    def _resume_senders(self, run: _Run, me: int, actions: list[Action]) -> None:
        for cid in sorted(run.waiting.pop(me, ())):
            sender = self._links.get(cid)
            if sender is not None and sender.paused:
                sender.paused = False
                actions.append(Resume(cid))

    def _end(self, link: _Link, kind: str, reason: str, actions: list[Action],
             farewell: bool = True) -> None:
        """The relay ends ``link`` (counted under ``kind``): its last frame says why, unless
        it is inside a frame (then it is closed without a word)."""
        self._forget(link, actions)
        self._reasons[kind] = self._reasons.get(kind, 0) + 1
        actions.append(Close(link.cid, reason, fail_frame(reason) if farewell else b""))

    def _forget(self, link: _Link, actions: list[Action]) -> None:
        del self._links[link.cid]
        link.closed = True
        self._queued -= link.queued
        link.queued = 0
        run = link.run
        if run is None:
            return
        if link.cost:  # a frame for an absent partner, unfinished: nothing of it is kept
            self._unhold(run, link.partner, link.cost)
            link.cost = 0
        if run.live.get(link.key) is link:
            del run.live[link.key]
            self._paired -= 1
        if link.pending:  # whole frames that waited for it: held for its return
            held = run.held[link.key]  # they are charged there already
            if not held.frames:
                heapq.heappush(self._expiry_heap, (link.pending[0][0] + self.limits.tombstone,
                                                   run.name, link.key))
            held.frames.extend((t, frame) for t, frame, _ in link.pending)
            link.pending.clear()
        # Its senders were paused on its window: from now on their frames are held.
        self._resume_senders(run, link.key, actions)
        if link.paused:
            waiting = run.waiting.get(link.partner)
            if waiting is not None:
                waiting.discard(link.cid)
                if not waiting:
                    del run.waiting[link.partner]
        dest = link.dest
        if dest is not None and not dest.closed and link.remaining:
            # Its partner holds a part of a frame: that stream cannot go on.
            self._end(dest, "truncated", f"<me> {link.key} left inside a frame", actions,
                      farewell=False)
