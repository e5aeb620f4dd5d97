"""The denoise job's pure parts: its plan, its config, and its states against a fake worker.

The plan is checked by property: links pair up across neighbours, the video's edges have
no side, and (item 4 of issue 18, at the Python level) a video cut into chunks, each
filtered with the halos the plan gives it, is the video filtered in one piece. The states
are driven by a fake worker that answers every command the way the real one does,
delivering its answers in any causal order hypothesis picks, with halos that arrive or
time out.
"""

from __future__ import annotations

import random
import re
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mu.apps.denoise import (
    MAX_RADIUS,
    SIDE_STEPS,
    ConfigState,
    DenoiseConfig,
    ExchangeState,
    FilterState,
    links,
    plan_chunk,
)
from mu.errors import ConfigError
from mu.states import ErrorState, MachineState, TerminalState, advance

# ------------------------------------------------------------------------------ the plan


@given(st.integers(1, 40), st.integers(0, MAX_RADIUS), st.data())
def test_links_pair_up_and_edges_have_no_side(chunks: int, radius: int, data: st.DataObject
                                              ) -> None:
    running = frozenset(data.draw(st.sets(st.integers(0, chunks - 1), min_size=1)))
    last = chunks - 1
    plans = {c: plan_chunk(c, radius, last, running) for c in range(chunks)}
    for c, plan in plans.items():
        if radius == 0:
            assert plan.sides == ()
            continue
        assert (plan.left is None) == (c == 0)
        assert (plan.right is None) == (c == last)
        for side in plan.sides:
            assert (side.me, side.partner) == links(c)[side.name]
            assert side.via_relay == (side.neighbour in running)
        # My right link's partner is my right neighbour's left link, and back.
        if plan.right is not None and c + 1 < chunks:
            other = plans[c + 1].left
            assert other is not None
            assert (plan.right.me, plan.right.partner) == (other.partner, other.me)
    # Every <me> is used by one chunk only.
    mes = [s.me for p in plans.values() for s in p.sides]
    assert len(mes) == len(set(mes))


def test_a_run_over_part_of_the_video_has_neighbours_beyond_it() -> None:
    plan = plan_chunk(3, 1, None, frozenset({2, 3}))
    assert plan.left is not None and plan.left.via_relay
    assert plan.right is not None and not plan.right.via_relay and plan.right.neighbour == 4


@pytest.mark.parametrize(("frames", "radius", "message"), [
    (2, 3, "--radius 3 is more than -f 2 frames per chunk"),
    (6, 5, "--radius 5 is outside 0..4"),
    (6, -1, "--radius -1 is outside 0..4"),
])
def test_bad_radius_is_refused_with_one_clear_line(frames: int, radius: int, message: str
                                                   ) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        DenoiseConfig(video="v", bucket="b", frames=frames, radius=radius)


@pytest.mark.parametrize("timeout", [0.0, -1.0, 901.0, float("nan"), float("inf")])
def test_bad_halo_timeout_is_refused(timeout: float) -> None:
    with pytest.raises(ConfigError, match=r"--halo-timeout .*: give more than 0 and at most 900"):
        DenoiseConfig(video="v", bucket="b", frames=4, radius=1, halo_timeout=timeout)


def test_keys() -> None:
    cfg = DenoiseConfig(video="clip", bucket="b", frames=6, radius=2)
    assert cfg.chunk_input_key(3) == "clip-y4m_06/00000003.y4m"
    assert cfg.output_key(3) == "clip-y4m_06-tf2/00000003.y4m"


@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, MAX_RADIUS), st.data())
def test_chunks_filtered_with_their_halos_are_the_video_filtered_whole(
    n: int, f: int, r: int, data: st.DataObject
) -> None:
    """Issue 18 item 4 over the planning: concatenated chunks equal the one-piece filter."""
    from mu.denoise import filter_frames, filter_video
    from mu.y4m import Video, chroma_size

    if r > f:
        with pytest.raises(ConfigError):
            DenoiseConfig(video="v", bucket="b", frames=f, radius=r)
        return
    cfg = DenoiseConfig(video="v", bucket="b", frames=f, radius=r, last_chunk=n - 1)
    chroma = data.draw(st.sampled_from(["420", "422", "444"]))
    width, height = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    video = Video(width, height, chroma=chroma)
    cw, ch = chroma_size(width, height, chroma)
    for _ in range(n * f):
        video.frames.append((rng.integers(0, 256, (height, width), dtype=np.uint8),
                             rng.integers(0, 256, (ch, cw), dtype=np.uint8),
                             rng.integers(0, 256, (ch, cw), dtype=np.uint8)))
    chunks = [video.frames[i * f:(i + 1) * f] for i in range(n)]
    out = []
    for i, frames in enumerate(chunks):
        plan = cfg.plan(i)
        prev = chunks[plan.left.neighbour][f - r:] if plan.left else None
        nxt = chunks[plan.right.neighbour][:r] if plan.right else None
        out.extend(filter_frames(frames, r, prev, nxt))
    whole = filter_video(video, r).frames
    assert len(out) == len(whole) == n * f
    for got, want in zip(out, whole, strict=True):
        for a, b in zip(got, want, strict=True):
            assert np.array_equal(a, b)


