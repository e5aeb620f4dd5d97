"""The worker on a reused (warm) Lambda execution environment: nothing of one invocation is
left in the next, and what Init made (the boto3 S3 client) is reused.

Two ways in, both real processes serving several invocations in a row against a scripted
coordinator over mutual TLS and a moto S3 server over HTTP:

* ``tests.warm_worker``: imports the handler once and calls it per invocation with
  ``awslambdaric``'s context class, reporting after each what the process holds (open
  descriptors and sockets, threads, children, its temporary folder, its environment, the
  S3 client);
* AWS's runtime interface client itself (``python -m awslambdaric``) against a small Lambda
  Runtime API served here, the process then looked at through ``/proc``.

The middle invocation is killed mid-job by the coordinator: it drops the connection while a
``run:`` job (and a detached process it started) is in flight. Waits are bounded; the
detached process reports its pid through a FIFO.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from emulator.s3 import S3Server
from mu.relay import Relay
from mu.tls import KeySet
from mu.worker.session import TMP_PREFIX, sweep_stale
from tests.worker_helpers import WAIT, Conn, ScriptedCoordinator, event_for, server_context

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "mu-warm-worker"

pytestmark = pytest.mark.skipif(
    not hasattr(os, "pidfd_open") or not os.path.isdir("/proc/self"),
    reason="needs Linux (/proc, pidfd_open)",
)


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> Iterator[Any]:
    client = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="in", Body=b"frame data\n")
    yield client
    client.close()


def lambda_env(s3_server: S3Server, tmp: Path) -> dict[str, str]:
    """A Lambda environment's variables, S3 pointing at moto, ``/tmp`` private to the test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    tmp.mkdir()
    env.update(
        AWS_LAMBDA_FUNCTION_NAME="warm", AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="1536", AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1", AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing", AWS_ENDPOINT_URL_S3=s3_server.endpoint_url,
        TMPDIR=str(tmp),
    )
    return env


def gone_within(pid: int, timeout: float = WAIT) -> bool:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


class Peer:
    """A TLS peer (the run's CA) that a worker's ``connect:`` reaches; accepts once."""

    def __init__(self, keys: KeySet) -> None:
        self.server = ScriptedCoordinator(server_context(keys))
        self.conns: queue.Queue[Conn] = queue.Queue()
        threading.Thread(target=lambda: self.conns.put(self.server.accept()), daemon=True).start()

    def command(self, first: str) -> str:
        return f"connect:127.0.0.1:{self.server.port}:{first}"

    def first_frame(self) -> str:
        return self.conns.get(timeout=WAIT).recv()

    def close(self) -> None:
        self.server.close()


@pytest.fixture(scope="module")
def relay(keys: KeySet) -> Iterator[str]:
    """The run's relay (``host:port``), for the payload's ``relay`` field."""
    with Relay(keys, "t0k3n") as server:  # event_for's token
        host, port = server.address
        yield f"{host}:{port}"


def full_session(conn: Conn, keys: KeySet) -> None:
    """Transfers both ways, a command that leaves a detached process, a peer link left open,
    named links through the relay with a file left unreceived."""
    assert conn.ask("retrieve:in\0data") == f"OK:RETRIEVE({BUCKET}/in)"
    answer = conn.ask("run:cat ##TMPDIR##/data > ##TMPDIR##/out; "
                      "(setsid sleep 300 >/dev/null 2>&1 &)")
    assert answer.startswith("OK:RETVAL(0)"), answer
    peer = Peer(keys)
    try:
        assert conn.ask(peer.command("hi")) == f"OK:CONNECT(127.0.0.1:{peer.server.port}:hi)"
        assert peer.first_frame() == "hi"
        assert conn.ask(f"upload:out-{uuid.uuid4().hex[:6]}\0out").startswith(
            f"OK:UPLOAD({BUCKET}/out-")
        # named links: this worker at both ends of one pairing (<me> 1 and 2)
        assert conn.ask("link:a:1:2") == "OK:LINK(a)"
        assert conn.ask("link:b:2:1") == "OK:LINK(b)"
        size, digest = len(b"frame data\n"), hashlib.sha256(b"frame data\n").hexdigest()
        for path in ("out", "got"):  # the second one arrives and is never received
            conn.send(f"send:a:{path}")
            assert sorted([conn.recv(), conn.recv()]) == [
                f"INFO:file:b:{size}:{digest}", f"OK:SEND(a:{size}:{digest})"]
            if path == "out":
                assert conn.ask("recv:b:got") == f"OK:RECV(b:{size}:{digest})"
        conn.send("quit:")
        conn.recv_eof()
    finally:
        peer.close()


