"""Strangers holding the coordinator's port, and authenticated workers that send nonsense.

Theory of operation
-------------------
A real :class:`~mu.coordinator.Coordinator` (mutual TLS, 127.0.0.1:0) runs in a thread while
a :class:`Crowd` holds connections open on its port for the whole run, from one selector
thread: *idle* peers that never send a byte, *slow-loris* peers that send a real TLS
ClientHello one byte a second, and *stalled* peers that send a whole ClientHello and then
nothing. A peer the coordinator drops is opened again at once, so the crowd stays full.
Real worker sessions (:func:`mu.worker.session.run`, stdlib TLS, the real command table) are
started once the crowd has seen a drop of each kind (events, no sleeps); every actor must
end done, and ``statistics().drops`` must show why strangers went.

The last tests drive authenticated peers (the right token) that answer with arbitrary text
and ``INFO`` updates: the coordinator never raises, and every actor ends done, or failed
with a reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mu.apps.png2y4m import ConfigState, Png2Y4MConfig
from mu.config import RunConfig
from mu.coordinator import Coordinator, RunResult
from mu.protocol import FrameDecoder, encode_text
from mu.states import CommandListState, ForLoopState, InfoWatcherState, OnePassState, TerminalState
from mu.tls import KeySet
from mu.worker import session
from tests.worker_helpers import (
    WAIT,
    ScriptedCoordinator,
    event_for,
    read_command,
    server_context,
)


class Done(TerminalState):
    pass


class Job(CommandListState):
    """Served by the real worker command table: nothing outside the worker is needed."""

    commandlist = ["set:a:1", "echo:hostile", ("OK:ECHO", "quit:")]
    nextState = Done


def client_hello() -> bytes:
    """A real TLS ClientHello, as a scanner or a worker would send it first."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


class Crowd:
    """Hold ``idle``, ``slow`` and ``stalled`` connections on ``address`` until closed.

    ``dropped[kind]`` is set once the coordinator has closed a peer of that kind.
    """

    KINDS = ("idle", "slow", "stalled")

    def __init__(self, address: tuple[str, int], *, idle: int, slow: int = 0,
                 stalled: int = 0, reopen: bool = True) -> None:
        self.address = address
        self.reopen = reopen
        self.hello = client_hello()
        self.counts = {"idle": idle, "slow": slow, "stalled": stalled}
        self.dropped = {kind: threading.Event() for kind in self.KINDS}
        self.opened = threading.Event()
        self.drops = 0
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._sent: dict[socket.socket, int] = {}  # slow peers: bytes of the hello sent
        self._thread = threading.Thread(target=self._main, name="crowd", daemon=True)

    def __enter__(self) -> Crowd:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive()
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()

    def _open(self, kind: str) -> None:
        sock = socket.create_connection(self.address, timeout=WAIT)
        if kind == "stalled":
            sock.sendall(self.hello)
        sock.setblocking(False)
        self._sent[sock] = 0
        self._sel.register(sock, selectors.EVENT_READ, kind)

    def _main(self) -> None:
        for kind, count in self.counts.items():
            for _ in range(count):
                self._open(kind)
        self.opened.set()
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=1.0):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    continue  # a ServerHello for a stalled peer: ignore it
                self._sel.unregister(sock)
                self._sent.pop(sock, None)
                sock.close()
                self.drops += 1
                self.dropped[key.data].set()
                if self.reopen and not self._stop.is_set():
                    with contextlib.suppress(OSError):  # the run may be over: no listener
                        self._open(key.data)
            for key in list(self._sel.get_map().values()):  # slow-loris: one byte a second
                if key.data == "slow":
                    sock = key.fileobj  # type: ignore[assignment]
                    sent = self._sent[sock]
                    with contextlib.suppress(OSError):
                        self._sent[sock] += sock.send(self.hello[sent:sent + 1])

    def wait_dropped(self, *kinds: str) -> None:
        for kind in kinds:
            assert self.dropped[kind].wait(WAIT * 3), f"no {kind} peer was dropped"


@contextlib.contextmanager
def running(coord: Coordinator) -> Iterator[dict[str, Any]]:
    out: dict[str, Any] = {}

    def main() -> None:
        try:
            out["result"] = coord.run()
        except BaseException as exc:
            out["error"] = exc

    coord.bind()
    thread = threading.Thread(target=main, name="coordinator", daemon=True)
    thread.start()
    try:
        yield out
    finally:
        thread.join(WAIT * 6)
        if thread.is_alive():
            coord.stop()
            thread.join(WAIT)
            pytest.fail(f"the coordinator did not finish: {coord.statistics()}")
    if "error" in out:
        raise out["error"]


def real_workers(coord: Coordinator, n: int) -> tuple[list[threading.Thread], list[Any]]:
    event = json.loads(coord.payload_json())
    summaries: list[Any] = []

    def work() -> None:
        summaries.append(session.run(event))

    threads = [threading.Thread(target=work, name=f"worker-{i}") for i in range(n)]
    for thread in threads:
        thread.start()
    return threads, summaries


