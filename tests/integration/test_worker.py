"""The worker runtime against a scripted coordinator: real sockets, real TLS, real moto S3
over HTTP, real subprocesses.

Every response text is asserted exactly, because the command table is a wire contract.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mu.lambdaize import CORE_MODULES
from mu.protocol import encode_text
from mu.tls import KeySet, generate_keys
from mu.worker import session
from mu.worker.jobs import OUTPUT_LIMIT
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
BUCKET = "mu-worker-test"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A moto S3 bucket; the worker finds the server through AWS_ENDPOINT_URL_S3 only."""
    with moto_s3(monkeypatch, BUCKET) as client:
        yield client


def quit_and_join(conn: Conn, worker: WorkerThread) -> dict[str, Any]:
    conn.send("quit:")
    conn.recv_eof()
    summary = worker.join()
    assert summary["exit"] == "quit", summary
    assert not os.path.exists(summary["tmpdir"])
    return summary


# --------------------------------------------------------------------------- values


def test_value_commands_exact_responses(keys: KeySet) -> None:
    with connected_worker(keys) as (conn, worker):
        assert conn.ask("set:colour:blue") == "OK:SET(colour)"
        assert conn.ask("set:url:http://x:1/y") == "OK:SET(url)"
        assert conn.ask("get:url") == "OK:GET(http://x:1/y)"
        assert conn.ask("seti:n:42") == "OK:SETI(n)"
        assert conn.ask("get:n") == "OK:GET(42)"
        assert conn.ask("geti:colour") == "INFO:colour:blue"
        assert conn.recv() == "OK:GETI(colour)"
        assert conn.ask("get:nothing") == "FAIL(no such variable nothing)"
        assert conn.ask("geti:nothing") == "FAIL(no such variable nothing)"
        assert conn.ask("echo:hello: world") == "OK:ECHO(hello: world)"
        assert conn.ask("echo:") == "OK:ECHO()"
        dump = conn.ask("dump_vals:")
        assert dump.startswith("OK:DUMP_VALS:")
        vals = json.loads(dump.removeprefix("OK:DUMP_VALS:"))
        assert vals["colour"] == "blue" and vals["n"] == 42 and vals["nonblock"] == 0
        summary = quit_and_join(conn, worker)
    assert summary["commands"] == 12
    assert summary["errors"] == 2
    assert summary["last_error"] == "FAIL(no such variable nothing)"


def test_bad_syntax_and_unknown_commands_fail_and_keep_serving(keys: KeySet) -> None:
    with connected_worker(keys) as (conn, worker):
        assert conn.ask("seti:n:x") == "FAIL(seti: 'x' is not an integer)"
        assert conn.ask("set:k") == "FAIL(set: expected set:key:value, got set:k)"
        assert conn.ask("set::v") == "FAIL(set: expected set:key:value, got set::v)"
        assert conn.ask("get:") == "FAIL(get: expected get:key, got get:)"
        assert conn.ask("frobnicate:1") == "FAIL(no such command 'frobnicate')"
        assert conn.ask("") == "FAIL(no such command '')"
        assert conn.ask("connect:h:notaport:x") == (
            "FAIL(connect: port 'notaport' is not an integer)"
        )
        assert conn.ask("retrieve:keyonly") == (
            "FAIL(retrieve: expected retrieve: or retrieve:key\\0file, got 'keyonly')"
        )
        assert conn.ask("echo:still here") == "OK:ECHO(still here)"
        summary = quit_and_join(conn, worker)
    assert summary["errors"] == 8


def test_dump_vals_redacts_secrets(keys: KeySet) -> None:
    with connected_worker(keys, bucket="b", region="eu-west-1") as (conn, worker):
        conn.ask("set:token:s3cr3t")
        conn.ask(f"set:pem:{keys.worker_key.splitlines()[0]}")
        conn.ask("set:inkey:frames/1.png")
        vals = json.loads(conn.ask("dump_vals:").removeprefix("OK:DUMP_VALS:"))
        quit_and_join(conn, worker)
    assert vals["token"] == "<redacted>" and vals["pem"] == "<redacted>"
    assert vals["inkey"] == "frames/1.png"
    assert vals["bucket"] == "b" and vals["region"] == "eu-west-1"
    assert keys.worker_key not in json.dumps(vals)