def killed_mid_job(conn: Conn, keys: KeySet, fifo: Path) -> int:
    """A nonblock ``run:`` in flight, with a detached child, when the coordinator drops the
    connection; returns the detached child's pid."""
    peer = Peer(keys)
    try:
        assert conn.ask(peer.command("x")).startswith("OK:CONNECT(")
        assert conn.ask("link:c:3:4") == "OK:LINK(c)"
        assert conn.ask("seti:nonblock:1") == "OK:SETI(nonblock)"
        assert conn.ask("recv:c:x") == "OK:RECEIVING(c)"  # still waiting when the end comes
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            body = f"echo $$ > {fifo}; exec sleep 300"
            conn.send(f"run:setsid sh -c '{body}' >/dev/null 2>&1 & exec sleep 300")
            assert conn.recv().startswith("OK:RUNNING(")
            assert select.select([reader], [], [], WAIT)[0], "the detached process did not start"
            pid = int(os.read(reader, 100))
        finally:
            os.close(reader)
        conn.close()  # the coordinator goes away while the job runs
    finally:
        peer.close()
    return pid


def short_session(conn: Conn) -> None:
    assert conn.ask("retrieve:in\0again") == f"OK:RETRIEVE({BUCKET}/in)"
    assert conn.ask("upload:copy\0again") == f"OK:UPLOAD({BUCKET}/copy)"
    conn.send("quit:")
    conn.recv_eof()


class Harness:
    """``python -m tests.warm_worker``: one warm environment; a JSON line per report."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.warm_worker"], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.reports: queue.Queue[str] = queue.Queue()
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.reports.put(line)

    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self.reports.get(timeout=WAIT))
        return report

    def invoke(self, event: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(event) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=WAIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.pump.join(WAIT)  # at the end of the output
            assert self.proc.stdout is not None
            self.proc.stdout.close()


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_sweep_removes_only_directories_no_running_invocation_owns(tmp_path: Path) -> None:
    live = subprocess.Popen(["sleep", "300"])
    try:
        dead, me = dead_pid(), os.getpid()
        names = {
            f"{TMP_PREFIX}{dead}-abc": True,  # its process is gone
            f"{TMP_PREFIX}{me}-abc": True,  # this process's, and no invocation uses it
            f"{TMP_PREFIX}{live.pid}-abc": False,  # a live process's
            "mu-worker-cleanup": False,  # not a private directory's name
            "other": False,
        }
        for name in names:
            (tmp_path / name / "inner").mkdir(parents=True)
        (tmp_path / f"{TMP_PREFIX}{dead}-file").write_text("not a directory")
        removed = sweep_stale(str(tmp_path))
        assert sorted(removed) == sorted(str(tmp_path / n) for n, gone in names.items() if gone)
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == sorted([*(n for n, gone in names.items() if not gone),
                               f"{TMP_PREFIX}{dead}-file"])
    finally:
        live.kill()
        live.wait()


def non_sockets(fds: dict[str, str]) -> dict[str, str]:
    return {fd: target for fd, target in fds.items() if not target.startswith("socket:")}


def test_three_invocations_on_one_warm_environment(
    keys: KeySet, s3_server: S3Server, bucket: Any, relay: str, tmp_path: Path
) -> None:
    env = lambda_env(s3_server, tmp_path / "tmp")
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)
    # Left by a runtime that died mid-invocation in this environment (a timeout, a crash).
    stale = Path(env["TMPDIR"]) / f"{TMP_PREFIX}{dead_pid()}-left"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "frame.png").write_bytes(b"big")
    harness = Harness(env)
    summaries, reports = [], []
    try:
        init = harness.report()
        for session in ("full", "killed", "short"):
            with ScriptedCoordinator(server_context(keys)) as coord:
                event = event_for(keys, coord.port, bucket=BUCKET, region="us-east-1",
                                  relay=relay)
                harness.invoke(event)
                conn = coord.accept()
                assert conn.recv() == f"OK:HELLO:{event['token']}"
                assert conn.recv().startswith("INFO:lambda_request_id:")  # for the bill
                if session == "full":
                    full_session(conn, keys)
                elif session == "killed":
                    detached = killed_mid_job(conn, keys, fifo)
                else:
                    short_session(conn)
                report = harness.report()
            summaries.append(report["summary"]["exit"])
            reports.append(report)
    finally:
        harness.close()
    assert summaries == ["quit", "disconnected", "quit"]
    assert init["clients_made"] == ["s3"]
    assert gone_within(detached), f"the killed job's detached process {detached} lives on"
    assert init["context_class"] == "awslambdaric.lambda_context" or (
        init["context_class"] == "tests.warm_worker")
    moto_port = int(s3_server.endpoint_url.rsplit(":", 1)[1])
    for n, report in enumerate(reports, 1):
        where = f"after invocation {n}"
        assert report["children"] == [], where
        assert report["tmp"] == [], where  # the private directory went, nothing else came
        assert report["threads"] == init["threads"], where
        assert report["environ"] == init["environ"], where
        assert report["s3_client"] == init["s3_client"], where  # made at Init, reused
        assert report["clients_made"] == ["s3"], where  # at Init, and never again
        assert non_sockets(report["fds"]) == non_sockets(init["fds"]), where
        # Sockets: only the S3 client's pooled connections to S3 (kept for the next one).
        assert set(report["sockets"]) <= {f"tcp:{moto_port}"}, (where, report["sockets"])
        assert len(report["fds"]) == len(init["fds"]) + len(report["sockets"]), where
    assert len(reports[2]["sockets"]) <= len(reports[0]["sockets"])  # reused, not piled up


# --------------------------------------------------------------------------- awslambdaric


class RuntimeAPI:
    """The Lambda Runtime API (``/2018-06-01/runtime/...``) on 127.0.0.1: hands out the
    events put in :attr:`events` and collects what the runtime posts back."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self.results: queue.Queue[tuple[str, str, bytes]] = queue.Queue()
        self.waiting = threading.Event()  # the runtime asked for the next invocation
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                assert self.path == "/2018-06-01/runtime/invocation/next", self.path
                api.waiting.set()
                item = api.events.get()
                if item is None:  # the test is over
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                api.waiting.clear()
                request_id, body = item
                self.send_response(200)
                for name, value in (
                    ("Lambda-Runtime-Aws-Request-Id", request_id),
                    ("Lambda-Runtime-Deadline-Ms", str(int((time.time() + 300) * 1000))),
                    ("Lambda-Runtime-Invoked-Function-Arn",
                     "arn:aws:lambda:us-east-1:123456789012:function:warm"),
                    ("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000"),
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                ):
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self.path.split("/")  # /2018-06-01/runtime/invocation/ID/response
                api.results.put((parts[-2], parts[-1], body))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.events.put(None)
        self.server.shutdown()
        self.server.server_close()