def assert_all_done(result: RunResult, n: int, summaries: list[Any]) -> None:
    assert [a.actor for a in result.final] == list(range(n))
    assert all(a.ok for a in result.final), result.failed
    assert sorted(s["exit"] for s in summaries) == ["quit"] * n, summaries


def test_idle_slow_loris_and_stalled_peers_cannot_stall_a_run(keys: KeySet) -> None:
    n = 10
    config = RunConfig(num_actors=n, port=0, run_deadline=WAIT * 5, client_hello_timeout=0.5,
                       handshake_timeout=1.5, hello_timeout=WAIT)
    coord = Coordinator(Job, None, config, keys)
    with running(coord) as out, Crowd(coord.address, idle=300, slow=30, stalled=10) as crowd:
        crowd.wait_dropped("idle", "slow", "stalled")
        threads, summaries = real_workers(coord, n)
        for thread in threads:
            thread.join(WAIT * 3)
    assert_all_done(out["result"], n, summaries)
    drops = coord.statistics().drops
    assert drops["no_client_hello"] >= 1 and drops["handshake_timeout"] >= 1, drops
    assert out["result"].rejected >= sum(drops.values())


def test_a_crowd_beyond_the_bound_is_evicted_oldest_first_and_workers_get_in(
    keys: KeySet,
) -> None:
    """200 idle strangers from 127.0.0.1, room for 32 from one address: the oldest go, the
    workers (also from 127.0.0.1) get in, and a worker dropped meanwhile dials again."""
    n = 10
    config = RunConfig(num_actors=n, port=0, run_deadline=WAIT * 5, max_unauthenticated=64,
                       max_unauthenticated_per_address=32, handshake_timeout=WAIT,
                       client_hello_timeout=WAIT, hello_timeout=WAIT)
    coord = Coordinator(Job, None, config, keys)
    with running(coord) as out, Crowd(coord.address, idle=200, reopen=False) as crowd:
        crowd.opened.wait(WAIT)
        crowd.wait_dropped("idle")
        threads, summaries = real_workers(coord, n)
        for thread in threads:
            thread.join(WAIT * 3)
    assert_all_done(out["result"], n, summaries)
    assert coord.statistics().drops["evicted"] >= 200 - 32


def test_a_worker_dialing_again_after_its_connection_was_dropped(keys: KeySet) -> None:
    """Dropped mid-handshake twice (a reset, then an EOF), the worker connects a third time
    and serves the run: connecting is retried within the worker's own budget."""
    with ScriptedCoordinator(server_context(keys)) as scripted:
        event = event_for(keys, scripted.port)
        summary: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: summary.update(session.run(event)))
        worker.start()
        try:
            for drain in (False, True):  # unread bytes left: a reset; all read: an EOF
                raw, _ = scripted.listener.accept()
                with raw:
                    raw.settimeout(WAIT)
                    assert raw.recv(5)[:1] == b"\x16"  # a TLS handshake record
                    if drain:
                        raw.setblocking(False)
                        with contextlib.suppress(BlockingIOError):
                            while raw.recv(65536):
                                pass
            conn = scripted.accept()
            assert conn.recv() == f"OK:HELLO:{event['token']}"
            conn.send("quit:")
        finally:
            worker.join(WAIT)
    assert summary["exit"] == "quit", summary


# ------------------------------------------------------- authenticated but hostile peers


class Answer(OnePassState):
    expect = "OK:ECHO"
    nextState = Done


class Watch(InfoWatcherState):
    kickKey = "go"
    kickState = Answer
    kickCommand = "echo:kicked"


class Body(OnePassState):
    expect = "OK:SET"
    command = "set:x:1"


class Loop(ForLoopState):
    iterKey = "frame"
    iterFin = 2
    loopState = Body
    exitState = Watch


Body.nextState = Loop


class Start(CommandListState):
    commandlist = [("OK:HELLO", "set:x:0")]
    nextState = Loop


@st.composite
def worker_message(draw: st.DrawFn) -> str:
    head = draw(st.sampled_from(
        ["OK:SET(x)", "OK:SETI(x)", "OK:ECHO(x)", "OK:RETRIEVE(b/k)", "OK:RETVAL(0)", "OK",
         "FAIL(no)", "INFO:frame:", "INFO:go:", "INFO:i:", "INFO:", ""]
    ))
    return head + draw(st.text(max_size=6))


def hostile_worker(coord: Coordinator, messages: list[str]) -> None:
    """Say a right hello, send ``messages`` whatever the coordinator asks, half-close, and
    read until the coordinator closes."""
    with socket.create_connection(coord.address, timeout=WAIT) as sock:
        stream = [f"OK:HELLO:{coord.token}", *messages]
        sock.sendall(b"".join(encode_text(m) for m in stream))
        sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(65536):
                pass