# ------------------------------------------------------------------ the states, in memory


@dataclass
class FakeWorker:
    """Answers commands as the worker does. What a command answers at once (a plain
    command's reply, a nonblocking job's ``OK:...ING``) goes out in command order; a
    nonblocking job's later messages wait in a queue of their own, released by its first
    answer, and the test delivers the released queues in any order it picks. A halo's
    ``INFO:file`` is released by its link's ``OK:LINK``: it may come before the ``recv``
    that takes it is even sent, or after."""

    lost: set[str] = field(default_factory=set)  # sides whose halo never comes
    broken_links: set[str] = field(default_factory=set)  # sides whose link cannot open
    nonblock: bool = False
    immediate: deque[str] = field(default_factory=deque)
    later: dict[str, deque[str]] = field(default_factory=dict)  # by the answer releasing it
    released: list[deque[str]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    quit: bool = False

    def take(self, command: str) -> None:
        self.commands.append(command)
        name, _, args = command.partition(":")
        link = args.split(":")[0]
        if name in ("set", "seti"):
            key, _, value = args.partition(":")
            if key == "nonblock":
                self.nonblock = value == "1"
            self.immediate.append(f"OK:{name.upper()}({key})")
        elif name == "retrieve":
            key = args.split("\0")[0] or "chunk"
            self.job(f"OK:RETRIEVING(b/{key})", [f"OK:RETRIEVE(b/{key})"])
        elif name == "run":
            self.job(f"OK:RUNNING({args})", [f"OK:RETVAL(0):OUTPUT():COMMAND({args})"])
        elif name == "link":
            if link in self.broken_links:
                self.immediate.append("FAIL(link: cannot reach the relay)")
            else:
                self.immediate.append(f"OK:LINK({link})")
                if link not in self.lost:  # the halo may arrive any time after the link opens
                    self.later[f"OK:LINK({link})"] = deque([f"INFO:file:{link}:10:ab"])
        elif name == "send":
            self.job(f"OK:SENDING({link})", [f"OK:SEND({link}:10:ab)"])
        elif name == "recv":
            self.job(f"OK:RECEIVING({link})",
                     [f"FAIL(recv {link}: no file within 30 s)"] if link in self.lost
                     else [f"OK:RECV({link}:10:ab)"])
        elif name == "upload":
            self.job("OK:UPLOADING(b/out)", ["OK:UPLOAD(b/out)"])
        elif name == "quit":
            self.quit = True
        else:
            raise AssertionError(f"unexpected command {command!r}")

    def job(self, ack: str, final: list[str]) -> None:
        if not self.nonblock:
            self.immediate.extend(final)  # blocking: done before the next command
            return
        self.immediate.append(ack)
        self.later[ack] = deque(final)

    def deliver(self, pick: random.Random) -> str:
        ready = [q for q in [self.immediate, *self.released] if q]
        assert ready, "nothing to deliver: the machine waits for nothing that will come"
        message = pick.choice(ready).popleft()
        if message in self.later:
            self.released.append(self.later.pop(message))
        return message


def drive(cfg: DenoiseConfig, chunk: int, worker: FakeWorker, pick: random.Random,
          attempt: int = 1) -> tuple[MachineState, set[str]]:
    state: MachineState = ConfigState(None, chunk, config=cfg, info={"attempt": attempt})
    names: set[str] = set()
    state, sent = advance(state, "OK:HELLO:token")
    for _ in range(1000):
        for command in sent:
            worker.take(command)
        names.update(name for _, name in state.timestamps)
        if isinstance(state, TerminalState) or worker.quit:
            return state, names
        state, sent = advance(state, worker.deliver(pick))
    raise AssertionError("the machine did not end")


@given(st.integers(0, 4), st.integers(1, 3), st.sets(st.sampled_from(["left", "right"])),
       st.sets(st.sampled_from(["left", "right"])), st.randoms(use_true_random=False),
       st.integers(1, 3))
def test_states_trade_halos_or_recover_in_any_order(
    chunk: int, radius: int, lost: set[str], broken: set[str], pick: random.Random,
    attempt: int,
) -> None:
    """Whatever the order of replies and whichever halos are lost or links broken, every
    side ends with its halo in place; a retry (attempt > 1) sends its own halos and fetches
    its neighbours' from S3 at once, never waiting on a ``recv``."""
    running = frozenset({0, 1, 2, 3})  # chunk 4 exists but does not run
    cfg = DenoiseConfig(video="v", bucket="b", frames=4, radius=radius, last_chunk=4,
                        running=running)
    worker = FakeWorker(lost=lost, broken_links=broken)
    state, names = drive(cfg, chunk, worker, pick, attempt)
    assert not isinstance(state, ErrorState), getattr(state, "message", "")
    assert worker.quit and worker.commands[-1] == "quit:"
    plan = cfg.plan(chunk)
    commands = worker.commands
    filters = [c for c in commands if c.startswith(f"run:./denoise -r {radius} ")]
    assert len(filters) == 1
    assert ("-p ##TMPDIR##/prev.y4m" in filters[0]) == (plan.left is not None)
    assert ("-n ##TMPDIR##/next.y4m" in filters[0]) == (plan.right is not None)
    assert "ExchangeState" in names and "FilterState" in names
    for side in plan.sides:
        fetched = (not side.via_relay or side.name in lost or side.name in broken
                   or attempt > 1)
        key = cfg.chunk_input_key(side.neighbour)
        assert any(c.startswith(f"retrieve:{key}\0") for c in commands) == fetched
        halo = "prev" if side.name == "left" else "next"
        cut = f"run:./denoise {side.take} {radius} -o ##TMPDIR##/{halo}.y4m "
        assert any(c.startswith(cut) for c in commands) == fetched
        if side.via_relay and side.name not in broken:
            # Its own halo goes out whatever happens to the one it waits for.
            assert f"send:{side.name}:##TMPDIR##/{'head' if side.name == 'left' else 'tail'}.y4m" \
                in commands
            assert f"link:{side.name}:{side.me}:{side.partner}" in commands
        title = side.name.title()
        assert f"{title}SideState" in names
    for name in ("left", "right"):
        if cfg.plan(chunk).side(name) is None:
            assert f"{name.title()}EdgeState" in names
            assert not any(c.startswith(f"link:{name}:") for c in commands)
    if attempt > 1:
        assert not any(c.startswith("recv:") for c in commands)
    # The upload comes after the filter, blocking.
    assert commands.index(filters[0]) < commands.index("upload:")


def test_a_failure_no_side_survives_fails_the_machine() -> None:
    cfg = DenoiseConfig(video="v", bucket="b", frames=4, radius=1, last_chunk=2)
    state: MachineState = ConfigState(None, 1, config=cfg)
    for message in ["OK:HELLO", "OK:SETI(nonblock)", "OK:SET(bucket)", "OK:SET(inkey)",
                    "OK:SET(targfile)", "OK:RETRIEVE(b/k)", "OK:RETVAL(0):OUTPUT():COMMAND(x)",
                    "OK:RETVAL(0):OUTPUT():COMMAND(x)", "OK:SET(recv_timeout)",
                    "OK:SETI(nonblock)"]:
        state, _ = advance(state, message)
    assert isinstance(state, ExchangeState)
    state, _ = advance(state, "FAIL(no such command 'link')")
    assert isinstance(state, ErrorState)
    assert "no such command 'link'" in state.message


def test_a_failing_filter_names_the_chunk_and_the_binary_output() -> None:
    cfg = DenoiseConfig(video="v", bucket="b", frames=4, radius=0, last_chunk=0)
    state: MachineState = ConfigState(None, 0, config=cfg)
    for message in ["OK:HELLO", "OK:SETI(nonblock)", "OK:SET(bucket)", "OK:SET(inkey)",
                    "OK:SET(targfile)", "OK:RETRIEVE(b/k)", "OK:SET(recv_timeout)",
                    "OK:SETI(nonblock)", "OK:SETI(nonblock)"]:
        state, _ = advance(state, message)
    assert isinstance(state, FilterState)
    state, _ = advance(state, "OK:RETVAL(1):OUTPUT(denoise: chunk.y4m: bad header):COMMAND(x)")
    assert isinstance(state, ErrorState)
    assert "denoise exited with status 1 filtering chunk 0: denoise: chunk.y4m: bad header" \
        in state.message


def test_every_side_state_is_named_for_its_side() -> None:
    names = {cls.__name__ for steps in SIDE_STEPS.values() for cls in steps.values()}
    assert {"LeftSendState", "RightAwaitState", "LeftFetchState", "RightEdgeState"} <= names
    assert all(cls.__module__ == "mu.apps.denoise"
               for steps in SIDE_STEPS.values() for cls in steps.values())
