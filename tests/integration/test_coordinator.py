"""The coordinator over real sockets and mutual TLS on 127.0.0.1, with simulated workers.

Simulated workers are threads with stdlib-ssl clients that answer like the real worker. Each
bad-input test runs bad peers next to good workers and checks that only the bad connection
ended (counted as rejected or as that actor's failure) while every good actor finished.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL

from mu.apps.png2y4m import ConfigState, Png2Y4MConfig
from mu.config import RunConfig
from mu.coordinator import Coordinator, RunResult
from mu.errors import ConfigError
from mu.faults import FaultSpec
from mu.launch import LaunchReport, LaunchSpec
from mu.protocol import FrameDecoder, encode_text
from mu.report import final_report
from mu.states import CommandListState, TerminalState
from mu.tls import KeySet, generate_keys, server_context
from mu.tls import client_context as tls_client_context
from tests.worker_helpers import FakeBackend, accepted, converse, read_command

JOB = Png2Y4MConfig(frames=2)


class Done(TerminalState):
    pass


class Small(CommandListState):
    commandlist = ["set:a:1", "run:true", ("OK:RETVAL(0)", "quit:")]
    nextState = Done


def answer(command: str) -> str | None:
    name, _, args = command.partition(":")
    key = args.partition(":")[0]
    return {
        "set": f"OK:SET({key})", "seti": f"OK:SETI({key})", "echo": f"OK:ECHO({args})",
        "retrieve": "OK:RETRIEVE(b/k)", "upload": "OK:UPLOAD(b/k)",
        "run": "OK:RETVAL(0):OUTPUT():COMMAND(x)",
    }.get(name)


def client_context(keys: KeySet, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    with tempfile.TemporaryDirectory() as tmp:
        keys.write(tmp)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(os.path.join(tmp, "ca_cert.pem"))
        ctx.load_cert_chain(os.path.join(tmp, "worker_cert.pem"), os.path.join(tmp, "worker_key.pem"))
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def good_worker(addr: tuple[str, int], token: str, ctx: ssl.SSLContext | None) -> list[str]:
    """Say hello, answer every command, return the commands seen."""
    return converse(addr, token, ctx, 30, answer)[1]


def launched_worker(addr: tuple[str, int], token: str, ctx: ssl.SSLContext | None) -> list[str]:
    """A :func:`good_worker` started by a launch: it may arrive when the run is already over
    (a spare, no actor left), when the coordinator closes it at once; the run's result says
    whether the workers that mattered were served."""
    try:
        return good_worker(addr, token, ctx)
    except (ssl.SSLEOFError, ConnectionError):
        return []


@contextmanager
def running(coord: Coordinator) -> Iterator[dict[str, Any]]:
    """Run the coordinator in a thread; the dict gets the result when it ends."""
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.setdefault("result", coord.run()), daemon=True)
    coord.bind()
    thread.start()
    try:
        yield out
    finally:
        thread.join(timeout=120)
        if thread.is_alive():  # report it, and never leave the loop running behind us
            coord.stop()
            thread.join(timeout=30)
            pytest.fail(f"the coordinator did not finish: {coord.statistics()}")


def workers(n: int, target: Callable[[], Any]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def finish(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()


def coordinator(keys: KeySet | None, n: int, **config: Any) -> Coordinator:
    job = config.pop("job", Small)
    tls = config.pop("tls", True)
    # Generous limits unless a test is about them: a loaded machine (tox -p, CI) can take
    # seconds per handshake, and a peer dropped for that would leave its actor unserved.
    config.setdefault("handshake_timeout", 120.0)
    config.setdefault("hello_timeout", 120.0)
    return Coordinator(job, JOB, RunConfig(num_actors=n, port=0, tls=tls, **config), keys)


def assert_all_done(result: RunResult, n: int) -> None:
    assert sorted(a.actor for a in result.actors) == list(range(n))
    assert all(a.ok for a in result.actors), [a for a in result.actors if not a.ok]
    assert result.exit_status == 0


# ------------------------------------------------------------------------ good paths


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_png2y4m_conversation_over_tls(keys: KeySet, version: ssl.TLSVersion) -> None:
    coord = coordinator(keys, 3, job=ConfigState)
    ctx = client_context(keys, version)
    with running(coord) as out:
        seen: list[list[str]] = []
        threads = workers(3, lambda: seen.append(good_worker(coord.address, coord.token, ctx)))
        finish(threads)
    assert_all_done(out["result"], 3)
    assert all(s[0] == "seti:nonblock:0" and s[-1] == "quit:" for s in seen)
    assert all(sum(c == "retrieve:" for c in s) == 2 for s in seen)


def test_two_hundred_workers_and_the_run_record(keys: KeySet, tmp_path: Path) -> None:
    n = 200
    coord = coordinator(keys, n, job=ConfigState)
    ctx = client_context(keys)
    with running(coord) as out:
        finish(workers(n, lambda: good_worker(coord.address, coord.token, ctx)))
    result: RunResult = out["result"]
    assert_all_done(result, n)
    record = tmp_path / "run.jsonl"
    result.write_record(record)
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert [r["actor"] for r in rows] == list(range(n))
    for row in rows:
        assert row["ok"] is True and row["state"] == "FinalState" and row["error"] is None
        times = [t for t, _ in row["timestamps"]]
        assert times == sorted(times) and times[0] >= 0
        assert row["timestamps"][0][1] == "ConfigState"
    assert result.messages_in > n * 10 and result.messages_out > n * 10


def test_surplus_workers_get_no_work(keys: KeySet) -> None:
    coord = coordinator(keys, 2)
    ctx = client_context(keys)
    seen: list[list[str]] = []

    def worker() -> None:
        try:
            seen.append(good_worker(coord.address, coord.token, ctx))
        except OSError:
            seen.append([])  # arrived after the run had ended: refused, also fine

    with running(coord) as out:
        finish(workers(4, worker))
    assert_all_done(out["result"], 2)
    full = [s for s in seen if len(s) > 1]
    assert len(full) == 2 and all(s[-1] == "quit:" for s in full)
    # The others were told to quit (or found the run over); none got an actor's work.
    assert sorted(tuple(s) for s in seen if len(s) <= 1) in ([(), ()], [(), ("quit:",)],
                                                             [("quit:",), ("quit:",)])


def test_plain_tcp_when_tls_is_off() -> None:
    coord = coordinator(None, 2, tls=False)
    with running(coord) as out:
        finish(workers(2, lambda: good_worker(coord.address, coord.token, None)))
    assert_all_done(out["result"], 2)
    assert coord.payload().cacert == ""


class BigOutput(CommandListState):
    commandlist = ["run:big", ("OK:RETVAL(0)", "quit:")]
    nextState = Done


BIG_RESPONSE = "OK:RETVAL(0):OUTPUT(" + "x" * 300_000 + "):COMMAND(x)"


def big_output_worker(addr: tuple[str, int], token: str, ctx: ssl.SSLContext | None) -> None:
    """Answer the one run: with a response of many TLS records (and socket reads), sent at once."""
    raw = socket.create_connection(addr, timeout=30)
    sock: socket.socket = ctx.wrap_socket(raw) if ctx else raw
    with sock:
        sock.sendall(encode_text(f"OK:HELLO:{token}"))
        decoder = FrameDecoder()
        assert read_command(sock, decoder) == "run:big"
        sock.sendall(encode_text(BIG_RESPONSE))
        assert read_command(sock, decoder) == "quit:"


@pytest.mark.parametrize("tls", [True, False])
def test_a_response_larger_than_one_read_arrives_whole(keys: KeySet, tls: bool) -> None:
    coord = coordinator(keys if tls else None, 2, job=BigOutput, tls=tls)
    ctx = client_context(keys) if tls else None
    with running(coord) as out:
        finish(workers(2, lambda: big_output_worker(coord.address, coord.token, ctx)))
    assert_all_done(out["result"], 2)


def test_payload_carries_no_coordinator_private_key(keys: KeySet) -> None:
    coord = coordinator(keys, 1)
    payload = json.loads(coord.payload_json())
    text = json.dumps(payload)
    assert keys.server_key.strip() not in text
    assert keys.ca_key.strip() not in text
    assert payload["wrkkey"] == keys.worker_key and payload["cacert"] == keys.ca_cert
    assert payload["token"] == coord.token and payload["port"] == coord.address[1]
    # A payload that would carry it is refused.
    leaky = Coordinator(Small, JOB, RunConfig(port=0), KeySet(
        keys.ca_cert, keys.server_cert, keys.server_key, keys.server_cert, keys.server_key))
    with pytest.raises(ConfigError, match="private key"):
        leaky.payload_json()
    coord.close()
    leaky.close()


# ------------------------------------------------------------------------ bad input


def bad_peer_test(keys: KeySet, bad: Callable[[tuple[str, int], str], None], n_bad: int = 1,
                  **config: Any) -> RunResult:
    """Run 3 good workers beside ``n_bad`` bad peers; return the result."""
    coord = coordinator(keys, 3, **config)
    ctx = client_context(keys)
    with running(coord) as out:
        bad_threads = workers(n_bad, lambda: bad(coord.address, coord.token))
        finish(bad_threads)
        finish(workers(3, lambda: good_worker(coord.address, coord.token, ctx)))
    result: RunResult = out["result"]
    assert_all_done(result, 3)
    return result


def tls_peer(keys: KeySet, send: bytes, hello: bool = True, close: bool = True) -> Callable[..., None]:
    def run(addr: tuple[str, int], token: str) -> None:
        ctx = client_context(keys)
        with ctx.wrap_socket(socket.create_connection(addr, timeout=30)) as sock:
            if hello:
                sock.sendall(encode_text(f"OK:HELLO:{token}"))
            sock.sendall(send)
            if close:
                sock.shutdown(socket.SHUT_WR)
            try:
                while sock.recv(65536):
                    pass
            except (ssl.SSLError, OSError):
                pass
    return run


@pytest.mark.parametrize(
    ("name", "payload", "hello"),
    [
        ("random bytes", b"\x8f\x00\xffgarbage\x13" * 50, False),
        ("non-digit header", b"00000000000x OK", False),
        ("oversized header", b"%012d " % (10**10), False),
        ("frame cut off by EOF", b"000000000100 OK:SET", False),
        ("wrong token", encode_text("OK:HELLO:not-the-token"), False),
        ("no token", encode_text("OK:HELLO"), False),
    ],
)
def test_bad_peers_before_hello_are_rejected(
    keys: KeySet, name: str, payload: bytes, hello: bool
) -> None:
    result = bad_peer_test(keys, tls_peer(keys, payload, hello))
    assert result.rejected == 1, result.rejections


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("random bytes after hello", b"\xffjunk" * 20),
        ("oversized frame after hello", b"%012d " % (10**10)),
        ("cut-off frame after hello", b"000000000050 OK:SE"),
    ],
)
def test_bad_peers_after_hello_fail_only_their_actor(
    keys: KeySet, name: str, payload: bytes
) -> None:
    # Four actors: three good workers plus the bad one, which took an actor and failed it.
    coord = coordinator(keys, 4)
    ctx = client_context(keys)
    with running(coord) as out:
        finish(workers(1, lambda: tls_peer(keys, payload)(coord.address, coord.token)))
        finish(workers(3, lambda: good_worker(coord.address, coord.token, ctx)))
    result: RunResult = out["result"]
    failed = result.failed
    assert len(failed) == 1 and result.done == 3
    assert failed[0].error


def test_plain_tcp_to_the_tls_port(keys: KeySet) -> None:
    def plain(addr: tuple[str, int], token: str) -> None:
        # The coordinator may drop us at any point of this (the TLS handshake failed): a
        # reset or "not connected" here is the expected outcome, not a test error.
        with socket.create_connection(addr, timeout=30) as sock, contextlib.suppress(OSError):
            sock.sendall(encode_text(f"OK:HELLO:{token}"))
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass

    result = bad_peer_test(keys, plain)
    assert result.rejected == 1 and "TLS" in result.rejections[0]


@pytest.mark.parametrize("which", ["other CA", "no certificate"])
def test_clients_without_a_valid_certificate_are_refused(keys: KeySet, which: str) -> None:
    other = generate_keys(days=1)

    def bad(addr: tuple[str, int], token: str) -> None:
        if which == "other CA":
            ctx = client_context(other)
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        try:
            with ctx.wrap_socket(socket.create_connection(addr, timeout=30)) as sock:
                sock.sendall(encode_text(f"OK:HELLO:{token}"))
                while sock.recv(4096):
                    pass
        except (ssl.SSLError, OSError):
            pass  # the server ends the handshake: expected

    result = bad_peer_test(keys, bad)
    assert result.rejected == 1


def test_hello_that_never_comes(keys: KeySet) -> None:
    release = threading.Event()

    def silent(addr: tuple[str, int], token: str) -> None:
        ctx = client_context(keys)
        with ctx.wrap_socket(socket.create_connection(addr, timeout=30)) as sock:
            sock.settimeout(30)
            with contextlib.suppress(ssl.SSLError, ConnectionResetError):
                assert sock.recv(4096) == b""  # the coordinator closes on us
            release.set()

    result = bad_peer_test(keys, silent, hello_timeout=0.3)
    assert release.is_set()
    assert result.rejected == 1 and "no hello within 0.3 s" in result.rejections[0]


def test_peer_that_stops_reading_is_dropped(keys: KeySet) -> None:
    # Far more than loopback's socket buffers can absorb, so most of it stays queued.
    class Big(CommandListState):
        commandlist = [("OK:HELLO", "echo:" + "x" * 40_000_000), ("OK:ECHO", "quit:")]
        nextState = Done

    coord = coordinator(keys, 1, job=Big, max_send_buffer=1_000_000)
    ctx = client_context(keys)
    stop = threading.Event()

    def stubborn() -> None:
        with ctx.wrap_socket(socket.create_connection(coord.address, timeout=30)) as sock:
            sock.sendall(encode_text(f"OK:HELLO:{coord.token}"))
            stop.wait(30)  # never reads

    thread = threading.Thread(target=stubborn)
    with running(coord) as out:
        thread.start()
    # The run ended (the coordinator thread was joined) while the peer still holds on.
    stop.set()
    thread.join()
    result: RunResult = out["result"]
    (failed,) = result.failed
    assert "stopped reading" in (failed.error or "")


def test_a_thousand_bad_connections_beside_good_workers(keys: KeySet) -> None:
    def junk(addr: tuple[str, int], token: str) -> None:
        for i in range(250):
            with socket.create_connection(addr, timeout=30) as sock:
                sock.sendall(b"\x16\x03\x01 not a hello %d" % i)

    result = bad_peer_test(keys, junk, n_bad=4)
    assert result.rejected == 1000


def test_worker_deadline_terminates_the_actor(keys: KeySet) -> None:
    hold = threading.Event()

    def slow(addr: tuple[str, int], token: str) -> None:
        ctx = client_context(keys)
        with ctx.wrap_socket(socket.create_connection(addr, timeout=30)) as sock:
            sock.sendall(encode_text(f"OK:HELLO:{token}"))
            try:
                while sock.recv(4096):
                    pass  # never answers
            except (ssl.SSLError, OSError):
                pass
            hold.set()

    coord = coordinator(keys, 1, worker_deadline=0.3)
    with running(coord) as out:
        finish(workers(1, lambda: slow(coord.address, coord.token)))
    (failed,) = out["result"].failed
    assert failed.state == "Small"  # the state it was in when the deadline passed
    assert "deadline of 0.3 s passed" in (failed.error or "")


# ------------------------------------------------------------------------ launcher


# Runs in the test's own thread: a deadline makes a broken run fail instead of hanging.
SAFE: dict[str, Any] = {"handshake_timeout": 120.0, "hello_timeout": 120.0, "run_deadline": 180.0}


class ThreadLauncher(FakeBackend):
    """A fake backend: each accepted invocation starts a simulated worker thread."""

    name = "threads"

    def __init__(self, accept: int | None, keys: KeySet) -> None:
        self.accept = accept
        self.ctx = client_context(keys)
        self.threads: list[threading.Thread] = []
        self.specs: list[LaunchSpec] = []

    def launch(self, spec: LaunchSpec) -> LaunchReport:
        self.specs.append(spec)
        payload = json.loads(spec.payload)
        count = spec.count if self.accept is None else min(self.accept, spec.count)
        for _ in range(count):
            t = threading.Thread(target=launched_worker, args=(
                (payload["addr"], payload["port"]), payload["token"], self.ctx))
            t.start()
            self.threads.append(t)
        return accepted(spec.count, count)

    def close(self) -> None:
        finish(self.threads)


def test_launcher_starts_every_worker(keys: KeySet) -> None:
    launcher = ThreadLauncher(None, keys)
    coord = Coordinator(Small, JOB, RunConfig(num_actors=5, extra_workers=2, port=0, **SAFE), keys,
                        launcher=launcher, function_name="fn", payload_fields={"bucket": "b"})
    result = coord.run()
    launcher.close()
    assert_all_done(result, 5)
    (spec,) = launcher.specs
    assert spec.count == 7 and spec.function_name == "fn"
    assert json.loads(spec.payload)["bucket"] == "b"
    assert result.launch is not None and result.launch.accepted == 7


def test_actors_no_worker_can_reach_fail_with_the_reason(keys: KeySet) -> None:
    launcher = ThreadLauncher(2, keys)
    coord = Coordinator(Small, JOB, RunConfig(num_actors=4, port=0, **SAFE), keys, launcher=launcher)
    result = coord.run()
    launcher.close()
    assert result.done == 2 and result.errors == 2
    for failed in result.failed:
        assert failed.state == "NotStarted"
        assert "no worker came for it" in (failed.error or "")
    assert result.exit_status == 1


class SlowReturnLauncher(ThreadLauncher):
    """Its launch call returns only once the workers it started have said hello and
    finished, as a slow launch API can."""

    def launch(self, spec: LaunchSpec) -> LaunchReport:
        report = super().launch(spec)
        finish(self.threads)
        return report


def test_workers_arriving_before_the_launch_returns_are_not_owed(keys: KeySet) -> None:
    launcher = SlowReturnLauncher(2, keys)
    config = RunConfig(num_actors=4, port=0, **{**SAFE, "arrival_timeout": 600.0})
    coord = Coordinator(Small, JOB, config, keys, launcher=launcher)
    results: list[Any] = []
    runner = threading.Thread(target=lambda: results.append(coord.run()))
    runner.start()
    # Both workers came before the launch returned: nothing is owed, so the two actors no
    # worker is coming for fail once the launch is over, not after the arrival timeout.
    runner.join(timeout=60)
    if runner.is_alive():
        coord.stop()
        runner.join()
    launcher.close()
    assert results and results[0].done == 2 and results[0].errors == 2
    assert all("the launch started 2 worker(s)" in (f.error or "") for f in results[0].failed)


# ------------------------------------------------------------------------ keys


def test_genkeys_files_modes_and_openssl(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "mu.cli", "genkeys", "--out", str(tmp_path), "--days", "30"],
        capture_output=True, text=True, check=False,
    )
    assert run.returncode == 0, run.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ca_cert.pem", "ca_key.pem", "server_cert.pem", "server_key.pem",
                     "worker_cert.pem", "worker_key.pem"]
    for key in ("ca_key.pem", "server_key.pem", "worker_key.pem"):
        assert (tmp_path / key).stat().st_mode & 0o777 == 0o600
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca_cert.pem"),
         str(tmp_path / "server_cert.pem"), str(tmp_path / "worker_cert.pem")],
        capture_output=True, text=True, check=False,
    )
    assert verify.returncode == 0 and verify.stdout.count(": OK") == 2
    again = subprocess.run(
        [sys.executable, "-m", "mu.cli", "genkeys", "--out", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


def test_key_types_cipher_and_chain_sent(keys: KeySet) -> None:
    """The CA and workers sign with RSA-2048 (cheap for the coordinator to verify), the
    coordinator with ECDSA P-256 (cheap to sign with); it prefers AES-128-GCM and sends its
    certificate alone."""
    def common_name(cert: x509.Certificate) -> Any:
        return cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value

    def key_of(pem: str) -> Any:
        return x509.load_pem_x509_certificate(pem.encode()).public_key()

    for pem in (keys.ca_cert, keys.worker_cert):
        key = key_of(pem)
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    server_key = key_of(keys.server_cert)
    assert isinstance(server_key, ec.EllipticCurvePublicKey)
    assert server_key.curve.name == "secp256r1"

    a, b = socket.socketpair()
    server = SSL.Connection(server_context(keys), a)
    server.set_accept_state()
    client = SSL.Connection(tls_client_context(keys), b)
    client.set_connect_state()
    side = threading.Thread(target=server.do_handshake)
    side.start()
    client.do_handshake()
    side.join(timeout=30)
    assert not side.is_alive()
    try:
        assert client.get_cipher_name() == "TLS_AES_128_GCM_SHA256"
        chain = client.get_peer_cert_chain(as_cryptography=True) or []
        assert [common_name(c) for c in chain] == ["mu coordinator"]
        peer = server.get_peer_certificate(as_cryptography=True)
        assert peer is not None and common_name(peer) == "mu worker"
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------------ retries


def flaky_worker(addr: tuple[str, int], token: str, ctx: ssl.SSLContext,
                 fail: str = "FAIL(disk full)") -> None:
    """Says hello, then fails the first command it gets with ``fail``."""
    with ctx.wrap_socket(socket.create_connection(addr, timeout=30)) as sock:
        sock.sendall(encode_text(f"OK:HELLO:{token}"))
        decoder = FrameDecoder()
        while (data := sock.recv(65536)):
            decoder.receive_data(data)
            if isinstance(decoder.next_frame(), bytes):
                sock.sendall(encode_text(fail))
                break
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass


class ScriptedLauncher(ThreadLauncher):
    """Each invocation starts the next worker kind of ``script`` ("good", "flaky" or
    "refusing": a FAIL that cannot change on retry)."""

    def __init__(self, script: list[str], keys: KeySet) -> None:
        super().__init__(None, keys)
        self.script = list(script)

    def launch(self, spec: LaunchSpec) -> LaunchReport:
        self.specs.append(spec)
        payload = json.loads(spec.payload)
        addr = (payload["addr"], payload["port"])
        for _ in range(spec.count):
            kind = self.script.pop(0) if self.script else "good"
            target = flaky_worker if kind in ("flaky", "refusing") else launched_worker
            args: tuple[Any, ...] = (addr, payload["token"], self.ctx)
            if kind == "refusing":
                args += ("FAIL(retrieve: no bucket set)",)
            t = threading.Thread(target=target, args=args)
            t.start()
            self.threads.append(t)
        return accepted(spec.count)


def test_a_failed_actor_is_given_to_a_new_worker(keys: KeySet) -> None:
    launcher = ScriptedLauncher(["flaky", "good"], keys)
    coord = Coordinator(Small, JOB, RunConfig(num_actors=2, port=0, retries=2, **SAFE), keys,
                        launcher=launcher)
    result = coord.run()
    launcher.close()
    assert result.exit_status == 0 and result.done == 2 and len(result.retried) == 1
    assert [s.count for s in launcher.specs] == [2, 1]  # one replacement was launched
    failed = [a for a in result.actors if not a.ok]
    (first,) = failed
    assert "disk full" in (first.error or "") and first.attempt == 1
    assert first.retry == "retried: the function's /tmp was full"
    again = [a for a in result.actors if a.actor == first.actor and a.ok]
    assert [a.attempt for a in again] == [2]
    # The report counts the replacement among the workers launched.
    assert result.launched == 3
    out = io.StringIO()
    final_report(result, out)
    assert "1 retried, launched 3 (1 for retries and stragglers)" in out.getvalue()


def test_retries_are_bounded(keys: KeySet) -> None:
    launcher = ScriptedLauncher(["flaky"] * 5, keys)
    coord = Coordinator(Small, JOB, RunConfig(num_actors=1, port=0, retries=1, **SAFE), keys,
                        launcher=launcher)
    result = coord.run()
    launcher.close()
    assert [a.attempt for a in result.actors] == [1, 2]
    assert result.exit_status == 1 and len(result.retried) == 1
    (final,) = result.failed
    assert final.attempt == 2 and "disk full" in (final.error or "")
    assert final.retry == "not retried (the function's /tmp was full): all 1 retries used"
    assert len(launcher.specs) == 2


def test_a_failure_that_cannot_change_is_not_retried(keys: KeySet, tmp_path: Path) -> None:
    launcher = ScriptedLauncher(["refusing"] * 3, keys)
    coord = Coordinator(Small, JOB, RunConfig(num_actors=1, port=0, retries=2, **SAFE), keys,
                        launcher=launcher)
    result = coord.run()
    launcher.close()
    assert len(launcher.specs) == 1 and result.retried == []  # no replacement launched
    (final,) = result.failed
    assert (final.attempt, final.state) == (1, "Small")  # where it failed, not ErrorState
    assert final.retry == (
        "not retried: the worker refused the command, which cannot change on retry")
    out = io.StringIO()
    final_report(result, out)
    assert out.getvalue().splitlines()[0] == (
        "mu: actor 0 attempt 1 failed in Small: worker failed in Small: "
        "FAIL(retrieve: no bucket set) (not retried: the worker refused the command, "
        "which cannot change on retry)"
    )
    result.write_record(tmp_path / "run.jsonl")
    (row,) = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert (row["attempt"], row["state"], row["retry"]) == (1, "Small", final.retry)


def test_workers_that_never_arrive_do_not_hang_the_run(keys: KeySet) -> None:
    class Ghosts(ThreadLauncher):
        """Accepts every invocation and starts nothing: workers that died at start-up."""

        def launch(self, spec: LaunchSpec) -> LaunchReport:
            self.specs.append(spec)
            return accepted(spec.count)

    launcher = Ghosts(None, keys)
    coord = Coordinator(Small, JOB, RunConfig(num_actors=2, port=0, arrival_timeout=0.5, **SAFE),
                        keys, launcher=launcher)
    result = coord.run()
    assert result.errors == 2 and result.exit_status == 1
    for failed in result.failed:
        assert failed.state == "NotStarted"
        assert "2 launched worker(s) never arrived within 0.5 s" in (failed.error or "")


# ------------------------------------------------------------------------ rehearsal faults


def test_fault_plans_go_first_and_into_the_record(keys: KeySet) -> None:
    spec = FaultSpec(drop=0.5, s3_error=0.1, seed=3)
    coord = coordinator(keys, 6, faults=spec)
    ctx = client_context(keys)
    seen: list[list[str]] = []
    with running(coord) as out:
        finish(workers(6, lambda: seen.append(good_worker(coord.address, coord.token, ctx))))
    result = out["result"]
    assert_all_done(result, 6)  # these workers ignore the plans
    assert json.loads(coord.payload_json())["faults"] == 1
    assert sorted(s[0] for s in seen) == sorted(spec.plan(a, 0).command() for a in range(6))
    assert all(s[1] == "set:a:1" for s in seen)  # the job's own commands follow
    for attempt in result.actors:
        assert attempt.fault == str(spec.plan(attempt.actor, 0))
        assert attempt.to_record()["fault"] == attempt.fault


def test_no_faults_no_fault_command(keys: KeySet) -> None:
    coord = coordinator(keys, 2)
    ctx = client_context(keys)
    seen: list[list[str]] = []
    with running(coord) as out:
        finish(workers(2, lambda: seen.append(good_worker(coord.address, coord.token, ctx))))
    assert_all_done(out["result"], 2)
    assert "faults" not in json.loads(coord.payload_json())
    assert all(not c.startswith("fault:") for s in seen for c in s)
    assert all("fault" not in a.to_record() for a in out["result"].actors)


def test_a_second_worker_with_the_token_is_never_given_a_taken_actor(keys: KeySet) -> None:
    """A replayed or duplicated worker (same token) arriving while the only actor is in
    another worker's hands is told to quit, and the actor finishes once."""
    coord = coordinator(keys, 1)
    ctx = client_context(keys)
    with running(coord) as out, ctx.wrap_socket(
        socket.create_connection(coord.address, timeout=30)
    ) as first:
        first.sendall(encode_text(f"OK:HELLO:{coord.token}"))
        decoder = FrameDecoder()
        command = read_command(first, decoder)
        assert command == "set:a:1"
        assert good_worker(coord.address, coord.token, ctx) == ["quit:"]
        while command is not None and command != "quit:":
            reply = answer(command)
            if reply is not None:
                first.sendall(encode_text(reply))
            command = read_command(first, decoder)
    result = out["result"]
    assert_all_done(result, 1)
    assert len(result.actors) == 1