def held_by(pid: int, tmp: Path) -> dict[str, Any]:
    """What process ``pid`` holds: descriptors, threads, children; and ``tmp``'s entries."""
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                data = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            if int(data[data.rfind(b")") + 2:].split()[1]) == pid:
                kids.append(int(name))
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": len(os.listdir(
        f"/proc/{pid}/task")), "children": kids, "tmp": sorted(os.listdir(tmp))}


def test_awslambdaric_runs_the_handler_warm(
    keys: KeySet, s3_server: S3Server, bucket: Any, relay: str, tmp_path: Path
) -> None:
    pytest.importorskip("awslambdaric")
    env = lambda_env(s3_server, tmp_path / "tmp")
    api = RuntimeAPI()
    env.update(AWS_LAMBDA_RUNTIME_API=api.address, LAMBDA_TASK_ROOT=str(ROOT / "function"),
               _HANDLER="lambda_function.lambda_handler", AWS_EXECUTION_ENV="AWS_Lambda_python3.11")
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "awslambdaric", "lambda_function.lambda_handler"],
        cwd=ROOT / "function", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    held = []
    try:
        assert api.waiting.wait(WAIT), "the runtime did not ask for an invocation"
        for session in ("full", "killed", "short"):
            with ScriptedCoordinator(server_context(keys)) as coord:
                event = event_for(keys, coord.port, bucket=BUCKET, region="us-east-1",
                                  relay=relay)
                request_id = str(uuid.uuid4())
                api.events.put((request_id, json.dumps(event).encode()))
                conn = coord.accept()
                assert conn.recv() == f"OK:HELLO:{event['token']}"
                assert conn.recv() == f"INFO:lambda_request_id:{request_id}"  # for the bill
                if session == "full":
                    full_session(conn, keys)
                elif session == "killed":
                    detached = killed_mid_job(conn, keys, fifo)
                else:
                    short_session(conn)
                got_id, kind, body = api.results.get(timeout=WAIT)
            assert (got_id, kind) == (request_id, "response"), body
            summary = json.loads(body)
            assert summary["exit"] == ("disconnected" if session == "killed" else "quit")
            assert api.waiting.wait(WAIT)  # back in `next`: between two invocations
            held.append(held_by(proc.pid, tmp_path / "tmp"))
        assert proc.poll() is None, "the environment died"
    finally:
        proc.kill()
        proc.wait()
        api.close()
    assert gone_within(detached)
    for n, state in enumerate(held, 1):
        assert state["children"] == [] and state["tmp"] == [], (n, state)
    assert held[1] == held[0] and held[2] == held[0], held