# --------------------------------------------------------------------------- run


def test_run_templating_and_tmpdir(keys: KeySet, tmp_path: Path) -> None:
    (tmp_path / "tool").write_text('#!/bin/sh\necho tool "$@"\n')
    (tmp_path / "tool").chmod(0o755)
    fields = {"infile": "##TMPDIR##/in", "outfile": "out.y4m", "quality": "7", "vars": "X=1"}
    command = "./tool -o ##OUTFILE## -q ##QUALITY## ##INFILE##"
    with connected_worker(keys, command=command, cwd=str(tmp_path), **fields) as (conn, worker):
        tmpdir = conn.ask("run:echo ##TMPDIR##").split("OUTPUT(")[1].split("\n")[0]
        assert os.path.isdir(tmpdir) and tmpdir != str(tmp_path)
        conn.send("set:cmdargs:--last")
        assert conn.recv() == "OK:SET(cmdargs)"
        expected = f"X=1 ./tool -o out.y4m -q 7 {tmpdir}/in --last"
        assert conn.ask("run:") == (
            f"OK:RETVAL(0):OUTPUT(tool -o out.y4m -q 7 {tmpdir}/in --last\n):COMMAND({expected})"
        )
        quit_and_join(conn, worker)
    assert not os.path.exists(tmpdir)


def test_run_reports_every_exit_status_as_ok_retval(keys: KeySet, tmp_path: Path) -> None:
    """A non-zero exit is data (OK:RETVAL(n)); FAIL is for what the worker could not do."""
    with connected_worker(keys, cwd=str(tmp_path)) as (conn, worker):
        cmd = "echo bad input >&2; exit 3"
        assert conn.ask(f"run:{cmd}") == f"OK:RETVAL(3):OUTPUT(bad input\n):COMMAND({cmd})"
        assert conn.ask("run:kill -9 $$") == "OK:RETVAL(-9):OUTPUT():COMMAND(kill -9 $$)"
        missing = conn.ask("run:./no-such-tool")  # the shell ran: its status is the answer
        assert missing.startswith("OK:RETVAL(127):OUTPUT("), missing
        assert missing.endswith("not found\n):COMMAND(./no-such-tool)"), missing
        assert conn.ask("run:") == "FAIL(run: no command given and the function has none)"
        summary = quit_and_join(conn, worker)
    assert summary["errors"] == 1


def test_nonblock_run_reports_a_non_zero_exit_as_ok_retval(keys: KeySet) -> None:
    with connected_worker(keys, nonblock=1) as (conn, worker):
        assert conn.ask("run:exit 5") == "OK:RUNNING(exit 5)"
        assert conn.recv() == "OK:RETVAL(5):OUTPUT():COMMAND(exit 5)"
        summary = quit_and_join(conn, worker)
    assert summary["errors"] == 0


def test_run_that_cannot_start_fails(keys: KeySet, tmp_path: Path) -> None:
    gone = tmp_path / "removed"
    with connected_worker(keys, cwd=str(gone)) as (conn, worker):
        answer = conn.ask("run:true")
        summary = quit_and_join(conn, worker)
    assert answer.startswith(f"FAIL(run: cannot start 'true' in {gone}: "), answer
    assert summary["errors"] == 1


def test_run_output_is_bounded(keys: KeySet) -> None:
    with connected_worker(keys) as (conn, worker):
        cmd = "head -c 100000 /dev/zero | tr '\\0' a"
        response = conn.ask(f"run:{cmd}")
        quit_and_join(conn, worker)
    dropped = 100000 - OUTPUT_LIMIT
    assert response == (
        f"OK:RETVAL(0):OUTPUT({'a' * OUTPUT_LIMIT}...[output truncated: {dropped} more bytes "
        f"dropped]):COMMAND({cmd})"
    )


