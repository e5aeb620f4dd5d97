"""The worker cleans up all it started, and transfers stay inside its private directory.

Real worker sessions (in a thread, or as a process of their own entered through the Lambda
handler) against a scripted coordinator over TLS; real shells and real detached processes.
Each detached process reports its own pid through a FIFO (the command waits for it), so the
test knows exactly what to look for; "gone" is checked through a pidfd or ``/proc`` with a
bounded wait, never a sleep.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mu.protocol import Retval
from mu.tls import KeySet
from tests.worker_helpers import (
    WAIT,
    Conn,
    ScriptedCoordinator,
    WorkerThread,
    connected_worker,
    event_for,
    moto_s3,
    server_context,
)

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "mu-worker-cleanup"

pytestmark = pytest.mark.skipif(
    not hasattr(os, "pidfd_open") or not os.path.isdir("/proc/self"),
    reason="needs Linux (/proc, pidfd_open)",
)

SLEEPER = "echo $$ > ##TMPDIR##/{name}; exec sleep 300"
"""What each detached process runs: report its pid through the FIFO, then outlive any test."""

LAUNCHES = {
    "background": "sh -c '{body}' >/dev/null 2>&1 &",
    "subshell": "(sh -c '{body}' &) >/dev/null 2>&1;",
    "setsid": "setsid sh -c '{body}' >/dev/null 2>&1 &",
    "setsid-in-subshell": "(setsid sh -c '{body}' >/dev/null 2>&1 &);",
    "holds-the-pipe": "setsid sh -c '{body}' &",
}


def detach(name: str, launch: str) -> str:
    """A ``run:`` command that starts one detached sleeper and prints its pid (``launch``
    ends with ``&`` or ``;``)."""
    fifo = f"##TMPDIR##/{name}"
    body = SLEEPER.format(name=name)
    return f"run:mkfifo {fifo}; {launch.format(body=body)} cat {fifo}"


def pid_of(answer: str) -> int:
    result = Retval.parse(answer)
    assert result is not None and result.status == 0, answer
    return int(result.output)


def stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name, or None once reaped."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].decode().split()


def running(pid: int) -> bool:
    fields = stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def gone_within(pid: int, timeout: float = WAIT) -> bool:
    """Whether ``pid`` has exited (or is already gone) within ``timeout`` seconds."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def group_alive(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that still run."""
    alive = []
    for name in os.listdir("/proc"):
        fields = stat(int(name)) if name.isdigit() else None
        if fields is not None and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            alive.append(int(name))
    return alive


def quit_and_join(conn: Conn, worker: WorkerThread) -> dict[str, Any]:
    conn.send("quit:")
    conn.recv_eof()
    summary = worker.join()
    assert summary["exit"] == "quit", summary
    return summary


# --------------------------------------------------------------------------- processes


@pytest.mark.parametrize("nonblock", [0, 1], ids=["blocking", "nonblock"])
def test_nothing_a_job_started_survives_quit(keys: KeySet, nonblock: int) -> None:
    pids: dict[str, int] = {}
    groups: dict[str, int] = {}
    with connected_worker(keys, nonblock=nonblock) as (conn, worker):
        for name, launch in LAUNCHES.items():
            conn.send(detach(name, launch))
            answer = conn.recv()
            if nonblock:
                assert answer.startswith("OK:RUNNING("), answer
                answer = conn.recv()
            pids[name] = pid_of(answer)
            groups[name] = int((stat(pids[name]) or ["", "", "0"])[2])
        quit_and_join(conn, worker)
    survivors = {name: pid for name, pid in pids.items() if not gone_within(pid)}
    assert survivors == {}, f"still running after quit: {survivors}"
    assert {name: group_alive(g) for name, g in groups.items() if g and group_alive(g)} == {}


def test_a_background_child_does_not_delay_the_answer(keys: KeySet) -> None:
    """The child sleeps 45 s, far beyond the bounded wait for the answer (WAIT = 20 s)."""
    assert WAIT < 45
    with connected_worker(keys) as (conn, worker):
        assert conn.ask("run:sleep 45 & echo bg") == (
            "OK:RETVAL(0):OUTPUT(bg\n):COMMAND(sleep 45 & echo bg)"
        )
        answer = conn.ask("run:sleep 45 & echo $!")
        assert answer.endswith(":COMMAND(sleep 45 & echo $!)"), answer
        child = pid_of(answer)
        # The command has ended, and what it left behind with it (before any quit).
        assert gone_within(child), f"background child {child} outlived its command"
        assert conn.ask("echo:still serving") == "OK:ECHO(still serving)"
        quit_and_join(conn, worker)


def test_a_nonblock_background_child_does_not_delay_the_answer(keys: KeySet) -> None:
    with connected_worker(keys, nonblock=1) as (conn, worker):
        assert conn.ask("run:sleep 45 & echo bg") == "OK:RUNNING(sleep 45 & echo bg)"
        assert conn.recv() == "OK:RETVAL(0):OUTPUT(bg\n):COMMAND(sleep 45 & echo bg)"
        summary = quit_and_join(conn, worker)
    assert summary["errors"] == 0