# ------------------------------------------------------------------------ stragglers


def stalled_worker(addr: tuple[str, int], token: str, ctx: ssl.SSLContext,
                   seen: list[str]) -> None:
    """Says hello, then answers nothing; notes every command until the connection ends."""
    with ctx.wrap_socket(socket.create_connection(addr, timeout=60)) as sock:
        sock.sendall(encode_text(f"OK:HELLO:{token}"))
        decoder = FrameDecoder()
        with contextlib.suppress(OSError):
            while data := sock.recv(65536):
                decoder.receive_data(data)
                while isinstance(frame := decoder.next_frame(), bytes):
                    seen.append(frame.decode())


def test_a_straggler_gets_a_backup_and_the_first_to_finish_wins(keys: KeySet) -> None:
    stalled_seen: list[str] = []

    class Launcher(ScriptedLauncher):
        def launch(self, spec: LaunchSpec) -> LaunchReport:
            if not self.specs:  # the first worker of the run stalls
                payload = json.loads(spec.payload)
                t = threading.Thread(target=stalled_worker, args=(
                    (payload["addr"], payload["port"]), payload["token"], self.ctx,
                    stalled_seen))
                t.start()
                self.threads.append(t)
                self.specs.append(spec)
                rest = LaunchSpec(spec.function_name, spec.payload, spec.count - 1, spec.regions)
                super().launch(rest)
                self.specs.pop()
                return accepted(spec.count)
            return super().launch(spec)

    launcher = Launcher([], keys)
    config = RunConfig(num_actors=4, port=0, speculate=2.0, speculate_after=0.1, retries=0,
                       **SAFE)
    coord = Coordinator(Small, JOB, config, keys, launcher=launcher)
    result = coord.run()
    launcher.close()
    assert result.exit_status == 0 and result.done == 4
    assert [s.count for s in launcher.specs] == [4, 1]  # one backup
    (loser,) = [a for a in result.actors if not a.ok]
    assert "superseded: attempt 2 finished first" in (loser.error or "")
    assert [a.ok for a in result.actors if a.actor == loser.actor] == [True, False]
    assert stalled_seen[0] == "set:a:1" and stalled_seen[-1] == "quit:"
    assert [a.actor for a in result.final] == [0, 1, 2, 3]
    assert all(a.ok for a in result.final)