def test_nonblock_run_acks_then_completes(keys: KeySet) -> None:
    with connected_worker(keys, nonblock=1) as (conn, worker):
        assert conn.ask("run:echo one") == "OK:RUNNING(echo one)"
        assert conn.recv() == "OK:RETVAL(0):OUTPUT(one\n):COMMAND(echo one)"
        # Several jobs at once: the second finishes first because the first waits on it.
        fifo = os.path.join("##TMPDIR##", "gate")
        assert conn.ask(f"run:mkfifo {fifo}").startswith("OK:RUNNING(mkfifo /")
        assert conn.recv().startswith("OK:RETVAL(0)")
        first, second = f"cat {fifo}", f"echo go > {fifo}"
        assert conn.ask(f"run:{first}").startswith("OK:RUNNING(cat ")
        assert conn.ask(f"run:{second}").startswith("OK:RUNNING(echo go > ")
        done = {conn.recv(), conn.recv()}
        assert {d.split(":OUTPUT(")[1].split(")")[0] for d in done} == {"go\n", ""}
        assert conn.ask("seti:bg_silent:1") == "OK:SETI(bg_silent)"
        assert conn.ask("run:echo quiet") == "OK:RETVAL(0):OUTPUT(quiet\n):COMMAND(echo quiet)"
        summary = quit_and_join(conn, worker)
    assert summary["jobs"] == 5


def _wait_readable(fd: int) -> None:
    readable, _, _ = select.select([fd], [], [], WAIT)
    assert readable, "the background command did not start"


def test_disconnect_kills_background_job(keys: KeySet, tmp_path: Path) -> None:
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with connected_worker(keys, nonblock=1) as (conn, worker):
            assert conn.ask(f"run:echo $$ > {fifo}; exec sleep 60").startswith("OK:RUNNING(")
            _wait_readable(reader)
            pid = int(os.read(reader, 100))
            os.kill(pid, 0)  # the job runs
            conn.close()  # the coordinator goes away mid-job
            summary = worker.join()
    finally:
        os.close(reader)
    assert summary["exit"] == "disconnected"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped before run() returned


def test_disconnect_during_a_blocking_run_kills_it(keys: KeySet, tmp_path: Path) -> None:
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with connected_worker(keys) as (conn, worker):
            conn.send(f"run:echo $$ > {fifo}; exec sleep 60")  # blocking: no answer yet
            conn.send("echo:queued behind the run")
            _wait_readable(reader)
            pid = int(os.read(reader, 100))
            conn.close()
            summary = worker.join()
    finally:
        os.close(reader)
    assert summary["exit"] == "disconnected"
    assert summary["commands"] == 1  # the echo was never served
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_quit_then_close_during_a_blocking_run_is_a_quit(keys: KeySet) -> None:
    with connected_worker(keys) as (conn, worker):
        conn.send("run:exec sleep 60")
        conn.send("quit:")
        conn.close()
        summary = worker.join()
    assert summary["exit"] == "quit"
    assert summary["commands"] == 2


def test_blocking_commands_answer_in_order(keys: KeySet) -> None:
    with connected_worker(keys) as (conn, worker):
        for n in range(3):
            conn.send(f"run:echo {n}")
            conn.send(f"echo:{n}")
        answers = [conn.recv() for _ in range(6)]
        quit_and_join(conn, worker)
    assert answers == [
        text
        for n in range(3)
        for text in (f"OK:RETVAL(0):OUTPUT({n}\n):COMMAND(echo {n})", f"OK:ECHO({n})")
    ]


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs Linux pidfd_open")
def test_disconnect_kills_the_whole_process_group(keys: KeySet, tmp_path: Path) -> None:
    """A grandchild of the shell dies too (its exit is awaited through a pidfd, not a sleep)."""
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    pidfd = -1
    try:
        with connected_worker(keys, nonblock=1) as (conn, worker):
            conn.ask(f"run:sleep 60 & echo $! > {fifo}; wait")
            _wait_readable(reader)
            pid = int(os.read(reader, 100))
            pidfd = os.pidfd_open(pid)
            conn.close()
            assert worker.join()["exit"] == "disconnected"
        readable, _, _ = select.select([pidfd], [], [], WAIT)
        assert readable, f"grandchild {pid} survived the coordinator going away"
    finally:
        os.close(reader)
        if pidfd >= 0:
            os.close(pidfd)


def test_idle_timeout(keys: KeySet) -> None:
    with connected_worker(keys, timeout=1) as (conn, worker):
        conn.recv_eof()
        summary = worker.join()
    assert summary["exit"] == "idle_timeout"
    assert summary["reason"] == "no command for 1 seconds"


