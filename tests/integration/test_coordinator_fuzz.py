"""10,000 hostile connections against a live coordinator: it never crashes, each bad peer
ends only its own connection, and the good workers running beside them all finish.

Theory of operation
-------------------
Each test starts one real :class:`~mu.coordinator.Coordinator` on 127.0.0.1 in a thread (with
a run deadline, so a broken loop fails the test instead of hanging it) and drives hypothesis
examples at it, one connection per example. Three kinds of peer share the run:

* **Bad peers** (the examples): random bytes, headers that are not 12 digits and a space
  (including look-alikes that a lenient ``int()`` would accept, in front of a hello with the
  right token), lengths above ``max_frame``, frames cut off by EOF, valid frames of garbage,
  wrong tokens, misframed hellos, and workers that say a valid hello and then answer with
  nonsense, out of order, or after a few right answers. Every stream is sent in a random
  chunking, then the peer half-closes and reads until the coordinator closes.
* **Good workers** answer every command right. A *feeder* thread starts one every few
  dozen (TLS) or few hundred (plain TCP) examples while the fuzz runs, so good and bad
  traffic interleave. The *sentinel* is a good worker that holds its last answer until the
  fuzz is over, so the run cannot end early.
* **Probes**: after each example an empty connection (connect, half-close) must be
  accepted and closed, which shows the loop is still serving.

A bad peer with the right token is a worker, so it takes an actor and fails it. The run
allows many retries and the fake launcher hands every retry to the feeder, so a good worker
comes back for that actor later, unless the bad peer's answer was a refusal no retry can
change (``mu.retry``). At the end every actor's last attempt must have succeeded or be such
a refusal, every failed attempt must belong to a bad peer, and the coordinator must have counted as
rejected exactly the connections that could not be workers (the examples whose stream does
not begin with the right hello frame, and the probes).

Nothing here waits by sleeping: peers block on their sockets with a bounded timeout, and the
threads meet on events and conditions.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import random
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mu.config import RunConfig
from mu.coordinator import Coordinator, RunResult
from mu.launch import LaunchReport, LaunchSpec
from mu.protocol import FrameDecoder, decode_text, encode_frame, encode_text
from mu.states import CommandListState, TerminalState
from mu.tls import KeySet
from tests.strategies import chunked
from tests.worker_helpers import WAIT, FakeBackend, accepted, converse, read_command

MAX_FRAME = 4096
"""The coordinator's ``max_frame`` here: small, so lengths on both sides of it are cheap."""

RUN_DEADLINE = 600.0
"""The run ends by then whatever happens (never reached when things work)."""

# Examples per phase: 9,500 against plain TCP and 500 against mutual TLS.
PLAIN_AFTER_HELLO = 4500
PLAIN_BEFORE_HELLO = 4800
PLAIN_SURPLUS = 200
TLS_AFTER_HANDSHAKE = 300
TLS_PLAIN_TCP = 200


class Done(TerminalState):
    pass


class FuzzJob(CommandListState):
    commandlist = ["set:a:1", "echo:fuzz", "run:true", ("OK:RETVAL(0)", "quit:")]
    nextState = Done


CONVERSATION = ["set:a:1", "echo:fuzz", "run:true", "quit:"]
"""Every command a worker of :class:`FuzzJob` receives, in order."""

ANSWERS = {
    "set:a:1": "OK:SET(a)",
    "echo:fuzz": "OK:ECHO(fuzz)",
    "run:true": "OK:RETVAL(0):OUTPUT():COMMAND(true)",
}

# The peer went away or was dropped: what the coordinator closing on us looks like.
_DROPPED = {errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN}


@contextmanager
def dropped_is_fine() -> Iterator[None]:
    """Treat the coordinator closing (or resetting) the connection as the expected outcome.

    A timeout is not suppressed: it means the coordinator kept a connection it should have
    closed.
    """
    try:
        yield
    except ssl.SSLError:
        pass  # the coordinator's close arrived in the middle of a TLS record
    except OSError as exc:
        if isinstance(exc, TimeoutError) or exc.errno not in _DROPPED:
            raise