def test_speculate_must_be_a_factor_above_one() -> None:
    with pytest.raises(ConfigError, match="speculate must be a factor above 1"):
        RunConfig(speculate=1.0)


def test_a_bound_of_one_unauthenticated_connection_drops_the_stranger(keys: KeySet) -> None:
    """With room for one connection not yet authenticated, an idle stranger that came first
    is dropped when the worker arrives (the oldest goes): it cannot lock the worker out."""
    coord = coordinator(keys, 1, max_unauthenticated=1)
    ctx = client_context(keys)
    with running(coord) as out:
        stranger = socket.create_connection(coord.address, timeout=60)
        with stranger:
            finish(workers(1, lambda: good_worker(coord.address, coord.token, ctx)))
            assert stranger.recv(1) == b""  # closed by the coordinator
    assert_all_done(out["result"], 1)
    assert coord.statistics().drops == {"evicted": 1}
    assert out["result"].rejected == 1


def test_a_handshake_bound_of_one_still_admits_everyone(keys: KeySet) -> None:
    """With one TLS handshake at a time the others wait, accepted, in a queue (the listener
    stays in the selector), and all of them get work."""
    n = 40
    coord = coordinator(keys, n, max_handshakes=1)
    ctx = client_context(keys)
    with running(coord) as out:
        finish(workers(n, lambda: good_worker(coord.address, coord.token, ctx)))
    assert_all_done(out["result"], n)
    assert out["result"].rejected == 0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [([], 16), (["--backend", "lambda"], 128), (["--max-handshakes", "5"], 5),
     (["--backend", "lambda", "--max-handshakes", "7"], 7)],
)
def test_handshake_bound_from_the_flags(argv: list[str], expected: int) -> None:
    from backends import get_backend
    from mu.cli import parse_png2y4m
    from mu.runopts import run_config

    _job, options, where = parse_png2y4m(argv)
    site = get_backend(where.backend, where)
    try:
        config = run_config(options, site, num_actors=1, offset=0)
    finally:
        site.close()
    assert config.max_handshakes == expected