def test_plain_tcp_without_cacert(caplog: pytest.LogCaptureFixture) -> None:
    with connected_worker(None) as (conn, worker):
        assert conn.ask("echo:tcp") == "OK:ECHO(tcp)"
        quit_and_join(conn, worker)
    assert "plain TCP" in caplog.text


def test_coordinator_from_another_ca_is_refused(keys: KeySet) -> None:
    impostor = generate_keys(days=1)
    ctx = server_context(impostor, client_ca=keys.ca_cert)
    with ScriptedCoordinator(ctx) as coord:
        worker = WorkerThread(event_for(keys, coord.port))
        with pytest.raises((ssl.SSLError, ConnectionError, EOFError)):
            conn = coord.accept()
            conn.recv()  # never a hello
        summary = worker.join()
    assert summary["exit"] == "tls_error"
    assert "coordinator certificate rejected" in summary["reason"]
    assert summary["commands"] == 0


def test_missing_fields_and_refused_connection() -> None:
    summary = session.run({"mode": 1, "port": 1})
    assert summary["exit"] == "bad_event"
    assert summary["reason"] == "missing required field(s): addr, token"
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    summary = session.run(event_for(None, port))
    assert summary["exit"] == "connect_error"
    assert f"127.0.0.1:{port}" in summary["reason"]


def test_unusable_tls_material_is_a_bad_event(keys: KeySet) -> None:
    summary = session.run(event_for(keys, 1, cacert="not a pem"))
    assert summary["exit"] == "bad_event"
    assert summary["reason"].startswith("unusable TLS material in the payload: ")
    summary = session.run(event_for(keys, 1, wrkkey=""))
    assert summary["reason"] == "cacert is set but wrkcrt or wrkkey is missing"
    assert not os.path.exists(summary["tmpdir"])


class FakeLambdaContext:
    """Just the part of the Lambda context the worker reads."""

    def get_remaining_time_in_millis(self) -> int:
        return 1000  # the worker keeps one second in hand: stop at once


def test_lambda_deadline_ends_the_session(keys: KeySet) -> None:
    with ScriptedCoordinator(server_context(keys)) as coord:
        holder: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: holder.update(
                session.run(event_for(keys, coord.port), context=FakeLambdaContext())
            )
        )
        thread.start()
        conn = coord.accept()
        assert conn.recv() == "OK:HELLO:t0k3n"
        conn.recv_eof()
        thread.join(WAIT)
    assert holder["exit"] == "lambda_deadline"


# --------------------------------------------------------------------------- S3


def test_retrieve_and_upload_blocking(keys: KeySet, s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="in/00000007.png", Body=b"frame seven")
    with connected_worker(keys, bucket=BUCKET) as (conn, worker):
        assert conn.ask("set:inkey:in/00000007.png") == "OK:SET(inkey)"
        assert conn.ask("set:targfile:##TMPDIR##/00000007.png") == "OK:SET(targfile)"
        assert conn.ask("retrieve:") == f"OK:RETRIEVE({BUCKET}/in/00000007.png)"
        assert conn.ask("run:cat ##TMPDIR##/00000007.png").startswith(
            "OK:RETVAL(0):OUTPUT(frame seven):"
        )
        assert conn.ask("run:cp ##TMPDIR##/00000007.png ##TMPDIR##/copy").startswith("OK:RET")
        conn.ask("set:fromfile:##TMPDIR##/copy")
        conn.ask("set:outkey:out/copy")
        assert conn.ask("upload:") == f"OK:UPLOAD({BUCKET}/out/copy)"
        assert conn.ask("upload:out/second\0copy") == f"OK:UPLOAD({BUCKET}/out/second)"
        assert conn.ask("retrieve:out/second\0##TMPDIR##/back") == (
            f"OK:RETRIEVE({BUCKET}/out/second)"
        )
        quit_and_join(conn, worker)
    for key in ("out/copy", "out/second"):
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"frame seven"


