"""The relay's pure pairing core: examples, then a reference model under every interleaving.

The state machine drives :class:`~mu.relay_core.RelayCore` with clients that connect (in
any order), send frames in arbitrary chunks, drain, disconnect, reconnect and let time pass;
a plain model says where each frame must go. Properties: every frame reaches its partner
exactly once and in order (at once if the partner is live, at its hello if not), or is held,
or expired after the tombstone time, or was refused with its sender; held bytes never exceed
a bound; a sender is paused only while its partner's window is full.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

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
    out: dict[int, list[bytes]] = defaultdict(list)
    for action in actions:
        if isinstance(action, Deliver):
            out[action.cid].extend(frames_of(action.data))
    return dict(out)


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
    assert core.received(1, encode_frame(b"a" * 600), 1.0) == [Deliver(2, encode_frame(b"a" * 600))]
    actions = core.received(1, encode_frame(b"b" * 600), 1.0)
    assert actions[-1] == Pause(1) and core.is_paused(1)
    assert core.received(3, encode_frame(b"c"), 1.0)[-1] == Pause(3)
    assert core.written(2, 300) == []  # 927 queued: above half the window
    assert core.written(2, 800) == [Resume(1), Resume(3)]
    assert not core.is_paused(1) and core.stats().queued == 1240 - 1100


def test_senders_paused_on_a_reader_that_leaves_resume_and_their_frames_are_held() -> None:
    core = RelayCore(RUN, RelayLimits(window=10))
    joined(core, 1, 0, 1)
    joined(core, 2, 1, 0)
    assert core.received(1, encode_frame(b"long enough"), 1.0)[-1] == Pause(1)
    assert core.closed(2, "reset") == [Resume(1)]
    assert core.stats().queued == 0
    assert core.received(1, encode_frame(b"x"), 1.0) == []
    assert core.held_bytes(RUN, 1) == 14 + HELD_OVERHEAD


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

ME_PARTNER = {0: 1, 1: 0, 2: 3, 3: 2, 4: 4, 5: 1}  # 5 also sends to 1; 4 talks to itself
LIMITS = RelayLimits(max_frame=64, window=120, held_per_partner=400, held_per_run=700,
                     held_total=900, tombstone=600.0, hello_timeout=10.0)


class RelayMachine(RuleBasedStateMachine):
    """A client per ``<me>`` of :data:`ME_PARTNER`, and a model of where frames go."""

    def __init__(self) -> None:
        super().__init__()
        self.core = RelayCore(RUN, LIMITS)
        self.now = 0.0
        self.cids = itertools.count(1)
        self.live: dict[int, int] = {}  # me -> cid
        self.queued: dict[int, int] = {}  # cid -> bytes delivered, not yet written
        self.paused: set[int] = set()  # cids
        self.held: dict[int, list[tuple[float, bytes]]] = defaultdict(list)  # me -> frames
        self.seq = itertools.count()
        self.got: dict[int, list[bytes]] = defaultdict(list)  # cid -> frames delivered
        self.expected: dict[int, list[bytes]] = defaultdict(list)
        self.ended: set[int] = set()
        self.refused: int | None = None

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Deliver):
                assert action.cid not in self.ended
                self.got[action.cid].extend(frames_of(action.data))
                self.queued[action.cid] += len(action.data)
            elif isinstance(action, Pause):
                event("a sender paused")
                self.paused.add(action.cid)
            elif isinstance(action, Resume):
                self.paused.discard(action.cid)
            elif isinstance(action, Close):
                self.gone(action.cid)

    def gone(self, cid: int) -> None:
        self.ended.add(cid)
        self.paused.discard(cid)
        self.queued.pop(cid, None)
        for me, c in list(self.live.items()):
            if c == cid:
                del self.live[me]

    def held_cost(self, me: int) -> int:
        return sum(13 + len(f) + HELD_OVERHEAD for _, f in self.held[me])

    @rule(me=st.sampled_from(sorted(ME_PARTNER)), data=st.data())
    def connect(self, me: int, data: st.DataObject) -> None:
        cid = next(self.cids)
        self.core.connected(cid, self.now)
        duplicate = me in self.live
        actions: list[Action] = []
        for piece in data.draw(chunked(hello(me, ME_PARTNER[me]))):
            actions += self.core.received(cid, piece, self.now)
        if duplicate:
            assert list(closes(actions)) == [cid]
            assert "already connected" in closes(actions)[cid].reason
            self.apply(actions)
            return
        self.queued[cid] = 0
        self.live[me] = cid
        self.expected[cid] = [f for _, f in self.held.pop(me, [])]
        if self.expected[cid]:
            event("held frames delivered at a hello")
        self.apply(actions)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6))
    def send(self, data: st.DataObject, sizes: list[int]) -> None:
        me = data.draw(st.sampled_from(sorted(self.live)))
        cid = self.live[me]
        if cid in self.paused:
            return  # the pump reads nothing from a paused sender
        partner = ME_PARTNER[me]
        payloads = [b"%d:%d:" % (me, next(self.seq)) + b"x" * n for n in sizes]
        # The model: each frame goes to the live partner now, or is held within the bounds,
        # or ends the sender (and the frames after it are never read).
        for payload in payloads:
            frame = encode_frame(payload)
            if partner in self.live:
                self.expected[self.live[partner]].append(payload)
                continue
            cost = len(frame) + HELD_OVERHEAD
            total = sum(self.held_cost(m) for m in self.held)
            if (self.held_cost(partner) + cost > LIMITS.held_per_partner
                    or total + cost > min(LIMITS.held_per_run, LIMITS.held_total)):
                self.refused = cid
                break
            self.held[partner].append((self.now, payload))
        else:
            self.refused = None
        stream = b"".join(encode_frame(p) for p in payloads)
        actions: list[Action] = []
        for piece in data.draw(chunked(stream)):
            actions += self.core.received(cid, piece, self.now)
        assert list(closes(actions)) == ([cid] if self.refused else [])
        if self.refused:
            event("a sender over a held bound")
            assert "over the limit" in closes(actions)[cid].reason
        self.apply(actions)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), part=st.floats(0, 1))
    def drain(self, data: st.DataObject, part: float) -> None:
        cid = self.live[data.draw(st.sampled_from(sorted(self.live)))]
        n = int(self.queued[cid] * part)
        self.queued[cid] -= n
        self.apply(self.core.written(cid, n))

    @precondition(lambda self: self.live)
    @rule(data=st.data(), clean=st.booleans())
    def leave(self, data: st.DataObject, clean: bool) -> None:
        cid = self.live[data.draw(st.sampled_from(sorted(self.live)))]
        actions = self.core.received(cid, b"", self.now) if clean else self.core.closed(cid)
        self.gone(cid)
        self.apply(actions)

    @rule(dt=st.sampled_from([0.5, 10.0, 300.0, 599.0, 600.0]))
    def wait(self, dt: float) -> None:
        self.now += dt
        self.apply(self.core.tick(self.now))
        if self.core.stats().expired_frames:
            event("held frames expired")
        for me, frames in self.held.items():
            self.held[me] = [(t, f) for t, f in frames if t + LIMITS.tombstone > self.now]

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
        assert stats.held == sum(self.held_cost(m) for m in ME_PARTNER)
        assert stats.held <= min(LIMITS.held_per_run, LIMITS.held_total)
        assert stats.queued == sum(self.queued.values())

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


RelayMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40)
TestRelayMachine = RelayMachine.TestCase
