"""The relay in its own process (:class:`mu.relay_process.RelayProcess`): it relays over
mutual TLS as the in-process relay does, reports its statistics and a bind failure to its
parent, ignores Ctrl-C, and never outlives its parent."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mu.errors import ConfigError
from mu.relay_process import RelayProcess
from mu.tls import KeySet
from tests.integration.test_relay import TOKEN, Peer, client_context

ROOT = Path(__file__).resolve().parents[2]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def gone(pid: int, timeout: float = 20.0) -> bool:
    """Whether ``pid`` has exited (or is a zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)  # polling a pid we do not own: there is nothing to wait on
    return False


def test_the_relay_process_pairs_two_workers_over_tls_and_reports_its_statistics(
        keys: KeySet) -> None:
    ctx = client_context(keys)
    relay = RelayProcess(keys, TOKEN)
    relay.start()
    try:
        assert relay.address[0] == "127.0.0.1"
        a = Peer(relay.address, ctx).hello(0, 1)
        b = Peer(relay.address, ctx).hello(1, 0)
        payload = os.urandom(300_000)
        a.send(payload)
        b.send(b"back")
        assert b.recv() == payload and a.recv() == b"back"
        a.close()
        b.close()
    finally:
        relay.stop()
    stats = relay.stats()
    assert (stats.hellos, stats.frames, stats.bytes) == (2, 2, 300_004)
    assert relay.error is None
    relay.stop()  # idempotent


def test_a_port_taken_is_the_relays_own_config_error(keys: KeySet) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        relay = RelayProcess(keys, TOKEN, port=port)
        with pytest.raises(ConfigError,
                           match=f"^the relay cannot listen on 127.0.0.1:{port}: Address"):
            relay.start()
    relay.stop()


def test_the_relay_process_ignores_ctrl_c_and_dies_with_its_parent(keys: KeySet) -> None:
    # A parent that starts a relay, says its address, and waits to be killed.
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time
            from mu.relay_process import RelayProcess
            relay = RelayProcess(None, "t")
            relay.start()
            print(relay.address[1], flush=True)
            sys.stdin.read()
        """)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert parent.stdout is not None
        port = int(parent.stdout.readline())
        (child,) = children_of(parent.pid)
        os.kill(child, signal.SIGINT)  # as a terminal's Ctrl-C reaches the process group
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass  # still listening
        parent.kill()
        parent.wait()
        assert gone(child), "the relay process outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        if parent.stdin is not None:
            parent.stdin.close()
        if parent.stdout is not None:
            parent.stdout.close()