def test_nonblock_transfers(keys: KeySet, s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="a", Body=b"A")
    with connected_worker(keys, bucket=BUCKET, nonblock=1) as (conn, worker):
        assert conn.ask("retrieve:a\0f") == f"OK:RETRIEVING({BUCKET}/a)"
        assert conn.recv() == f"OK:RETRIEVE({BUCKET}/a)"
        assert conn.ask("upload:b\0f") == f"OK:UPLOADING({BUCKET}/b)"
        assert conn.recv() == f"OK:UPLOAD({BUCKET}/b)"
        assert conn.ask("retrieve:nope\0f") == f"OK:RETRIEVING({BUCKET}/nope)"
        assert conn.recv().startswith(f"FAIL(retrieve s3://{BUCKET}/nope: NoSuchKey: ")
        quit_and_join(conn, worker)
    assert s3.get_object(Bucket=BUCKET, Key="b")["Body"].read() == b"A"


def test_s3_failures_name_bucket_key_and_code(keys: KeySet, s3: Any) -> None:
    with connected_worker(keys, bucket=BUCKET) as (conn, worker):
        assert conn.ask("retrieve:") == "FAIL(retrieve: no inkey set)"
        missing_key = conn.ask("retrieve:no/such.png\0x")
        assert missing_key.startswith(f"FAIL(retrieve s3://{BUCKET}/no/such.png: NoSuchKey: ")
        conn.ask("set:bucket:no-such-bucket-mu")
        missing_bucket = conn.ask("retrieve:k\0x")
        assert missing_bucket.startswith("FAIL(retrieve s3://no-such-bucket-mu/k: NoSuchBucket: ")
        assert conn.ask("upload:k\0absent").startswith(
            "FAIL(upload s3://no-such-bucket-mu/k: cannot read "
        )
        conn.ask("run:echo x > ##TMPDIR##/present")
        assert conn.ask("upload:k\0present").startswith(
            "FAIL(upload s3://no-such-bucket-mu/k: NoSuchBucket: "
        )
        conn.ask("set:bucket:")
        assert conn.ask("upload:k\0present") == "FAIL(upload: no bucket set)"
        assert conn.ask("echo:alive") == "OK:ECHO(alive)"
        summary = quit_and_join(conn, worker)
    assert summary["errors"] == 6


# --------------------------------------------------------------------------- peer link


def test_peer_link(keys: KeySet) -> None:
    peer_ctx = server_context(keys)
    with ScriptedCoordinator(peer_ctx) as peer_server, connected_worker(keys) as (conn, worker):
        accepted: list[Conn] = []
        thread = threading.Thread(target=lambda: accepted.append(peer_server.accept()))
        thread.start()
        assert conn.ask(f"connect:127.0.0.1:{peer_server.port}:hi peer") == (
            f"OK:CONNECT(127.0.0.1:{peer_server.port}:hi peer)"
        )
        thread.join(WAIT)
        peer = accepted[0]
        assert peer.recv() == "hi peer"
        peer.send("hello from the peer")
        assert conn.recv() == "INFO:peer:hello from the peer"
        assert conn.ask("connect:127.0.0.1:1:x").startswith("FAIL(connect: a peer link to ")
        assert conn.ask("close_connect:") == "OK:CLOSE_CONNECT"
        peer.recv_eof()
        assert conn.ask("close_connect:") == "OK:CLOSE_CONNECT"
        quit_and_join(conn, worker)


# --------------------------------------------------------------------------- mode 0 and the handler


def test_mode_0_runs_the_command_once(tmp_path: Path) -> None:
    summary = session.run(
        {"mode": 0, "infile": "in.png", "outfile": "##TMPDIR##/o", "args": "; exit 4"},
        command="echo ##INFILE## ##OUTFILE##",
        cwd=str(tmp_path),
    )
    tmpdir = summary["tmpdir"]
    assert summary["mode"] == 0 and summary["exit"] == "done"
    assert summary["retval"] == 4
    assert summary["output"] == f"in.png {tmpdir}/o\n"
    assert summary["command"] == f"echo in.png {tmpdir}/o ; exit 4"
    assert not os.path.exists(tmpdir)


def test_handler_reads_mu_command_json(tmp_path: Path) -> None:
    shutil.copy(ROOT / "function" / "lambda_function.py", tmp_path / "lambda_function.py")
    (tmp_path / "mu_command.json").write_text(json.dumps({"command": "echo from-json"}))
    code = (
        "import json, lambda_function as f\n"
        "print(json.dumps(f.lambda_handler({'mode': 0}, None)))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=WAIT,
    )
    summary = json.loads(out.stdout)
    assert summary["retval"] == 0 and summary["output"] == "from-json\n"