def test_disconnect_ends_detached_processes_of_a_running_job(
    keys: KeySet, tmp_path: Path
) -> None:
    """A job still running when the coordinator goes away takes its detached children along."""
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with connected_worker(keys, nonblock=1) as (conn, worker):
            body = f"echo $$ > {fifo}; exec sleep 300"
            conn.send(f"run:setsid sh -c '{body}' >/dev/null 2>&1 & exec sleep 300")
            assert conn.recv().startswith("OK:RUNNING(")
            readable, _, _ = select.select([reader], [], [], WAIT)
            assert readable, "the detached process did not start"
            pid = int(os.read(reader, 100))
            assert running(pid)
            conn.close()  # the job (exec sleep 300) still runs
            summary = worker.join()
    finally:
        os.close(reader)
    assert summary["exit"] == "disconnected"
    assert gone_within(pid), f"detached process {pid} outlived the connection"


def test_the_lambda_process_ends_even_unmarked_orphans(keys: KeySet, tmp_path: Path) -> None:
    """Entered through the handler, the worker owns its process: it is the child subreaper,
    so a process that detaches and clears its environment (no mark) is still ended."""
    launches = {**LAUNCHES, "env-cleared": "(setsid env -i sh -c '{body}' >/dev/null 2>&1 &);"}
    with ScriptedCoordinator(server_context(keys)) as coord:
        event = event_for(keys, coord.port)
        (tmp_path / "event.json").write_text(json.dumps(event))
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.worker_process", str(tmp_path / "event.json")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        try:
            conn = coord.accept()
            assert conn.recv() == f"OK:HELLO:{event['token']}"
            pids = {name: pid_of(conn.ask(detach(name, launch))) for name, launch in
                    launches.items()}
            conn.send("quit:")
            conn.recv_eof()
            out, _ = proc.communicate(timeout=WAIT)
        finally:
            proc.kill()
            proc.wait()
    summary = json.loads(out)
    assert summary["exit"] == "quit", summary
    survivors = {name: pid for name, pid in pids.items() if not gone_within(pid)}
    assert survivors == {}, f"still running after the invocation: {survivors}"


# --------------------------------------------------------------------------- paths


def tmpdir_of(conn: Conn) -> str:
    result = Retval.parse(conn.ask("run:echo ##TMPDIR##"))
    assert result is not None
    return result.output.strip()


def test_transfers_outside_the_private_directory_are_refused(
    keys: KeySet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not for S3")
    function = tmp_path / "function"
    function.mkdir()
    (function / "shipped.txt").write_text("part of the function")
    with moto_s3(monkeypatch, BUCKET) as s3, connected_worker(
        keys, bucket=BUCKET, cwd=str(function)
    ) as (conn, worker):
        s3.put_object(Bucket=BUCKET, Key="in", Body=b"payload")
        tmp = tmpdir_of(conn)
        private = "the worker's private directory"
        readable = f"{private} {tmp} or the function's directory {function} (read only)"

        def refused(command: str, what: str, path: str, real: str, where: str) -> None:
            assert conn.ask(command) == (
                f"FAIL({command.split(':')[0]}: {what} {path!r} resolves to {real}, "
                f"outside {where})"
            )

        # ../ out of the directory, in both forms of both commands.
        up = os.path.realpath(os.path.join(tmp, "..", "x"))
        refused("retrieve:in\0../x", "file", "../x", up, f"{private} {tmp}")
        refused("upload:out\0../x", "file", "../x", up, readable)
        assert conn.ask("set:targfile:##TMPDIR##/../x") == "OK:SET(targfile)"
        assert conn.ask("set:inkey:in") == "OK:SET(inkey)"
        refused("retrieve:", "targfile", "##TMPDIR##/../x", up, f"{private} {tmp}")
        # An absolute path elsewhere.
        secret = str(outside / "secret")
        refused(f"upload:out\0{secret}", "file", secret, secret, readable)
        refused(f"retrieve:in\0{secret}", "file", secret, secret, f"{private} {tmp}")
        # Symbolic links out of the directory: to a file, and through a directory.
        assert conn.ask(f"run:ln -s {secret} ##TMPDIR##/link").startswith("OK:RETVAL(0)")
        assert conn.ask(f"run:ln -s {outside} ##TMPDIR##/dir").startswith("OK:RETVAL(0)")
        refused("upload:out\0link", "file", "link", secret, readable)
        refused("retrieve:in\0link", "file", "link", secret, f"{private} {tmp}")
        refused("retrieve:in\0dir/new", "file", "dir/new", str(outside / "new"),
                f"{private} {tmp}")
        # The function's own directory is readable (upload) but never written (retrieve).
        shipped = str(function / "shipped.txt")
        assert conn.ask(f"upload:shipped\0{shipped}") == f"OK:UPLOAD({BUCKET}/shipped)"
        refused(f"retrieve:in\0{shipped}", "file", shipped, shipped, f"{private} {tmp}")
        # Inside the private directory all is well.
        assert conn.ask("retrieve:in\0sub-ok") == f"OK:RETRIEVE({BUCKET}/in)"
        assert conn.ask("upload:back\0##TMPDIR##/sub-ok") == f"OK:UPLOAD({BUCKET}/back)"
        quit_and_join(conn, worker)
        assert s3.get_object(Bucket=BUCKET, Key="back")["Body"].read() == b"payload"
        assert s3.get_object(Bucket=BUCKET, Key="shipped")["Body"].read() == (
            b"part of the function"
        )
        keys_in_bucket = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert keys_in_bucket == {"in", "back", "shipped"}  # nothing refused was uploaded
    assert (outside / "secret").read_text() == "not for S3"  # nothing refused was written
    assert not (outside / "new").exists()
