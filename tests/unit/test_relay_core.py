"""The relay's pure pairing core: examples, then a reference model under every interleaving.

The state machine drives :class:`~mu.relay_core.RelayCore` with clients that connect (in
any order), send frames in arbitrary chunks, drain, disconnect, reconnect and let time pass;
a plain model says where each frame must go. Properties: every frame reaches its partner
exactly once and in order (at once if the partner is live, at its hello if not), or is held,
or expired after the tombstone time, or was refused with its sender; held bytes never exceed
a bound; a sender is paused only while its partner's window is full.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mu.protocol import NEED_DATA, FrameDecoder, encode_frame, encode_text
from mu.relay_core import (
    HELD_OVERHEAD,
    Action,
    Close,
    Deliver,
    Pause,
    RelayCore,
    RelayLimits,
    Resume,
    hello_text,
)
from tests.strategies import chunked

RUN = "run-token"


def frames_of(data: bytes) -> list[bytes]:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    out = []
    while (frame := decoder.next_frame()) is not NEED_DATA:
        assert isinstance(frame, bytes)
        out.append(frame)
    return out


def delivered(actions: list[Action]) -> dict[int, list[bytes]]:
    """The whole frames each connection was given (frames may come in parts)."""
    streams: dict[int, bytes] = defaultdict(bytes)
    for action in actions:
        if isinstance(action, Deliver):
            streams[action.cid] += action.data
    return {cid: frames_of(data) for cid, data in streams.items()}


def closes(actions: list[Action]) -> dict[int, Close]:
    return {a.cid: a for a in actions if isinstance(a, Close)}


def hello(me: int, partner: int, run: str = RUN) -> bytes:
    return encode_text(hello_text(run, me, partner))


def joined(core: RelayCore, cid: int, me: int, partner: int, now: float = 0.0,
           run: str = RUN) -> list[Action]:
    assert core.connected(cid, now) == []
    return core.received(cid, hello(me, partner, run), now)


# -- examples ------------------------------------------------------------------------------


def test_frames_go_to_the_partner_in_order_and_nothing_answers_the_hello() -> None:
    core = RelayCore(RUN)
    assert joined(core, 1, 0, 1) == []
    assert joined(core, 2, 1, 0) == []
    actions = core.received(1, encode_frame(b"a") + encode_frame(b"") + encode_frame(b"c"), 1.0)
    assert delivered(actions) == {2: [b"a", b"", b"c"]}
    assert delivered(core.received(2, encode_frame(b"back"), 1.0)) == {1: [b"back"]}
    stats = core.stats()
    assert (stats.hellos, stats.frames, stats.bytes, stats.paired) == (2, 4, 6, 2)


def test_frames_for_a_partner_not_yet_connected_are_held_then_delivered_first() -> None:
    core = RelayCore(RUN)
    joined(core, 1, 7, 8)
    assert core.received(1, encode_frame(b"early") + encode_frame(b"also"), 5.0) == []
    assert core.held_bytes(RUN, 8) == 2 * HELD_OVERHEAD + 13 * 2 + 9
    actions = joined(core, 2, 8, 7, now=100.0)
    assert delivered(actions) == {2: [b"early", b"also"]}
    assert core.held_bytes(RUN, 8) == 0
    assert delivered(core.received(1, encode_frame(b"late"), 101.0)) == {2: [b"late"]}


def test_frames_for_a_partner_that_left_are_held_for_its_return() -> None:
    core = RelayCore(RUN)
    joined(core, 1, 0, 1)
    joined(core, 2, 1, 0)
    assert core.received(2, b"", 1.0) == [Close(2, "closed by the peer")]
    assert core.received(1, encode_frame(b"x"), 2.0) == []
    assert delivered(joined(core, 3, 1, 0, now=3.0)) == {3: [b"x"]}


def test_held_frames_expire_after_the_tombstone_time() -> None:
    core = RelayCore(RUN)
    joined(core, 1, 0, 1)
    core.received(1, encode_frame(b"old"), 10.0)
    core.received(1, encode_frame(b"new"), 20.0)
    assert core.wake_at == 10.0  # the hello deadline (connected at 0) has passed already
    core.tick(609.0)
    assert core.stats().expired_frames == 0
    core.tick(610.0)
    assert core.stats().expired_frames == 1
    assert delivered(joined(core, 2, 1, 0, now=611.0)) == {2: [b"new"]}


def test_a_wrong_token_pairs_with_nobody() -> None:
    core = RelayCore(RUN)
    joined(core, 1, 0, 1)
    actions = joined(core, 2, 1, 0, run="other")
    assert closes(actions)[2].farewell == encode_text("FAIL(relay: wrong run token in hello)")
    assert core.received(1, encode_frame(b"x"), 1.0) == []  # held: nobody is <me> 1
    assert core.stats().reasons == (("wrong_token", 1),)


def test_a_standalone_relay_keeps_runs_apart() -> None:
    core = RelayCore(None)
    joined(core, 1, 0, 1, run="a")
    joined(core, 2, 1, 0, run="b")
    joined(core, 3, 1, 0, run="a")
    assert delivered(core.received(1, encode_frame(b"x"), 1.0)) == {3: [b"x"]}
    assert core.stats().runs == 2


@pytest.mark.parametrize("text", [
    "HELLO", "HELLO_STATE:run:1", "HELLO_STATE:run:a:1", "HELLO_STATE:run:1:-2",
    "HELLO_STATE:run:1:2:3", "OK:HELLO:run", "HELLO_STATE:run:\u0661:2", "",
])
def test_a_malformed_hello_is_refused_with_a_reason(text: str) -> None:
    core = RelayCore(None)
    core.connected(1, 0.0)
    (close,) = core.received(1, encode_text(text), 0.0)
    assert isinstance(close, Close) and close.cid == 1
    assert close.farewell.startswith(b"%012d FAIL(relay: malformed hello " % (
        len(close.farewell) - 13))
    assert "HELLO_STATE:<run>:<me>:<partner>" in close.reason


def test_a_hello_larger_than_its_bound_is_a_protocol_error() -> None:
    core = RelayCore(None, RelayLimits(max_hello=100))
    core.connected(1, 0.0)
    (close,) = core.received(1, encode_text(hello_text("r" * 200, 1, 2)), 0.0)
    assert isinstance(close, Close)
    assert "exceeds maximum 100" in close.reason
    assert core.stats().reasons == (("protocol_error", 1),)


def test_a_second_live_connection_with_the_same_me_is_refused() -> None:
    core = RelayCore(RUN)
    joined(core, 1, 4, 5)
    close = closes(joined(core, 2, 4, 5))[2]
    assert close.reason == "<me> 4 is already connected in this run"
    assert core.stats().paired == 1


def test_silence_after_connecting_ends_the_connection_at_the_hello_deadline() -> None:
    core = RelayCore(RUN, RelayLimits(hello_timeout=10.0))
    core.connected(1, 0.0)
    core.connected(2, 5.0)
    core.received(2, hello(1, 2), 6.0)
    assert core.tick(9.9) == []
    (close,) = core.tick(10.0)
    assert close == Close(1, "no hello within 10 s",
                          encode_text("FAIL(relay: no hello within 10 s)"))
    assert core.tick(20.0) == []  # connection 2 said hello


def test_an_oversized_frame_ends_its_sender_only() -> None:
    core = RelayCore(RUN, RelayLimits(max_frame=1000))
    joined(core, 1, 0, 1)
    joined(core, 2, 1, 0)
    joined(core, 3, 2, 3)
    joined(core, 4, 3, 2)
    (close,) = core.received(1, b"%012d " % 1001, 1.0)
    assert isinstance(close, Close) and close.cid == 1
    assert close.reason == "frame length 1001 exceeds maximum 1000 from connection 1"
    assert delivered(core.received(3, encode_frame(b"y" * 1000), 1.0)) == {4: [b"y" * 1000]}


@pytest.mark.parametrize(("limits", "what"), [
    (RelayLimits(held_per_partner=300), "for <me> 9"),
    (RelayLimits(held_per_run=300), "in this run"),
    (RelayLimits(held_total=300), "in all runs"),
])
def test_held_bytes_over_a_bound_end_the_sender_with_a_clear_error(
        limits: RelayLimits, what: str) -> None:
    core = RelayCore(RUN, limits)
    joined(core, 1, 8, 9)
    cost = 100 + 13 + HELD_OVERHEAD  # 177 each: the second frame would make 354
    actions = core.received(1, encode_frame(b"z" * 100) * 3, 1.0)
    (close,) = actions
    assert isinstance(close, Close)
    assert close.reason == (f"held bytes {what} would be {2 * cost}, over the limit 300 "
                            "(<me> 9 is not connected)")
    assert close.farewell == encode_text(f"FAIL(relay: {close.reason})")
    assert core.stats().held == cost
    assert delivered(joined(core, 2, 9, 8, now=2.0)) == {2: [b"z" * 100]}


def test_a_full_window_pauses_the_sender_until_the_reader_drains() -> None:
    core = RelayCore(RUN, RelayLimits(window=1000))
    joined(core, 1, 0, 1)
    joined(core, 2, 1, 0)
    joined(core, 3, 5, 1)  # a second sender to <me> 1
    actions = core.received(1, encode_frame(b"a" * 600), 1.0)
    assert delivered(actions) == {2: [b"a" * 600]} and not core.is_paused(1)
    assert Pause(1) in core.received(1, encode_frame(b"b" * 600), 1.0)
    assert core.is_paused(1)
    assert Pause(3) in core.received(3, encode_frame(b"c"), 1.0)
    assert core.written(2, 300) == []  # 927 queued: above half the window
    assert core.written(2, 800) == [Resume(1), Resume(3)]
    assert not core.is_paused(1) and core.stats().queued == 1240 - 1100


def test_a_frame_is_cut_through_as_its_bytes_arrive() -> None:
    core = RelayCore(RUN)
    joined(core, 1, 0, 1)
    joined(core, 2, 1, 0)
    frame = encode_frame(b"0123456789")
    assert core.received(1, frame[:5], 1.0) == []  # a part of a header: nothing yet
    assert core.received(1, frame[5:16], 1.0) == [Deliver(2, frame[:13]), Deliver(2, b"012")]
    assert core.received(1, frame[16:], 1.0) == [Deliver(2, b"3456789")]
    assert core.stats().frames == 1 and core.stats().bytes == 10


def test_a_second_sender_waits_whole_until_the_frame_in_progress_ends() -> None:
    core = RelayCore(RUN)
    joined(core, 1, 0, 1)
    joined(core, 2, 1, 0)
    joined(core, 3, 5, 1)
    first, second = encode_frame(b"first"), encode_frame(b"second")
    core.received(1, first[:15], 1.0)
    assert core.received(3, second, 1.0) == []  # held whole: <me> 1 is inside a frame
    assert core.held_bytes(RUN, 1) == len(second) + HELD_OVERHEAD
    actions = core.received(1, first[15:], 1.0)
    assert actions == [Deliver(2, first[15:]), Deliver(2, second)]
    assert core.held_bytes(RUN, 1) == 0


def test_a_sender_that_leaves_inside_a_frame_ends_its_partner() -> None:
    core = RelayCore(RUN)
    joined(core, 1, 0, 1)
    joined(core, 2, 1, 0)
    core.received(1, encode_frame(b"cut short")[:16], 1.0)
    assert core.closed(1, "reset") == [Close(2, "<me> 0 left inside a frame")]
    assert core.stats().reasons == (("truncated", 1),)
    joined(core, 3, 1, 0)  # the partner comes back; the next frames are whole
    joined(core, 4, 0, 1)
    assert delivered(core.received(4, encode_frame(b"again"), 2.0)) == {3: [b"again"]}


def test_a_frame_whose_reader_leaves_midway_is_dropped() -> None:
    core = RelayCore(RUN)
    joined(core, 1, 0, 1)
    joined(core, 2, 1, 0)
    frame = encode_frame(b"never whole")
    core.received(1, frame[:16], 1.0)
    assert core.closed(2) == []
    assert core.received(1, frame[16:] + encode_frame(b"next"), 2.0) == []
    assert delivered(joined(core, 3, 1, 0, now=3.0)) == {3: [b"next"]}


def test_senders_paused_on_a_reader_that_leaves_resume_and_their_frames_are_held() -> None:
    core = RelayCore(RUN, RelayLimits(window=10))
    joined(core, 1, 0, 1)
    joined(core, 2, 1, 0)
    assert Pause(1) in core.received(1, encode_frame(b"long enough"), 1.0)
    assert core.closed(2, "reset") == [Resume(1)]
    assert core.stats().queued == 0
    assert core.received(1, encode_frame(b"x"), 1.0) == []
    assert core.held_bytes(RUN, 1) == 14 + HELD_OVERHEAD


@pytest.mark.parametrize(("field", "value", "message"), [
    ("window", 0, "window must be >= 1, got 0"),
    ("held_total", -5, "held_total must be >= 1, got -5"),
    ("tombstone", 0, "tombstone must be a positive number of seconds, got 0"),
    ("socket_buffer", 100, "socket_buffer must be >= 4096 or None, got 100"),
])
def test_limits_name_a_bad_value(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(RelayLimits(), **{field: value})


def test_events_for_unknown_connections_are_ignored() -> None:
    core = RelayCore(RUN)
    assert core.received(9, b"junk", 0.0) == []
    assert core.written(9, 5) == []
    assert core.closed(9) == []
    core.connected(1, 0.0)
    with pytest.raises(ValueError, match="connection 1 is already known"):
        core.connected(1, 0.0)


@given(st.binary(max_size=300), st.integers(0, 5))
def test_garbage_never_raises_and_ends_only_its_connection(data: bytes, cut: int) -> None:
    core = RelayCore(None, RelayLimits(max_frame=64, max_hello=64))
    joined(core, 1, 0, 1)
    joined(core, 2, 1, 0)
    core.connected(3, 0.0)
    actions = core.received(3, data[:cut], 0.0) + core.received(3, data[cut:], 0.0)
    actions += core.received(3, b"", 0.0)
    assert all(a.cid == 3 or isinstance(a, Deliver) for a in actions)
    assert [a for a in actions if isinstance(a, Close)][-1:] != [] or data == b""
    assert delivered(core.received(1, encode_frame(b"ok"), 1.0)) == {2: [b"ok"]}


# -- the reference model -------------------------------------------------------------------

ME_PARTNER = {0: 1, 1: 0, 2: 3, 3: 2, 4: 4, 5: 1, 6: 1}  # 5, 6 also send to 1; 4 to itself
LIMITS = RelayLimits(max_frame=64, window=120, held_per_partner=400, held_per_run=700,
                     held_total=900, tombstone=600.0, hello_timeout=10.0)


def cost(payload: bytes) -> int:
    return 13 + len(payload) + HELD_OVERHEAD


class RelayMachine(RuleBasedStateMachine):
    """A client per ``<me>`` of :data:`ME_PARTNER`, and a model of where frames go.

    Frames may be sent whole (in arbitrary chunks) or left half-sent across other steps, so
    senders interleave inside frames: a frame is cut through to a live partner that is not
    receiving another sender's frame, else held whole (and delivered when its partner is
    back or free); a sender that leaves inside a frame it cut through ends its partner.
    """

    def __init__(self) -> None:
        super().__init__()
        self.core = RelayCore(RUN, LIMITS)
        self.now = 0.0
        self.cids = itertools.count(1)
        self.live: dict[int, int] = {}  # me -> cid
        self.me_of: dict[int, int] = {}  # cid -> me
        self.queued: dict[int, int] = {}  # cid -> bytes delivered, not yet written
        self.paused: set[int] = set()  # cids
        self.decoders: dict[int, FrameDecoder] = {}
        self.got: dict[int, list[bytes]] = defaultdict(list)  # cid -> whole frames received
        self.expected: dict[int, list[bytes]] = defaultdict(list)
        self.ended: set[int] = set()
        # where frames are
        self.held: dict[int, list[tuple[float, bytes]]] = defaultdict(list)  # me -> tombstones
        self.reserved: dict[int, int] = defaultdict(int)  # me -> frames being built for it
        self.pending: dict[int, list[tuple[float, bytes]]] = defaultdict(list)  # cid -> frames
        self.gate: dict[int, int] = {}  # cid -> the me cutting a frame through to it
        self.inflight: dict[int, tuple[str, int, bytes, int]] = {}  # me -> mode, dest, payload,
        self.seq = itertools.count()                                # bytes of it sent
        self.closing: set[int] = set()  # cids the model expects the core to end now

    # -- the model ----------------------------------------------------------------------

    def held_cost(self, me: int) -> int:
        cid = self.live.get(me)
        pending = self.pending[cid] if cid is not None else []
        return (sum(cost(f) for _, f in self.held[me]) + self.reserved[me]
                + sum(cost(f) for _, f in pending))

    def total_held(self) -> int:
        return sum(self.held_cost(m) for m in ME_PARTNER)

    def start(self, me: int, payload: bytes) -> bool:
        """A frame header from ``me``; False: the relay ends ``me`` (a held bound)."""
        partner = ME_PARTNER[me]
        dest = self.live.get(partner)
        if dest is not None and dest not in self.gate:
            self.gate[dest] = me
            self.inflight[me] = ("cut", dest, payload, 0)
            return True
        c = cost(payload)
        if (self.held_cost(partner) + c > LIMITS.held_per_partner
                or self.total_held() + c > min(LIMITS.held_per_run, LIMITS.held_total)):
            self.closing.add(self.live[me])
            self.gone(self.live[me])
            return False
        self.reserved[partner] += c
        self.inflight[me] = ("held", -1, payload, 0)
        return True

    def complete(self, me: int) -> None:
        mode, dest, payload, _ = self.inflight.pop(me)
        if mode == "cut":
            self.expected[dest].append(payload)
            del self.gate[dest]
            for _, frame in self.pending.pop(dest, []):
                self.expected[dest].append(frame)
        elif mode == "held":
            partner = ME_PARTNER[me]
            self.reserved[partner] -= cost(payload)
            target = self.live.get(partner)
            if target is not None and target not in self.gate:
                self.expected[target].append(payload)
            elif target is not None:
                event("a whole frame waited for another sender's frame")
                self.pending[target].append((self.now, payload))
            else:
                self.held[partner].append((self.now, payload))

    def gone(self, cid: int) -> None:
        """Connection ``cid`` ends (and, in cascade, those it was cutting a frame into)."""
        self.ended.add(cid)
        self.paused.discard(cid)
        self.queued.pop(cid, None)
        me = self.me_of.get(cid)
        if me is None or self.live.get(me) != cid:
            return
        frames = self.pending.pop(cid, [])
        del self.live[me]
        self.held[me].extend(frames)
        if cid in self.gate:  # its sender's frame has nowhere to go now
            sender = self.gate.pop(cid)
            mode, _, payload, sent = self.inflight[sender]
            self.inflight[sender] = ("discard", -1, payload, sent)
        flight = self.inflight.pop(me, None)
        if flight is None:
            return
        mode, dest, payload, _ = flight
        if mode == "held":
            self.reserved[ME_PARTNER[me]] -= cost(payload)
        elif mode == "cut":
            del self.gate[dest]
            self.closing.add(dest)
            self.gone(dest)

    def apply(self, actions: list[Action]) -> None:
        closed = set()
        for action in actions:
            if isinstance(action, Deliver):
                assert action.cid not in closed
                decoder = self.decoders[action.cid]
                decoder.receive_data(action.data)
                while isinstance(frame := decoder.next_frame(), bytes):
                    self.got[action.cid].append(frame)
                self.queued[action.cid] = self.queued.get(action.cid, 0) + len(action.data)
            elif isinstance(action, Pause):
                event("a sender paused")
                self.paused.add(action.cid)
            elif isinstance(action, Resume):
                self.paused.discard(action.cid)
            elif isinstance(action, Close):
                closed.add(action.cid)
        assert closed == self.closing, (closed, self.closing)
        self.closing = set()

    def feed(self, cid: int, stream: bytes, data: st.DataObject) -> list[Action]:
        actions: list[Action] = []
        for piece in data.draw(chunked(stream)):
            if piece:  # b"" would be EOF
                actions += self.core.received(cid, piece, self.now)
        return actions

    # -- the rules ----------------------------------------------------------------------

    @rule(me=st.sampled_from(sorted(ME_PARTNER)), data=st.data())
    def connect(self, me: int, data: st.DataObject) -> None:
        cid = next(self.cids)
        self.core.connected(cid, self.now)
        self.decoders[cid] = FrameDecoder()
        self.queued[cid] = 0
        actions = self.feed(cid, hello(me, ME_PARTNER[me]), data)
        if me in self.live:
            self.closing.add(cid)
            self.ended.add(cid)
            assert "already connected" in closes(actions)[cid].reason
        else:
            self.live[me] = cid
            self.me_of[cid] = me
            self.expected[cid] = [f for _, f in self.held.pop(me, [])]
            if self.expected[cid]:
                event("held frames delivered at a hello")
        self.apply(actions)

    def sender(self, data: st.DataObject, busy: bool) -> int | None:
        """A live, unpaused sender that is (busy) or is not inside a frame."""
        ready = sorted(me for me, cid in self.live.items()
                       if cid not in self.paused and (me in self.inflight) == busy)
        return data.draw(st.sampled_from(ready)) if ready else None

    @precondition(lambda self: self.live)
    @rule(data=st.data(), sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6))
    def send(self, data: st.DataObject, sizes: list[int]) -> None:
        me = self.sender(data, busy=False)
        if me is None:
            return
        cid = self.live[me]
        payloads = [b"%d:%d:" % (me, next(self.seq)) + b"x" * n for n in sizes]
        for payload in payloads:
            if not self.start(me, payload):
                event("a sender over a held bound")
                break
            self.complete(me)
        actions = self.feed(cid, b"".join(encode_frame(p) for p in payloads), data)
        self.apply(actions)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), size=st.integers(1, 40))
    def send_part(self, data: st.DataObject, size: int) -> None:
        me = self.sender(data, busy=False)
        if me is None:
            return
        cid = self.live[me]
        payload = b"%d:%d:" % (me, next(self.seq)) + b"y" * size
        part = data.draw(st.integers(0, len(payload) - 1))
        if self.start(me, payload):
            mode, dest, _, _ = self.inflight[me]
            self.inflight[me] = (mode, dest, payload, part)
            event(f"a frame left half-sent ({mode})")
        self.apply(self.feed(cid, encode_frame(payload)[:13 + part], data))

    def contenders(self) -> list[int]:
        """Senders, not inside a frame, whose partner is receiving another's frame now."""
        busy = {self.me_of[cid] for cid in self.gate}
        return sorted(me for me, cid in self.live.items() if ME_PARTNER[me] in busy
                      and me not in self.inflight and cid not in self.paused)

    @precondition(lambda self: self.contenders())
    @rule(data=st.data(), size=st.integers(0, 40))
    def contend(self, data: st.DataObject, size: int) -> None:
        """Send a whole frame to a partner inside another sender's frame."""
        me = data.draw(st.sampled_from(self.contenders()))
        cid = self.live[me]
        payload = b"%d:%d:" % (me, next(self.seq)) + b"z" * size
        if self.start(me, payload):
            self.complete(me)
        self.apply(self.feed(cid, encode_frame(payload), data))

    @precondition(lambda self: self.inflight)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        me = self.sender(data, busy=True)
        if me is None:
            return
        _, _, payload, part = self.inflight[me]
        self.complete(me)
        self.apply(self.feed(self.live[me], payload[part:], data))

    @precondition(lambda self: self.live)
    @rule(data=st.data(), clean=st.booleans())
    def leave(self, data: st.DataObject, clean: bool) -> None:
        me = data.draw(st.sampled_from(sorted(self.live)))
        cid = self.live[me]
        if me in self.inflight and self.inflight[me][0] == "cut":
            event("a sender left inside a frame it cut through")
        self.gone(cid)
        self.closing.discard(cid)  # it went by itself
        if clean:
            actions = self.core.received(cid, b"", self.now)
            assert closes(actions)[cid].farewell == b""
            self.closing.add(cid)
        else:
            actions = self.core.closed(cid)
        self.apply(actions)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), part=st.floats(0, 1))
    def drain(self, data: st.DataObject, part: float) -> None:
        cid = self.live[data.draw(st.sampled_from(sorted(self.live)))]
        n = int(self.queued[cid] * part)
        self.queued[cid] -= n
        self.apply(self.core.written(cid, n))

    @rule(dt=st.sampled_from([0.5, 10.0, 300.0, 599.0, 600.0]))
    def wait(self, dt: float) -> None:
        self.now += dt
        self.apply(self.core.tick(self.now))
        for me, frames in self.held.items():
            kept = [(t, f) for t, f in frames if t + LIMITS.tombstone > self.now]
            if len(kept) < len(frames):
                event("held frames expired")
            self.held[me] = kept

    # -- the properties -----------------------------------------------------------------

    @invariant()
    def every_frame_reaches_its_partner_once_in_order(self) -> None:
        for cid, frames in self.got.items():
            assert frames == self.expected[cid]

    @invariant()
    def held_frames_match_the_model_and_stay_within_bounds(self) -> None:
        for me in ME_PARTNER:
            assert self.core.held_bytes(RUN, me) == self.held_cost(me)
            assert self.held_cost(me) <= LIMITS.held_per_partner
        stats = self.core.stats()
        assert stats.held == self.total_held()
        assert stats.held <= min(LIMITS.held_per_run, LIMITS.held_total)
        assert stats.queued == sum(self.queued[c] for c in self.live.values())

    @invariant()
    def a_sender_is_paused_only_on_a_full_window(self) -> None:
        for me, cid in self.live.items():
            partner = self.live.get(ME_PARTNER[me])
            paused = self.core.is_paused(cid)
            assert paused == (cid in self.paused)
            if paused:
                assert partner is not None
                assert self.queued[partner] > LIMITS.window // 2
        assert self.core.stats().paused == len(self.paused)


RelayMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=30)
TestRelayMachine = RelayMachine.TestCase