def test_symlinked_handler_is_the_same_file() -> None:
    link = ROOT / "mu" / "worker" / "lambda_function.py"
    assert link.is_symlink()
    assert link.resolve() == (ROOT / "function" / "lambda_function.py").resolve()


def test_isolated_import_stdlib_boto3_and_core_only(tmp_path: Path) -> None:
    """The handler imports with only the shipped files and boto3 on sys.path."""
    shutil.copy(ROOT / "function" / "lambda_function.py", tmp_path / "lambda_function.py")
    (tmp_path / "mu" / "worker").mkdir(parents=True)
    for name in ("__init__", *CORE_MODULES):  # what the bundle carries
        shutil.copy(ROOT / "mu" / f"{name}.py", tmp_path / "mu" / f"{name}.py")
    for source in (ROOT / "mu" / "worker").glob("*.py"):
        shutil.copy(source, tmp_path / "mu" / "worker" / source.name)
    (tmp_path / "mu_command.json").write_text(json.dumps({"command": "echo isolated"}))
    boto_dirs = sorted({str(Path(m.__file__).resolve().parents[1]) for m in _boto_modules()})
    code = (
        "import sys, json\n"
        f"sys.path[:] = [{str(tmp_path)!r}, *{boto_dirs!r}, *sys.path]\n"
        "import lambda_function\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('OpenSSL', 'cryptography', 'moto', 'pytest') or m in ('mu.tls', 'mu.net'))\n"
        "summary = lambda_function.lambda_handler({'mode': 0}, None)\n"
        "files = [lambda_function.__file__, sys.modules['mu'].__file__]\n"
        "print(json.dumps({'bad': bad, 'summary': summary, 'files': files}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["bad"] == []
    assert result["files"] == [
        str(tmp_path / "lambda_function.py"),
        str(tmp_path / "mu" / "__init__.py"),
    ]
    assert result["summary"]["output"] == "isolated\n"


def _boto_modules() -> list[Any]:
    import boto3
    import botocore

    return [boto3, botocore]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_versions(keys: KeySet, version: ssl.TLSVersion) -> None:
    with ScriptedCoordinator(server_context(keys, version=version)) as coord:
        worker = WorkerThread(event_for(keys, coord.port, nonblock=1))
        conn = coord.accept()
        assert isinstance(conn.sock, ssl.SSLSocket)
        assert conn.sock.version() == version.name.replace("_", ".")
        assert conn.recv() == "OK:HELLO:t0k3n"
        assert conn.ask("run:echo $((6*7))") == "OK:RUNNING(echo $((6*7)))"
        assert conn.recv() == "OK:RETVAL(0):OUTPUT(42\n):COMMAND(echo $((6*7)))"
        conn.send("quit:")
        conn.recv_eof()
        assert worker.join()["exit"] == "quit"


def test_hello_is_the_first_frame(keys: KeySet) -> None:
    with ScriptedCoordinator(server_context(keys)) as coord:
        worker = WorkerThread(event_for(keys, coord.port, token="abc"))
        conn = coord.accept()
        raw = conn.sock.recv(100)
        assert raw == encode_text("OK:HELLO:abc")
        conn.send("quit:")
        conn.recv_eof()
        assert worker.join()["exit"] == "quit"


# --------------------------------------------------------------------------- integrity


def test_upload_carries_a_verified_sha256_and_its_metadata(keys: KeySet, s3: Any) -> None:
    import base64
    import hashlib

    with connected_worker(keys, bucket=BUCKET) as (conn, worker):
        assert conn.ask("run:printf chunk-bytes > ##TMPDIR##/c").startswith("OK:RETVAL(0)")
        assert conn.ask("upload:out/c\0c") == f"OK:UPLOAD({BUCKET}/out/c)"
        quit_and_join(conn, worker)
    head = s3.head_object(Bucket=BUCKET, Key="out/c", ChecksumMode="ENABLED")
    digest = base64.b64encode(hashlib.sha256(b"chunk-bytes").digest()).decode()
    assert head["ChecksumSHA256"] == digest
    assert head["Metadata"] == {"mu-sha256": digest, "mu-size": "11"}


def test_download_with_a_wrong_recorded_digest_fails_naming_the_object(
    keys: KeySet, s3: Any
) -> None:
    s3.put_object(Bucket=BUCKET, Key="in/bad", Body=b"bytes", Metadata={"mu-sha256": "AAAA"})
    s3.put_object(Bucket=BUCKET, Key="in/plain", Body=b"bytes")  # no digest: nothing to check
    with connected_worker(keys, bucket=BUCKET) as (conn, worker):
        answer = conn.ask("retrieve:in/bad\0f")
        assert answer.startswith(f"FAIL(retrieve s3://{BUCKET}/in/bad: checksum mismatch: ")
        assert "recorded SHA-256 is AAAA" in answer
        assert conn.ask("retrieve:in/plain\0f") == f"OK:RETRIEVE({BUCKET}/in/plain)"
        quit_and_join(conn, worker)


# --------------------------------------------------------------------------- rehearsal faults


def test_fault_command_is_refused_outside_a_fault_run(keys: KeySet) -> None:
    with connected_worker(keys) as (conn, worker):
        answer = conn.ask("fault:drop:1:0.0:1")
        assert answer.startswith("FAIL(no such command 'fault'"), answer
        assert conn.ask("echo:still here") == "OK:ECHO(still here)"
        quit_and_join(conn, worker)


def test_bad_fault_plan_fails_and_the_worker_keeps_serving(keys: KeySet) -> None:
    with connected_worker(keys, faults=1) as (conn, worker):
        assert conn.ask("fault:melt:1:0.0:1").startswith("FAIL(fault: unknown fault 'melt'")
        assert conn.ask("echo:ok") == "OK:ECHO(ok)"
        quit_and_join(conn, worker)


def test_drop_fault_closes_the_connection_at_its_command(keys: KeySet) -> None:
    with connected_worker(keys, faults=1) as (conn, worker):
        conn.send("fault:drop:2:0.0:1")  # no response; fires at the second command after it
        assert conn.ask("echo:one") == "OK:ECHO(one)"
        conn.send("echo:two")
        conn.recv_eof()
        summary = worker.join()
    assert summary["exit"] == "fault"
    assert "dropped" in summary["reason"]


def test_hang_fault_answers_nothing_until_the_coordinator_gives_up(keys: KeySet) -> None:
    with connected_worker(keys, faults=1) as (conn, worker):
        conn.send("fault:hang:1:0.0:1")
        conn.send("echo:never answered")
        conn.close()  # the coordinator gives up on it
        summary = worker.join()
    assert summary["exit"] == "fault"
    assert "hung" in summary["reason"]
    assert summary["errors"] == 0 and summary["commands"] == 1  # only the fault: command


def test_s3_error_fault_fails_a_transfer_with_slowdown(keys: KeySet, s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="in/x", Body=b"x")
    with connected_worker(keys, bucket=BUCKET, faults=1) as (conn, worker):
        conn.send("fault::0:1.0:3")  # every S3 call fails, even the client's own retries
        answer = conn.ask("retrieve:in/x\0f")
        assert answer.startswith(f"FAIL(retrieve s3://{BUCKET}/in/x: SlowDown: "), answer
        assert "injected fault" in answer
        quit_and_join(conn, worker)


def test_crash_fault_ends_the_worker_process(keys: KeySet, tmp_path: Path) -> None:
    with ScriptedCoordinator(server_context(keys)) as coord:
        event = event_for(keys, coord.port, faults=1)
        (tmp_path / "event.json").write_text(json.dumps(event))
        code = (
            "import json, sys\n"
            "from mu.worker import session\n"
            f"session.run(json.load(open({str(tmp_path / 'event.json')!r})))\n"
            "sys.exit(0)\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
        try:
            conn = coord.accept()
            assert conn.recv() == f"OK:HELLO:{event['token']}"
            conn.send("fault:crash:1:0.0:1")
            conn.send("echo:boom")
            conn.recv_eof()
            assert proc.wait(WAIT) == 70
        finally:
            proc.kill()
            proc.wait()
