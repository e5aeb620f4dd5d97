"""``mu relay`` as a user runs it: a subprocess that pairs real TLS clients, stops on SIGINT
or SIGTERM with its statistics, and refuses bad flags, keys and ports in one line."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mu.tls import KeySet
from tests.integration.test_relay import Peer, client_context

WAIT = 30.0
TOKEN = "cli-run"


def env(home: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}


def mu(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mu.cli", *argv], capture_output=True,
                          text=True, env=env(cwd), cwd=cwd, timeout=60, check=False)


@contextmanager
def relay_process(argv: list[str], cwd: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen([sys.executable, "-m", "mu.cli", "relay", "--port", "0", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(cwd), cwd=cwd)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], WAIT)
        assert ready, "mu relay said nothing"
        line = proc.stdout.readline()
        assert line.startswith("mu relay: listening on 127.0.0.1:"), line
        yield proc, int(line.rsplit(":", 1)[1])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT)


def key_flags(key_dir: Path) -> list[str]:
    return ["-c", str(key_dir / "ca_cert.pem"), "-s", str(key_dir / "server_cert.pem"),
            "-k", str(key_dir / "server_key.pem")]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_mu_relay_pairs_tls_workers_and_prints_its_statistics_when_stopped(
        key_dir: Path, keys: KeySet, tmp_path: Path, sig: signal.Signals) -> None:
    with relay_process([*key_flags(key_dir), "--token", TOKEN], tmp_path) as (proc, port):
        ctx = client_context(keys)
        a = Peer(("127.0.0.1", port), ctx).hello(1, 2, TOKEN)
        b = Peer(("127.0.0.1", port), ctx).hello(2, 1, TOKEN)
        a.send(b"to two")
        assert b.recv() == b"to two"
        stranger = Peer(("127.0.0.1", port), ctx).hello(2, 1, "not-the-token")
        assert stranger.recv() == b"FAIL(relay: wrong run token in hello)"
        for peer in (a, b, stranger):
            peer.close()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    assert out.startswith("mu relay: 2 hellos in 1 run(s), 1 frames (6 bytes) relayed")
    assert "1 refused (wrong_token 1)" in out
    assert "Traceback" not in err


def test_mu_relay_without_tls(tmp_path: Path) -> None:
    with relay_process(["--no-tls"], tmp_path) as (proc, port):
        a = Peer(("127.0.0.1", port), None).hello(5, 5, "any")
        a.send(b"me")
        assert a.recv() == b"me"
        a.close()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0 and "1 hellos in 1 run(s)" in out


def test_a_port_in_use_is_one_line(key_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = mu(["relay", *key_flags(key_dir), "--port", str(port)], tmp_path)
    assert done.returncode == 2
    assert done.stderr == (f"mu: error: the relay cannot listen on 127.0.0.1:{port}: "
                           "Address already in use\n")


@pytest.mark.parametrize(("argv", "message"), [
    ([], "the relay needs its keys: give -c/CA_CERT, -s/SRV_CERT, -k/SRV_KEY (the run's CA "
         "and a certificate it signed, e.g. from `mu genkeys`), or --no-tls"),
    (["-c", "ca.pem"], "the relay needs its keys: give -s/SRV_CERT, -k/SRV_KEY"),
    (["-c", "nope.pem", "-s", "nope.pem", "-k", "nope.pem"],
     "cannot read CA certificate 'nope.pem': No such file or directory"),
    (["--no-tls", "--port", "http"], "--port 'http' is not a number"),
    (["--no-tls", "--port", "70000"], "relay port 70000 is not between 0 and 65535"),
    (["--no-tls", "-k", "key.pem"], "--no-tls and -c/-s/-k exclude each other"),
    (["--no-tls", "--host", "256.1.1.1"], "the relay cannot listen on 256.1.1.1:13337"),
])
def test_bad_flags_keys_and_ports_are_one_line(tmp_path: Path, argv: list[str],
                                               message: str) -> None:
    done = mu(["relay", *argv], tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"mu: error: {message}")
    assert done.stderr.count("\n") == 1 and done.stdout == ""


def test_keys_that_are_not_pem_are_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    done = mu(["relay", "-c", str(junk), "-s", str(junk), "-k", str(junk)], tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("mu: error: CA certificate ")
    assert "is not a PEM file" in done.stderr and done.stderr.count("\n") == 1


def test_relay_port_flag_reaches_the_run_options() -> None:
    import argparse

    from mu import cli
    from mu.options import RunOptions

    with_relay = argparse.ArgumentParser()
    cli._add_run_arguments(with_relay)
    cli.add_relay_arguments(with_relay)
    assert cli._run_options(with_relay.parse_args(["--relay-port", "0"])).relay_port == 0
    assert cli._run_options(with_relay.parse_args([])).relay_port == 13337
    without = argparse.ArgumentParser()
    cli._add_run_arguments(without)
    assert cli._run_options(without.parse_args([])).relay_port == RunOptions.relay_port == 13337