@given(
    st.sampled_from(["loop", "png2y4m"]),
    st.lists(st.lists(worker_message(), max_size=12), min_size=1, max_size=4),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_authenticated_peers_sending_anything_fail_at_most_their_own_actor(
    job: str, scripts: list[list[str]]
) -> None:
    n = len(scripts)
    first, job_config = (
        (Start, None) if job == "loop" else (ConfigState, Png2Y4MConfig(frames=2))
    )
    config = RunConfig(num_actors=n, port=0, tls=False, run_deadline=WAIT * 3,
                       hello_timeout=WAIT)
    coord = Coordinator(first, job_config, config)
    with running(coord) as out:
        threads = [threading.Thread(target=hostile_worker, args=(coord, s)) for s in scripts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
    result: RunResult = out["result"]
    assert [a.actor for a in result.final] == list(range(n))
    for actor in result.final:
        assert actor.ok or actor.error, actor
        assert "run deadline" not in (actor.error or "")


def test_a_worker_sending_a_frame_counter_fails_only_its_own_actor() -> None:
    """The issue's case, with one good worker beside: ``INFO:frame:x`` mid-loop."""
    config = RunConfig(num_actors=2, port=0, tls=False, run_deadline=WAIT * 3)
    coord = Coordinator(Start, None, config)
    good = ["OK:SET(0)", "OK:SET(1)", "INFO:go:1", "OK:ECHO(kicked)"]
    bad = ["OK:SET(0)", "INFO:frame:x", "OK:SET(1)"]
    with running(coord) as out:
        hostile_worker(coord, good)
        hostile_worker(coord, bad)
    result: RunResult = out["result"]
    assert [a.ok for a in result.final] == [True, False]
    assert result.final[1].error == (
        "Body: the worker's 'INFO:frame:x' would overwrite info['frame'], which the job's "
        "states own"
    )


# --------------------------------------------------------- out of file descriptors


@contextlib.contextmanager
def descriptors_left(count: int) -> Iterator[list[int]]:
    """Lower this process's soft RLIMIT_NOFILE to what is open now plus ``count``, and fill
    every other free slot below it; yields the filler descriptors (close some to free them).
    The limit is restored and the fillers closed on exit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    opened = [int(name) for name in os.listdir("/proc/self/fd")]
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(opened) + 1 + count, hard))
    try:
        with contextlib.suppress(OSError):
            while True:
                fillers.append(os.dup(0 if 0 in opened else opened[0]))
        for fd in fillers[len(fillers) - count:]:
            os.close(fd)
        del fillers[len(fillers) - count:]
        yield fillers
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_out_of_descriptors_the_oldest_stranger_makes_room_for_a_worker(keys: KeySet) -> None:
    config = RunConfig(num_actors=1, port=0, run_deadline=WAIT * 3, handshake_timeout=WAIT,
                       client_hello_timeout=WAIT, hello_timeout=WAIT)
    coord = Coordinator(Job, None, config, keys)
    coord.bind()
    strangers = [socket.create_connection(coord.address, timeout=WAIT) for _ in range(20)]
    worker = socket.socket()  # made now: there will be no descriptor for it later
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=keys.ca_cert)
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = os.path.join(tmp, "w.crt"), os.path.join(tmp, "w.key")
        Path(cert).write_text(keys.worker_cert)
        Path(key).write_text(keys.worker_key)
        ctx.load_cert_chain(cert, key)
    try:
        with descriptors_left(6), running(coord) as out:
            worker.settimeout(WAIT)
            worker.connect(coord.address)  # its accept() fails until a stranger is dropped
            with ctx.wrap_socket(worker) as tls:
                answer = {"set": "OK:SET(a)", "echo": "OK:ECHO(hostile)"}
                tls.sendall(encode_text(f"OK:HELLO:{coord.token}"))
                decoder = FrameDecoder()
                while (command := read_command(tls, decoder)) not in (None, "quit:"):
                    tls.sendall(encode_text(answer[str(command).partition(":")[0]]))
    finally:
        for sock in strangers:
            sock.close()
    assert [a.ok for a in out["result"].final] == [True]
    drops = coord.statistics().drops
    assert drops["accept_errors"] >= 1 and drops["evicted"] >= 1, drops


def test_out_of_descriptors_with_no_stranger_to_drop_the_listener_rests(keys: KeySet) -> None:
    """accept() fails (EMFILE) with nothing to drop: the listener leaves the selector for a
    moment instead of being reported ready again at once (a busy loop)."""
    errors = threading.Event()

    def status(stats: Any) -> None:
        if stats.drops.get("accept_errors", 0) >= 2:
            errors.set()

    config = RunConfig(num_actors=1, port=0, run_deadline=WAIT * 3, client_hello_timeout=0.2)
    coord = Coordinator(Job, None, config, keys, status=status)
    coord.bind()
    stranger = socket.socket()
    stranger.settimeout(WAIT)
    with running(coord):
        with descriptors_left(0) as fillers:
            stranger.connect(coord.address)
            assert errors.wait(WAIT), coord.statistics()
            rested = coord.statistics().drops["accept_errors"]
            os.close(fillers.pop())  # room again: it is accepted, then dropped as idle
        with stranger:
            assert stranger.recv(1) == b""
        coord.stop()
    assert rested < 1000, rested  # a busy loop fails accept() hundreds of thousands of times
    assert coord.statistics().drops["no_client_hello"] == 1
