"""The relay over real sockets: mutual TLS against the run's CA, pairing, holding, bounds.

Clients are stdlib ``ssl`` sockets with the workers' certificate, as the worker runtime uses;
every wait is a bounded socket timeout.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mu.errors import ConfigError, RemoteProtocolError
from mu.launch import FunctionSpec, Invocation, LaunchReport, LaunchSpec
from mu.options import RunOptions
from mu.protocol import NEED_DATA, FrameDecoder, encode_frame, encode_text
from mu.relay import Relay, RelayLimits
from mu.relay_core import hello_text
from mu.runopts import run
from mu.states import CommandListState, TerminalState
from mu.tls import KeySet
from mu.worker import session

TOKEN = "the-run-token"
WAIT = 10.0  # seconds any single read may wait


def client_context(keys: KeySet, version: ssl.TLSVersion | None = None,
                   certificate: bool = True) -> ssl.SSLContext:
    with tempfile.TemporaryDirectory() as tmp:
        keys.write(tmp)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(os.path.join(tmp, "ca_cert.pem"))
        if certificate:
            ctx.load_cert_chain(os.path.join(tmp, "worker_cert.pem"),
                                os.path.join(tmp, "worker_key.pem"))
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


class Peer:
    """A blocking relay client: frames out, frames in."""

    def __init__(self, address: tuple[str, int], ctx: ssl.SSLContext | None) -> None:
        sock = socket.create_connection(address, timeout=WAIT)
        self.sock = ctx.wrap_socket(sock) if ctx is not None else sock
        self.decoder = FrameDecoder()

    def hello(self, me: int, partner: int, run: str = TOKEN) -> Peer:
        self.send(hello_text(run, me, partner).encode())
        return self

    def send(self, payload: bytes) -> None:
        self.sock.sendall(encode_frame(payload))

    def recv(self) -> bytes | None:
        """The next frame, or None at EOF."""
        while True:
            frame = self.decoder.next_frame()
            if isinstance(frame, bytes):
                return frame
            if frame is not NEED_DATA:
                return None
            try:
                data = self.sock.recv(1 << 20)
            except (ConnectionResetError, ssl.SSLEOFError):
                data = b""
            self.decoder.receive_data(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for peer in made:
        peer.close()


def join(made: list[Peer], relay: Relay, ctx: ssl.SSLContext | None, me: int, partner: int,
         run: str = TOKEN) -> Peer:
    peer = Peer(relay.address, ctx).hello(me, partner, run)
    made.append(peer)
    return peer


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_two_workers_pair_over_mutual_tls_whichever_connects_first(
        keys: KeySet, peers: list[Peer], version: ssl.TLSVersion) -> None:
    ctx = client_context(keys, version)
    big = os.urandom(1 << 20)
    with Relay(keys, TOKEN) as relay:
        left = join(peers, relay, ctx, 0, 1)
        left.send(b"before you came")  # held until <me> 1 says hello
        left.send(big)
        relay.wait_stats(lambda s: s.held >= len(big), WAIT)
        right = join(peers, relay, ctx, 1, 0)
        assert right.recv() == b"before you came"
        assert right.recv() == big
        right.send(b"back")
        left.send(b"")
        assert left.recv() == b"back"
        assert right.recv() == b""
    stats = relay.stats()
    assert (stats.hellos, stats.frames, stats.bytes) == (2, 4, len(big) + 19)
    assert stats.peak_held >= len(big)


def test_plain_tcp_without_keys(peers: list[Peer]) -> None:
    with Relay(None, None) as relay:
        a = join(peers, relay, None, 10, 11, run="any")
        b = join(peers, relay, None, 11, 10, run="any")
        a.send(b"ping")
        assert b.recv() == b"ping"


def test_a_wrong_token_gets_one_fail_frame_and_is_closed(keys: KeySet, peers: list[Peer]) -> None:
    ctx = client_context(keys)
    with Relay(keys, TOKEN) as relay:
        stranger = join(peers, relay, ctx, 1, 0, run="guess")
        assert stranger.recv() == b"FAIL(relay: wrong run token in hello)"
        assert stranger.recv() is None
        worker = join(peers, relay, ctx, 0, 1)
        worker.send(b"for the real <me> 1")
        real = join(peers, relay, ctx, 1, 0)
        assert real.recv() == b"for the real <me> 1"
    assert dict(relay.stats().reasons) == {"wrong_token": 1}


def refused(address: tuple[str, int], ctx: ssl.SSLContext) -> bool:
    """Whether the relay refuses this client before a frame can come back."""
    try:
        peer = Peer(address, ctx)
    except (ssl.SSLError, ConnectionError):
        return True  # TLS 1.2: the handshake itself fails
    try:
        peer.hello(0, 0)
        peer.send(b"echo?")
        return peer.recv() is None  # TLS 1.3: the refusal comes with the first read
    except (ssl.SSLError, ConnectionError):
        return True
    finally:
        peer.close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_client_without_a_certificate_from_the_ca_is_refused(
        keys: KeySet, peers: list[Peer], version: ssl.TLSVersion) -> None:
    with Relay(keys, TOKEN) as relay:
        assert refused(relay.address, client_context(keys, version, certificate=False))
        good = join(peers, relay, client_context(keys), 0, 0)  # talks to itself
        good.send(b"echo")
        assert good.recv() == b"echo"
    assert dict(relay.stats().reasons) == {"tls_failed": 1}


def test_a_taken_port_is_a_clear_config_error(keys: KeySet) -> None:
    with Relay(keys, TOKEN) as relay:
        port = relay.address[1]
        with pytest.raises(ConfigError, match=rf"the relay cannot listen on 127.0.0.1:{port}: "):
            Relay(keys, TOKEN, port=port).start()


def test_stop_is_idempotent_and_closes_the_clients(keys: KeySet, peers: list[Peer]) -> None:
    relay = Relay(keys, TOKEN, limits=RelayLimits())
    relay.start()
    peer = join(peers, relay, client_context(keys), 0, 1)
    peer.send(b"x")
    relay.stop()
    relay.stop()
    assert peer.recv() is None
    assert relay.error is None


def test_the_hello_may_arrive_with_the_last_handshake_flight(keys: KeySet) -> None:
    ctx = client_context(keys, ssl.TLSVersion.TLSv1_3)
    with Relay(keys, TOKEN) as relay:
        sock = ctx.wrap_socket(socket.create_connection(relay.address, timeout=WAIT),
                               do_handshake_on_connect=False)
        with sock:
            sock.do_handshake()
            sock.sendall(encode_text(hello_text(TOKEN, 3, 3)) + encode_frame(b"self"))
            decoder = FrameDecoder()
            while (frame := decoder.next_frame()) is NEED_DATA:
                decoder.receive_data(sock.recv(4096))
            assert frame == b"self"


# -- beside the coordinator: mu.runopts.run starts it for a job that needs it ---------------


class Done(TerminalState):
    pass


class Echo(CommandListState):
    commandlist = [("OK:HELLO", "echo:hi"), ("OK:ECHO", "quit:")]
    nextState = Done


class PairJob:
    """Two workers that greet each other through the relay, then echo for the coordinator."""

    first_state = Echo
    config = None
    function = "pair"
    bucket = "pair-bucket"
    workers = 2
    offset = 0

    def __init__(self, needs_relay: bool = True) -> None:
        self.needs_relay = needs_relay

    def deploy(self, launcher: Any, regions: Any, role: str) -> None:
        return None

    def upload_inputs(self, s3: Any, create_bucket: bool, out: Any) -> None:
        return None

    def preflight(self, s3: Any, actors: list[int]) -> list[str]:
        return []

    def finished(self, s3: Any, actors: list[int]) -> list[int]:
        return []

    def download_outputs(self, s3: Any, actors: list[int], out: Any) -> list[str]:
        return []


def worker_context(event: dict[str, Any], tmp: Path) -> ssl.SSLContext:
    """The stdlib client context a worker makes from its payload."""
    (tmp / "crt.pem").write_text(event["wrkcrt"])
    (tmp / "key.pem").write_text(event["wrkkey"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=event["cacert"])
    ctx.load_cert_chain(tmp / "crt.pem", tmp / "key.pem")
    return ctx


class ThreadLauncher:
    """Invocations are threads: each pairs with the other worker through the relay named in
    its payload, then serves the coordinator with the real worker session."""

    name = "threads"

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.payloads: list[dict[str, Any]] = []
        self.heard: dict[int, bytes | None] = {}
        self.threads: list[threading.Thread] = []

    def create_function(self, spec: FunctionSpec, region: str) -> dict[str, Any]:
        return {}

    def function_exists(self, name: str, region: str) -> bool:
        return True

    def delete_function(self, name: str, region: str) -> None:
        return None

    def launch(self, spec: LaunchSpec) -> LaunchReport:
        event = json.loads(spec.payload)
        self.payloads.append(event)
        for i in range(spec.count):
            thread = threading.Thread(target=self._worker, args=(i, event), daemon=True)
            self.threads.append(thread)
            thread.start()
        return LaunchReport(tuple(Invocation(i, "us-east-1", True, status=202)
                                  for i in range(spec.count)))

    def _worker(self, i: int, event: dict[str, Any]) -> None:
        if "relay" in event:
            host, port = event["relay"].rsplit(":", 1)
            where = self.tmp / f"w{i}"
            where.mkdir()
            peer = Peer((host, int(port)), worker_context(event, where))
            with contextlib.closing(peer):
                peer.hello(i, 1 - i, run=event["token"])
                peer.send(b"hello from %d" % i)
                self.heard[i] = peer.recv()
        session.run(event, cwd=str(self.tmp))

    def close(self) -> None:
        for thread in self.threads:
            thread.join(WAIT)


class ThreadSite:
    """A site on this machine whose launcher is a :class:`ThreadLauncher`."""

    name = "threads"
    regions: tuple[str, ...] = ("us-east-1",)
    default_role = ""
    listen_host = "127.0.0.1"
    max_handshakes = 16
    deploys_jobs = False
    private = True
    max_zipped = None

    def __init__(self, tmp: Path) -> None:
        self.threads = ThreadLauncher(tmp)

    @property
    def launcher(self) -> ThreadLauncher:
        return self.threads

    def s3_client(self, region: str) -> Any:
        return object()

    def logs_client(self, region: str) -> Any:
        return None

    def dial_back_address(self, region: str) -> str | None:
        return None

    def check_credentials(self) -> list[str]:
        return []

    def duplicated(self) -> int:
        return 0

    def close(self) -> None:
        self.threads.close()


def test_a_job_that_needs_the_relay_gets_one_beside_the_coordinator(tmp_path: Path) -> None:
    site = ThreadSite(tmp_path)
    out = io.StringIO()
    try:
        result = run(PairJob(), RunOptions(port=0, relay_port=0, retries=0), site, out)
    finally:
        site.close()
    assert result.exit_status == 0, out.getvalue()
    assert site.threads.heard == {0: b"hello from 1", 1: b"hello from 0"}
    (payload,) = site.threads.payloads
    assert payload["relay"].startswith("127.0.0.1:")
    assert result.relay is not None
    assert (result.relay.hellos, result.relay.frames, result.relay.connections) == (2, 2, 0)
    assert f"mu: relay: {result.relay.line()}\n" in out.getvalue()


def test_a_job_without_relay_gets_none(tmp_path: Path) -> None:
    site = ThreadSite(tmp_path)
    try:
        result = run(PairJob(needs_relay=False), RunOptions(port=0, retries=0), site,
                     io.StringIO())
    finally:
        site.close()
    assert result.exit_status == 0 and result.relay is None
    assert "relay" not in site.threads.payloads[0]


def test_a_relay_port_that_cannot_be_bound_is_a_preflight_problem(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        site = ThreadSite(tmp_path)
        out = io.StringIO()
        result = run(PairJob(), RunOptions(port=0, relay_port=port), site, out)
    assert result.exit_status == 2 and not site.threads.payloads
    assert result.problems == (
        f"the relay cannot listen on 127.0.0.1:{port}: Address already in use",)
    assert "nothing was launched" in out.getvalue()


# -- hostile and slow peers ------------------------------------------------------------------


def test_a_peer_that_never_says_hello_is_dropped_with_a_reason(
        keys: KeySet, peers: list[Peer]) -> None:
    with Relay(keys, TOKEN, limits=RelayLimits(hello_timeout=0.3)) as relay:
        silent = Peer(relay.address, client_context(keys))
        peers.append(silent)
        assert silent.recv() == b"FAIL(relay: no hello within 0.3 s)"
        assert silent.recv() is None
    assert dict(relay.stats().reasons) == {"no_hello": 1}


def test_a_peer_that_never_finishes_tls_is_dropped(keys: KeySet) -> None:
    relay = Relay(keys, TOKEN, limits=RelayLimits(handshake_timeout=0.3))
    with relay, socket.create_connection(relay.address, timeout=WAIT) as raw:
        raw.sendall(b"\x16\x03\x01")  # the start of a TLS record, and nothing more
        assert raw.recv(100) == b""
    assert dict(relay.stats().reasons) == {"handshake_timeout": 1}


def test_a_malformed_hello_is_refused_with_a_reason(keys: KeySet, peers: list[Peer]) -> None:
    with Relay(keys, TOKEN) as relay:
        peer = Peer(relay.address, client_context(keys))
        peers.append(peer)
        peer.send(b"HELLO_STATE:" + TOKEN.encode() + b":one:2")
        assert peer.recv() == (b"FAIL(relay: malformed hello 'HELLO_STATE:the-run-token:one:2': "
                               b"expected HELLO_STATE:<run>:<me>:<partner> with decimal <me> "
                               b"and <partner>)")
        assert peer.recv() is None


def test_an_oversized_frame_ends_that_connection_only(keys: KeySet, peers: list[Peer]) -> None:
    ctx = client_context(keys)
    with Relay(keys, TOKEN, limits=RelayLimits(max_frame=1000)) as relay:
        a, b = join(peers, relay, ctx, 0, 1), join(peers, relay, ctx, 1, 0)
        c, d = join(peers, relay, ctx, 2, 3), join(peers, relay, ctx, 3, 2)
        a.send(b"fine")
        a.sock.sendall(b"%012d " % 1001)
        assert a.recv() == b"FAIL(relay: frame length 1001 exceeds maximum 1000 from connection 0)"
        assert a.recv() is None
        assert b.recv() == b"fine"
        c.send(b"x" * 1000)
        assert d.recv() == b"x" * 1000


def test_a_second_connection_with_the_same_me_is_refused(
        keys: KeySet, peers: list[Peer]) -> None:
    ctx = client_context(keys)
    with Relay(keys, TOKEN) as relay:
        join(peers, relay, ctx, 4, 5)
        twin = join(peers, relay, ctx, 4, 5)
        assert twin.recv() == b"FAIL(relay: <me> 4 is already connected in this run)"


def test_held_bytes_over_the_bound_end_the_sender_with_a_clear_error(
        keys: KeySet, peers: list[Peer]) -> None:
    ctx = client_context(keys)
    limits = RelayLimits(held_per_partner=100_000)
    with Relay(keys, TOKEN, limits=limits) as relay:
        sender = join(peers, relay, ctx, 0, 1)
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            for _ in range(3):
                sender.send(b"h" * 40_000)
        assert sender.recv() == (b"FAIL(relay: held bytes for <me> 1 would be 120231, over "
                                 b"the limit 100000 (<me> 1 is not connected))")
        assert sender.recv() is None
        stats = relay.stats()
        assert stats.held == stats.peak_held == 2 * (40_000 + 13 + 64)
        late = join(peers, relay, ctx, 1, 0)
        assert late.recv() == late.recv() == b"h" * 40_000


def test_a_slow_reader_pauses_its_sender_and_stalls_no_other_pair(
        keys: KeySet, peers: list[Peer]) -> None:
    ctx = client_context(keys)
    frame, count = 1 << 20, 13  # frames 4x the window: they are cut through, never whole
    limits = RelayLimits(window=256 * 1024)
    with Relay(keys, TOKEN, limits=limits) as relay:
        writer, sleeper = join(peers, relay, ctx, 0, 1), join(peers, relay, ctx, 1, 0)
        c, d = join(peers, relay, ctx, 2, 3), join(peers, relay, ctx, 3, 2)
        payloads = [bytes([i % 256]) * frame for i in range(count)]

        def write_all() -> None:
            for payload in payloads:
                writer.send(payload)

        sent = threading.Thread(target=write_all, daemon=True)
        sent.start()
        # The sleeper reads nothing: once the socket buffers towards it are full, the
        # relay's queue for it passes the window and the writer is no longer read.
        relay.wait_stats(lambda s: s.paused == 1, WAIT)
        for i in range(20):  # another pair goes on meanwhile
            c.send(b"%d" % i)
            assert d.recv() == b"%d" % i
        assert relay.stats().paused == 1
        assert [sleeper.recv() for _ in range(count)] == payloads
        sent.join(WAIT)
        assert not sent.is_alive()
    stats = relay.stats()
    # the window, and at most one read (64 KiB) more: no frame is ever assembled
    assert stats.peak_queued <= limits.window + 65536 + 1024
    assert stats.peak_held == 0 and stats.paused == 0


def test_a_sender_that_dies_inside_a_frame_ends_its_partners_link(
        keys: KeySet, peers: list[Peer]) -> None:
    ctx = client_context(keys)
    with Relay(keys, TOKEN) as relay:
        a, b = join(peers, relay, ctx, 0, 1), join(peers, relay, ctx, 1, 0)
        a.send(b"whole")
        a.sock.sendall(encode_frame(b"x" * 100_000)[:50_000])
        assert b.recv() == b"whole"
        relay.wait_stats(lambda s: s.bytes > 5, WAIT)  # the relay has begun the second frame
        a.close()
        with pytest.raises(RemoteProtocolError, match="stream ended inside a frame"):
            b.recv()
    assert dict(relay.stats().reasons) == {"truncated": 1}


def test_strangers_that_never_finish_tls_cannot_lock_workers_out(
        keys: KeySet, peers: list[Peer]) -> None:
    limits = RelayLimits(max_unauthenticated=3, max_connections=4)
    with Relay(keys, TOKEN, limits=limits) as relay, contextlib.ExitStack() as stack:
        crowd = [stack.enter_context(socket.create_connection(relay.address, timeout=WAIT))
                 for _ in range(5)]
        assert crowd[0].recv(10) == b"" and crowd[1].recv(10) == b""  # dropped, oldest first
        ctx = client_context(keys)
        a = join(peers, relay, ctx, 0, 1)  # each worker's arrival drops another stranger
        b = join(peers, relay, ctx, 1, 0)
        a.send(b"through the crowd")
        assert b.recv() == b"through the crowd"
    assert dict(relay.stats().reasons)["evicted"] >= 2