# ------------------------------------------------------------------------ peers


def client_context(keys: KeySet) -> ssl.SSLContext:
    """A stdlib TLS client context with the worker identity of ``keys``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=keys.ca_cert)
    with tempfile.TemporaryDirectory() as tmp:
        keys.write(tmp)
        ctx.load_cert_chain(str(Path(tmp, "worker_cert.pem")), str(Path(tmp, "worker_key.pem")))
    return ctx


def good_worker(
    addr: tuple[str, int], token: str, ctx: ssl.SSLContext | None, hold: threading.Event | None
) -> tuple[str, list[str]]:
    """Say hello and answer every command right (an unknown one is a KeyError); return
    ``(peer name, commands seen)``.

    With ``hold`` the answer to ``run:true`` waits until it is set.
    """

    def reply(command: str) -> str:
        if command == "run:true" and hold is not None:
            assert hold.wait(RUN_DEADLINE), "the fuzz never released the sentinel"
        return ANSWERS[command]

    return converse(addr, token, ctx, WAIT, reply)


# ------------------------------------------------------------------------ the live run


class FuzzLauncher(FakeBackend):
    """A fake backend: every invocation it is asked for becomes a good worker for the feeder
    (the run's good workers are joined by LiveRun)."""

    name = "fuzz"

    def __init__(self, add: Callable[[int], None]) -> None:
        self.add = add

    def launch(self, spec: LaunchSpec) -> LaunchReport:
        self.add(spec.count)
        return accepted(spec.count)


class LiveRun:
    """One coordinator in a thread, its sentinel, its feeder of good workers, and the books.

    Args:
        actors: the run's actor count.
        keys: TLS keys, or None for a plain-TCP coordinator.
        every: the feeder starts one good worker per this many examples.
    """

    def __init__(self, actors: int, keys: KeySet | None, every: int) -> None:
        self.actors = actors
        self.every = every
        self.ctx = client_context(keys) if keys is not None else None
        self.coord = Coordinator(
            FuzzJob,
            None,
            RunConfig(
                num_actors=actors, port=0, tls=keys is not None, max_frame=MAX_FRAME,
                retries=1_000_000, run_deadline=RUN_DEADLINE, arrival_timeout=RUN_DEADLINE,
                handshake_timeout=120.0, hello_timeout=120.0,
            ),
            keys,
            launcher=FuzzLauncher(self._add_pending),
        )
        self.addr = self.coord.bind()
        self.token = self.coord.token
        self.hello = encode_text(f"OK:HELLO:{self.token}")
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self.examples = 0
        self.expected_rejections = 0
        self.bad_peers: set[str] = set()  # every bad peer that said a valid hello
        self.good: list[tuple[str, list[str]]] = []  # (peer, commands seen) per good worker
        self.fed_work = 0  # good workers started by the feeder during the fuzz that got work
        self.good_errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._pending = 0  # invocations the coordinator asked for, not yet started
        self._credits = 0  # good workers the fuzz's progress allows to start now
        self._closed = False
        self._hold = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loop = threading.Thread(target=self._run, name="coordinator", daemon=True)
        self._feeder = threading.Thread(target=self._feed, name="feeder", daemon=True)

    # -- threads ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.result = self.coord.run()
        except BaseException as exc:  # reported by alive() and finish()
            self.error = exc

    def _good(
        self, hold: threading.Event | None = None, fed: bool = False
    ) -> tuple[str, list[str]] | None:
        try:
            outcome = good_worker(self.addr, self.token, self.ctx, hold)
        except BaseException as exc:  # reported by finish()
            with self._lock:
                self.good_errors.append(exc)
            return None
        with self._lock:
            self.good.append(outcome)
            self.fed_work += fed and outcome[1] == CONVERSATION
        return outcome

    def _start_good(self, hold: threading.Event | None = None, fed: bool = False) -> None:
        thread = threading.Thread(target=self._good, args=(hold, fed), name="good", daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _add_pending(self, count: int) -> None:
        with self._cond:
            self._pending += count
            self._cond.notify()

    def _feed(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or (self._credits and self._pending))
                if self._closed:
                    return
                self._credits -= 1
                self._pending -= 1
            self._start_good(fed=True)

    def _stop_feeding(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._feeder.join(WAIT)

    def __enter__(self) -> LiveRun:
        self._loop.start()
        self._feeder.start()
        self._start_good(self._hold)  # the sentinel: takes the first actor and holds it
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Never leave anything running behind the test, whatever happened.
        self._hold.set()
        self._stop_feeding()
        if self._loop.is_alive():
            self.coord.stop()
            self._loop.join(WAIT)
        for thread in list(self._threads):
            thread.join(WAIT)

    # -- what the examples call -------------------------------------------------------------

    def alive(self) -> None:
        """Assert the coordinator loop still runs."""
        assert self.error is None, f"the coordinator crashed: {self.error!r}"
        assert self._loop.is_alive(), f"the coordinator loop ended: {self.result}"

    def count(self, *, rejected: bool, peer: str | None = None) -> None:
        """Book one finished example; let the feeder start a good worker every so often."""
        self.examples += 1
        self.expected_rejections += rejected
        if peer is not None:
            self.bad_peers.add(peer)
        if self.examples % self.every == 0:
            with self._cond:
                self._credits += 1
                self._cond.notify()

    def probe(self) -> None:
        """An empty connection must be accepted and closed: the loop is still serving."""
        sock = socket.create_connection(self.addr, timeout=WAIT)
        with sock, dropped_is_fine():
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        self.expected_rejections += 1
        self.alive()

    # -- the end ----------------------------------------------------------------------------

    def drain(self) -> None:
        """Stop the feeder, then start good workers one by one until one finds no work left.

        Every later hello is a surplus worker's: it is told ``quit:``.
        """
        self._stop_feeding()
        for _ in range(self.actors + 1):
            outcome = self._good()
            assert outcome is not None, self.good_errors
            if outcome[1] == ["quit:"]:
                return
        raise AssertionError(f"good workers kept getting work: {self.coord.statistics()}")

    def finish(self) -> RunResult:
        """Release the sentinel, wait for the run to end, and return its result."""
        self._stop_feeding()
        self._hold.set()
        self._loop.join(RUN_DEADLINE)
        assert not self._loop.is_alive(), "the run did not end after the fuzz"
        for thread in list(self._threads):
            thread.join(WAIT)
            assert not thread.is_alive(), "a good worker did not end"
        assert self.error is None, f"the coordinator crashed: {self.error!r}"
        assert not self.good_errors, self.good_errors
        assert self.result is not None
        return self.result


def assert_good_run(run: LiveRun, result: RunResult, *, interleaved: bool = True) -> None:
    """Every actor done, only bad peers failed, good workers saw the whole job or a quit."""
    final = result.final
    assert [a.actor for a in final] == list(range(run.actors))
    for last in final:
        # A bad peer with the run's token is a worker: a FAIL(...) of its own that no retry
        # can change (mu cannot tell it from a real one) ends its actor, saying why.
        assert last.ok or (last.peer in run.bad_peers
                           and last.retry.startswith("not retried: ")), last
    assert result.exit_status == (0 if all(a.ok for a in final) else 1)
    for attempt in result.actors:
        if not attempt.ok:
            assert attempt.peer in run.bad_peers, attempt
    if interleaved:
        assert run.fed_work > 0, "no good worker got work while the fuzz ran"
    done_by = {a.peer for a in result.actors if a.ok}
    for peer, seen in run.good:
        assert seen in (CONVERSATION, ["quit:"]), (peer, seen)
        if seen == CONVERSATION:
            assert peer in done_by, peer
    # Rejected: every connection that could not be a worker, and none that was one.
    assert result.rejected == run.expected_rejections, (result.rejected, run.expected_rejections)


# ------------------------------------------------------------------------ strategies


# Strategies are built once (cached) rather than inside each draw: building and validating a
# one_of tree per example costs more than the example's connection.


@functools.cache
def blob(max_size: int) -> st.SearchStrategy[bytes]:
    """Random bytes: short ones drawn directly, long ones from a drawn seed (cheap to draw)."""
    seeded = st.builds(
        lambda seed, n: random.Random(seed).randbytes(n),
        st.integers(0, 2**32 - 1),
        st.integers(0, max_size),
    )
    return st.binary(max_size=48) | seeded


def header(n: int) -> bytes:
    return b"%012d " % n


@st.composite
def non_digit_header(draw: st.DrawFn) -> bytes:
    digits = bytearray(b"%012d" % draw(st.integers(0, MAX_FRAME)))
    for i in draw(st.sets(st.integers(0, 11), min_size=1, max_size=4)):
        digits[i] = draw(st.integers(0, 255).filter(lambda b: not 0x30 <= b <= 0x39))
    return bytes(digits) + draw(st.sampled_from([b" ", b""])) + draw(blob(200))


def lookalike_headers(payload: bytes) -> list[bytes]:
    """Headers for ``payload`` that are not 12 digits and a space, but that a lenient parser
    (``int()``, ``strip()``, any digit count) would take for its length."""
    n = len(payload)
    exact = b"%012d" % n
    return [
        b"+%011d " % n,
        b"%12d " % n,
        b"%-12d " % n,
        exact[:4] + b"_" + exact[5:] + b" ",
        b"0x%010x " % n,
        b"%013d " % n,
        b"%011d  " % n,
        b"%d " % n,
        exact + b"\t",
        exact + b"\n",
        exact + b"\x00",
        b" " + exact,
    ]


@st.composite
def lookalike_hello(draw: st.DrawFn, token: str) -> bytes:
    payload = f"OK:HELLO:{token}".encode()
    return draw(st.sampled_from(lookalike_headers(payload))) + payload


@st.composite
def missing_space(draw: st.DrawFn) -> bytes:
    sep = draw(st.integers(0, 255).filter(lambda b: b != 0x20))
    return b"%012d" % draw(st.integers(0, MAX_FRAME)) + bytes([sep]) + draw(blob(200))


@st.composite
def oversized(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(MAX_FRAME + 1, MAX_FRAME + 2) | st.integers(MAX_FRAME + 1, 10**12 - 1))
    return header(n) + draw(blob(300))


@st.composite
def cut_off(draw: st.DrawFn, token: str) -> bytes:
    """A stream that ends inside a frame (or inside its header)."""
    kind = draw(st.sampled_from(["payload", "header", "hello"]))
    if kind == "hello":
        whole = encode_text(f"OK:HELLO:{token}")
        return whole[: draw(st.integers(1, len(whole) - 1))]
    if kind == "header":
        return (b"%012d" % draw(st.integers(0, MAX_FRAME)))[: draw(st.integers(1, 12))]
    n = draw(st.integers(1, 64) | st.integers(1, MAX_FRAME))
    have = draw(st.integers(0, n - 1))
    return header(n) + random.Random(draw(st.integers(0, 2**32 - 1))).randbytes(have)


JUNK_TEXTS = [
    b"", b"OK", b"OK:HELLO", b"OK:HELLO:", b"OK:HELL", b"FAIL(x)", b"INFO:k:v", b"OK:SET(a)",
    b"quit:", b"OK:RETVAL(0):OUTPUT():COMMAND(true)", b"\xff\xfe", b"\x00" * 13,
]


def junk_payload() -> st.SearchStrategy[bytes]:
    return (
        blob(600)
        | st.sampled_from(JUNK_TEXTS)
        | st.text(max_size=60).map(lambda s: s.encode("utf-8", "surrogatepass"))
        | st.integers(0, 2**32 - 1).map(lambda seed: random.Random(seed).randbytes(MAX_FRAME))
    )


@st.composite
def garbage_frames(draw: st.DrawFn, token: str) -> bytes:
    """Well-framed garbage first; maybe the right hello after it, too late."""
    frames = [encode_frame(p) for p in draw(st.lists(junk_payload(), min_size=1, max_size=4))]
    if draw(st.booleans()):
        frames.append(encode_text(f"OK:HELLO:{token}"))
    return b"".join(frames)


@st.composite
def wrong_token(draw: st.DrawFn, token: str) -> bytes:
    raw = token.encode()
    k = draw(st.integers(0, len(raw) - 1))
    other = draw(st.text(min_size=1, max_size=40).filter(lambda t: t != token))
    payload = draw(st.sampled_from([
        b"OK:HELLO:" + other.encode("utf-8", "surrogatepass"),
        b"OK:HELLO:" + raw[:k],
        b"OK:HELLO:" + raw[:k] + bytes([raw[k] ^ 1]) + raw[k + 1 :],
        b"OK:HELLO:" + raw[:k] + b"\xff" + raw[k:],
        b"OK:HELLO:" + raw + draw(st.binary(min_size=1, max_size=8)),
        b"OK:HELLO:" + raw + b":" + raw,
        b"OK:HELLO:" + raw[::-1],
        b"OK:HELLO:" + raw.swapcase(),
        b"OK:HELLO::" + raw,
        b"OK:HELLO :" + raw,
        b"ok:hello:" + raw,
        b"OK:HELO:" + raw,
        b" OK:HELLO:" + raw,
        b"OKHELLO:" + raw,
        b"INFO:HELLO:" + raw,
        b"FAIL(OK:HELLO:" + raw + b")",
    ]))
    assert payload != f"OK:HELLO:{token}".encode()
    rest = draw(st.sampled_from([b"", encode_text(f"OK:HELLO:{token}")]) | blob(100))
    return encode_frame(payload) + rest


@st.composite
def misframed_hello(draw: st.DrawFn, token: str) -> bytes:
    """The right hello under a header a few bytes short or long: boundaries in the wrong place."""
    payload = f"OK:HELLO:{token}".encode()
    delta = draw(st.integers(-len(payload), -1) | st.integers(1, 40))
    return header(len(payload) + delta) + payload + draw(blob(80))


@functools.cache
def non_worker_stream(token: str) -> st.SearchStrategy[bytes]:
    """Streams that never begin with the right hello frame: the coordinator must reject them."""
    return st.one_of(
        blob(3000),
        non_digit_header(),
        lookalike_hello(token),
        missing_space(),
        oversized(),
        cut_off(token),
        garbage_frames(token),
        wrong_token(token),
        misframed_hello(token),
    )


@functools.cache
def nonsense_piece(token: str) -> st.SearchStrategy[bytes]:
    """What a worker that said hello sends next: wrong, early, late or broken answers."""
    replies = [*ANSWERS.values(), "OK", "OK:R", "OK:SET(b)", "OK:ECHO(other)",
               "OK:RETVAL(1):OUTPUT(boom):COMMAND(true)", "FAIL(disk full)", "FAIL(", "INFO:k:v",
               "INFO:", "INFO", f"OK:HELLO:{token}", "", "quit:", "OK:GET(1)"]
    return st.one_of(
        st.sampled_from(replies).map(encode_text),
        st.text(max_size=60).map(encode_text),
        blob(300).map(encode_frame),
        blob(200),
        non_digit_header(),
        oversized(),
        cut_off(token),
    )


@functools.cache
def nonsense(token: str) -> st.SearchStrategy[bytes]:
    return st.lists(nonsense_piece(token), max_size=6).map(b"".join)


@dataclass(frozen=True)
class Case:
    """One bad peer: answer the first ``answer`` commands right, then send ``chunks``."""

    chunks: list[bytes]
    answer: int
    worker: bool  # the stream begins with the right hello: the coordinator must take it
    raw: bool = False  # TLS only: write the chunks under the TLS layer, not through it


@st.composite
def non_worker_case(draw: st.DrawFn, token: str) -> Case:
    stream = draw(non_worker_stream(token))
    assert not stream.startswith(encode_text(f"OK:HELLO:{token}"))
    return Case(draw(chunked(stream)), 0, False)


@st.composite
def worker_case(draw: st.DrawFn, token: str, *, interactive: bool = True) -> Case:
    # Never all three answers right: a peer that did would finish the actor (that is fine,
    # but it would leave the fuzz no actors to fail and the good workers no work).
    answer = draw(st.integers(0, 2)) if interactive else 0
    tail = draw(nonsense(token))
    # Answering interactively, the peer sends the hello on its own first.
    stream = tail if answer else encode_text(f"OK:HELLO:{token}") + tail
    return Case(draw(chunked(stream)), answer, True)


def fuzz(examples: int) -> settings:
    """Hypothesis settings for ``examples`` connections (no deadline: nothing here is timed)."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much, HealthCheck.large_base_example],
    )


# ------------------------------------------------------------------------ plain TCP


def attack(run: LiveRun, case: Case) -> list[str]:
    """Play ``case`` over a new plain-TCP connection; return the commands it received.

    Raises:
        AssertionError: the coordinator did not close the connection within the wait.
    """
    sock = socket.create_connection(run.addr, timeout=WAIT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    host, port = sock.getsockname()[:2]
    peer = f"{host}:{port}"
    decoder = FrameDecoder()
    seen: list[str] = []
    try:
        with sock:
            # Each step on its own: once the coordinator has dropped us, a send fails, yet
            # what it sent before (a ``quit:``) still waits to be read.
            with dropped_is_fine():
                if case.answer:
                    sock.sendall(run.hello)
                    for _ in range(case.answer):
                        command = read_command(sock, decoder)
                        if command is None:
                            break
                        seen.append(command)
                        if command == "quit:":
                            break
                        sock.sendall(encode_text(ANSWERS[command]))
                for chunk in case.chunks:
                    sock.sendall(chunk)
            with dropped_is_fine():
                sock.shutdown(socket.SHUT_WR)
            with dropped_is_fine():
                while data := sock.recv(65536):
                    decoder.receive_data(data)
    except TimeoutError:
        raise AssertionError(
            f"the coordinator kept {peer} open for {WAIT} s: {run.coord.statistics()}"
        ) from None
    run.count(rejected=not case.worker, peer=peer if case.worker else None)
    # Whole frames only: a reset may have cut the last one.
    while isinstance(frame := decoder.next_frame(), bytes):
        seen.append(decode_text(frame))
    return seen


def test_plain_coordinator_survives_the_fuzz() -> None:
    with LiveRun(actors=30, keys=None, every=320) as run:

        @fuzz(PLAIN_AFTER_HELLO)
        @given(case=worker_case(run.token))
        def after_hello(case: Case) -> None:
            seen = attack(run, case)
            # Either it took an actor (and got that actor's commands, in order) or it was
            # told to quit because no work was left.
            assert seen == CONVERSATION[: len(seen)] or seen == ["quit:"], seen
            run.probe()

        @fuzz(PLAIN_BEFORE_HELLO)
        @given(case=non_worker_case(run.token))
        def before_hello(case: Case) -> None:
            assert attack(run, case) == []  # not a worker: never sent a command
            run.probe()

        @fuzz(PLAIN_SURPLUS)
        @given(case=worker_case(run.token))
        def surplus(case: Case) -> None:
            seen = attack(run, case)
            assert seen == ["quit:"], seen  # no work left: told to quit, nothing else
            run.probe()

        after_hello()
        before_hello()
        run.drain()
        surplus()
        result = run.finish()
    assert_good_run(run, result)


# ------------------------------------------------------------------------ mutual TLS


def client_hello(ctx: ssl.SSLContext) -> bytes:
    """The first flight of a real TLS client with ``ctx``: material for mutations."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_side=False)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16", hello[:16]
    return hello


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bytes flipped, then maybe cut short."""
    buf = bytearray(data)
    for i in draw(st.sets(st.integers(0, len(buf) - 1), min_size=1, max_size=6)):
        buf[i] ^= draw(st.integers(1, 255))
    return bytes(buf[: draw(st.integers(0, len(buf)))])


@st.composite
def tls_case(draw: st.DrawFn, token: str) -> Case:
    """Bytes after a good handshake: through TLS (maybe a worker), or raw under it (never)."""
    raw = draw(st.booleans())
    case = draw(non_worker_case(token) | worker_case(token, interactive=False))
    return Case(case.chunks, 0, case.worker and not raw, raw)


@st.composite
def plain_to_tls_case(draw: st.DrawFn, token: str, first_flight: bytes) -> Case:
    """Plain TCP to the TLS port: hostile streams, a cleartext hello, broken TLS records."""
    cleartext_worker = worker_case(token, interactive=False).map(lambda c: b"".join(c.chunks))
    stream = draw(st.one_of(
        non_worker_stream(token),
        cleartext_worker,
        blob(300).map(lambda b: b"\x16\x03\x01" + b),
        mutated(first_flight),
        st.integers(0, len(first_flight) - 1).map(lambda n: first_flight[:n]),
    ))
    return Case(draw(chunked(stream)), 0, False)


def tls_attack(run: LiveRun, case: Case) -> None:
    """Play ``case`` in cleartext to the TLS port: the handshake must fail, the peer rejected."""
    sock = socket.create_connection(run.addr, timeout=WAIT)
    host, port = sock.getsockname()[:2]
    peer = f"{host}:{port}"
    try:
        with sock:
            with dropped_is_fine():
                for chunk in case.chunks:
                    sock.sendall(chunk)
            with dropped_is_fine():
                sock.shutdown(socket.SHUT_WR)
            with dropped_is_fine():
                while sock.recv(65536):
                    pass  # whatever the TLS layer sends (an alert) before it closes
    except TimeoutError:
        raise AssertionError(f"the coordinator kept {peer} open for {WAIT} s") from None
    run.count(rejected=True)


def tls_session_attack(run: LiveRun, case: Case) -> None:
    """Complete a mutual-TLS handshake as a worker would, then play ``case``."""
    assert run.ctx is not None
    sock = run.ctx.wrap_socket(socket.create_connection(run.addr, timeout=WAIT))
    host, port = sock.getsockname()[:2]
    peer = f"{host}:{port}"
    # The base-class methods act on the TCP socket itself: bytes under the TLS layer, and a
    # half-close without close_notify (the coordinator sees a ragged EOF).
    send = socket.socket.sendall if case.raw else ssl.SSLSocket.sendall
    try:
        with sock:
            with dropped_is_fine():
                for chunk in case.chunks:
                    send(sock, chunk)
            with dropped_is_fine():
                socket.socket.shutdown(sock, socket.SHUT_WR)
            with dropped_is_fine():
                while socket.socket.recv(sock, 65536):
                    pass  # records we no longer decrypt: commands, close_notify
    except TimeoutError:
        raise AssertionError(f"the coordinator kept {peer} open for {WAIT} s") from None
    run.count(rejected=not case.worker, peer=peer if case.worker else None)


def test_tls_coordinator_survives_the_fuzz(keys: KeySet) -> None:
    with LiveRun(actors=8, keys=keys, every=40) as run:
        assert run.ctx is not None
        first_flight = client_hello(run.ctx)

        @fuzz(TLS_AFTER_HANDSHAKE)
        @given(case=tls_case(run.token))
        def after_handshake(case: Case) -> None:
            tls_session_attack(run, case)
            run.probe()

        @fuzz(TLS_PLAIN_TCP)
        @given(case=plain_to_tls_case(run.token, first_flight))
        def plain_tcp(case: Case) -> None:
            tls_attack(run, case)
            run.probe()

        after_handshake()
        plain_tcp()
        run.drain()
        result = run.finish()
    assert_good_run(run, result)


# ------------------------------------------------------------------------ known bugs


def test_a_hello_whose_token_is_not_utf8_is_rejected() -> None:
    """It once ended the whole run (UnicodeEncodeError out of the hello check)."""
    with LiveRun(actors=2, keys=None, every=1) as run:
        bad = Case([encode_frame(b"OK:HELLO:\xff")], 0, False)
        assert attack(run, bad) == []
        run.probe()  # the loop is still accepting
        run.drain()
        result = run.finish()
    assert_good_run(run, result, interleaved=False)
