"""The emulator through boto3 over HTTP: every API call and error, and invocation semantics.

Real processes run every invocation; a real moto S3 server receives what handlers write.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from emulator.runner import _children, invocation_logs, log_file
from emulator.s3 import S3Server
from emulator.server import ThreadedEmulatorServer

ROLE = "arn:aws:iam::123456789012:role/test"
CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
         "region_name": "us-east-1"}

HANDLER = b'''
import json, os, time
def handler(event, context):
    action = event.get("action")
    if action == "fail":
        raise ValueError("boom " + str(event.get("n", "")))
    if action == "sleep":
        time.sleep(event["seconds"])
    if action == "wait":  # until the test opens the gate (bounded)
        import socket
        print("waiting at the gate", flush=True)
        with socket.create_connection(("127.0.0.1", event["gate"]), timeout=60) as gate:
            gate.recv(1)
    if action == "hog":
        block = bytearray(event["mb"] * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(5)
    if action == "put":
        import boto3
        boto3.client("s3").put_object(Bucket=event["bucket"], Key=event["key"],
                                      Body=json.dumps({"pid": os.getpid()}).encode())
    if action == "fail-and-count":
        import boto3
        boto3.client("s3").put_object(Bucket=event["bucket"],
                                      Key=event["key"] + "/" + str(time.time_ns()), Body=b"")
        raise RuntimeError("counted failure")
    print("hello from the handler")
    return {"event": event, "name": context.function_name,
            "memory": context.memory_limit_in_mb, "request": context.aws_request_id,
            "arn": context.invoked_function_arn,
            "remaining": context.get_remaining_time_in_millis(),
            "env": {k: os.environ.get(k) for k in ("AWS_LAMBDA_FUNCTION_NAME",
                    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_REGION", "LAMBDA_TASK_ROOT",
                    "AWS_ENDPOINT_URL_S3", "TMPDIR", "GREETING")},
            "cwd": os.getcwd()}
'''


def bundle(source: bytes = HANDLER) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("handler.py", source)
    return buf.getvalue()


@pytest.fixture(scope="module", params=[True, False], ids=["fork-server", "spawn"])
def emulator(request: pytest.FixtureRequest, s3_server: S3Server,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedEmulatorServer]:
    server = ThreadedEmulatorServer(
        state_dir=tmp_path_factory.mktemp("state"), s3_endpoint_url=s3_server.url,
        fork_server=request.param, concurrency_limit=50,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def lam(emulator: ThreadedEmulatorServer) -> Any:
    return boto3.client("lambda", endpoint_url=emulator.url,
                        config=Config(retries={"max_attempts": 1}, read_timeout=120), **CREDS)


@pytest.fixture(scope="module")
def s3(s3_server: S3Server) -> Any:
    client = boto3.client("s3", endpoint_url=s3_server.url, **CREDS)
    client.create_bucket(Bucket="emu-bucket")
    return client


_names = iter(range(10_000))


def make(lam: Any, **kw: Any) -> str:
    name = kw.pop("FunctionName", f"fn{next(_names)}")
    # 512 MB unless a test is about memory: a handler that builds a boto3 client is close
    # to 128 MB once the fork server's shared pages are counted, as Lambda counts them.
    params = {"Runtime": "python3.12", "Role": ROLE, "Handler": "handler.handler",
              "MemorySize": 512}
    params.update(kw)
    zip_bytes = params.pop("zip", bundle())
    lam.create_function(FunctionName=name, Code={"ZipFile": zip_bytes}, **params)
    return str(name)


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> bool:
    """Bounded wait on an observable condition."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@contextlib.contextmanager
def mu_emulator(*args: str, **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """``mu emulator ARGS`` as a user starts it, its output piped; killed at the end if it
    has not stopped by then."""
    popen.setdefault("stderr", subprocess.PIPE)
    proc = subprocess.Popen([sys.executable, "-m", "mu.cli", "emulator", *args],
                            stdout=subprocess.PIPE, text=True, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def invoke(lam: Any, name: str, event: dict[str, Any], **kw: Any) -> tuple[dict[str, Any], Any]:
    resp = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode(), **kw)
    return resp, json.loads(resp["Payload"].read() or b"null")


class Gate:
    """What handlers wait at: a listener on 127.0.0.1 (a handler sees only its own /tmp, so
    no file of the test's); :meth:`touch` lets every waiter go, and any that comes later."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._lock = threading.Lock()
        self._open = False
        self._waiting: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                if not self._open:
                    self._waiting.append(conn)
                    continue
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"x")

    def touch(self) -> None:
        with self._lock:
            self._open, waiting, self._waiting = True, self._waiting, []
        for conn in waiting:
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"x")

    def close(self) -> None:
        self.touch()
        self.sock.close()


def wait_at_gate(lam: Any, name: str, gate: Gate) -> dict[str, Any]:
    """Start an Event invocation of ``name`` that runs until ``gate`` opens (60 s at most);
    the Invoke response."""
    event = json.dumps({"action": "wait", "gate": gate.port}).encode()
    resp: dict[str, Any] = lam.invoke(FunctionName=name, InvocationType="Event", Payload=event)
    return resp


# ----------------------------------------------------------------------------- API


def test_create_get_list_update_delete(lam: Any, emulator: ThreadedEmulatorServer) -> None:
    zip1 = bundle()
    conf = lam.create_function(
        FunctionName="crud", Runtime="python3.12", Role=ROLE, Handler="handler.handler",
        Code={"ZipFile": zip1}, MemorySize=256, Timeout=7, Architectures=["arm64"],
        Environment={"Variables": {"GREETING": "hi"}}, Description="d", Publish=True,
    )
    import hashlib

    assert conf["CodeSha256"] == base64.b64encode(hashlib.sha256(zip1).digest()).decode()
    assert conf["CodeSize"] == len(zip1) and conf["Version"] == "1"
    assert conf["MemorySize"] == 256 and conf["Timeout"] == 7
    assert conf["Architectures"] == ["arm64"] and conf["State"] == "Active"
    assert conf["FunctionArn"].endswith(":function:crud:1")
    got = lam.get_function(FunctionName="crud")
    assert got["Configuration"]["Environment"]["Variables"] == {"GREETING": "hi"}
    by_arn = lam.get_function_configuration(
        FunctionName="arn:aws:lambda:us-east-1:123456789012:function:crud")
    assert by_arn["FunctionName"] == "crud"
    assert "crud" in [f["FunctionName"] for f in lam.list_functions()["Functions"]]
    zip2 = bundle(HANDLER + b"\n# v2\n")
    updated = lam.update_function_code(FunctionName="crud", ZipFile=zip2)
    assert updated["CodeSize"] == len(zip2)
    _, out = invoke(lam, "crud", {"x": 1})
    assert out["env"]["GREETING"] == "hi"
    lam.delete_function(FunctionName="crud")
    with pytest.raises(lam.exceptions.ResourceNotFoundException, match="Function not found"):
        lam.get_function(FunctionName="crud")


def test_event_invoke_config(lam: Any) -> None:
    name = make(lam)
    with pytest.raises(lam.exceptions.ResourceNotFoundException, match="EventInvokeConfig"):
        lam.get_function_event_invoke_config(FunctionName=name)
    lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0)
    got = lam.get_function_event_invoke_config(FunctionName=name)
    assert got["MaximumRetryAttempts"] == 0
    with pytest.raises(lam.exceptions.InvalidParameterValueException):
        lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=5)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"Runtime": "nodejs20.x"}, "InvalidParameterValueException"),
        ({"MemorySize": 10241}, "InvalidParameterValueException"),
        ({"Timeout": 901}, "InvalidParameterValueException"),
        ({"zip": b"not a zip"}, "InvalidParameterValueException"),
    ],
)
def test_create_errors(lam: Any, kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(lam.exceptions.ClientError) as info:
        make(lam, **kwargs)
    assert info.value.response["Error"]["Code"] == error


def test_conflict_and_missing(lam: Any) -> None:
    name = make(lam)
    with pytest.raises(lam.exceptions.ResourceConflictException):
        make(lam, FunctionName=name)
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.invoke(FunctionName="nothing-here", Payload=b"{}")
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.delete_function(FunctionName="nothing-here")


def test_payload_limits(lam: Any) -> None:
    name = make(lam)
    big = json.dumps({"x": "a" * (6 * 1024 * 1024)}).encode()
    with pytest.raises(lam.exceptions.RequestTooLargeException):
        lam.invoke(FunctionName=name, Payload=big)
    medium = json.dumps({"x": "a" * (1024 * 1024)}).encode()
    with pytest.raises(lam.exceptions.RequestTooLargeException):
        lam.invoke(FunctionName=name, Payload=medium, InvocationType="Event")


# ----------------------------------------------------------------------------- invoke


def test_request_response_runs_in_a_lambda_like_process(
    lam: Any, emulator: ThreadedEmulatorServer
) -> None:
    name = make(lam, MemorySize=512, Timeout=30)
    resp, out = invoke(lam, name, {"hello": "world"}, LogType="Tail")
    assert resp["StatusCode"] == 200 and "FunctionError" not in resp
    assert out["event"] == {"hello": "world"} and out["name"] == name
    assert out["memory"] == "512" and 0 < out["remaining"] <= 30_000
    assert out["arn"].endswith(f":function:{name}")
    env = out["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == name and env["AWS_REGION"] == "us-east-1"
    assert env["AWS_ENDPOINT_URL_S3"] == emulator.s3_endpoint_url
    assert env["LAMBDA_TASK_ROOT"] == out["cwd"]
    if emulator.runner.sandbox:  # Lambda's layout: its own /tmp, the code at /var/task
        assert env["TMPDIR"] == "/tmp" and out["cwd"] == "/var/task"
    else:  # a private temp dir per environment
        assert Path(env["TMPDIR"]).parent == Path(emulator.runner._tmp)
    log = base64.b64decode(resp["LogResult"]).decode()
    assert "hello from the handler" in log and "START RequestId" in log


def test_handler_error_gives_function_error(lam: Any) -> None:
    name = make(lam)
    resp, out = invoke(lam, name, {"action": "fail", "n": 7})
    assert resp["FunctionError"] == "Unhandled"
    assert out["errorMessage"] == "boom 7" and out["errorType"] == "ValueError"
    assert any("ValueError" in line for line in out["stackTrace"])


def test_timeout_kills_the_invocation(lam: Any) -> None:
    name = make(lam, Timeout=1)
    resp, out = invoke(lam, name, {"action": "sleep", "seconds": 60})
    assert resp["FunctionError"] == "Unhandled"
    assert out["errorMessage"].endswith(" Task timed out after 1.00 seconds")


def test_memory_limit_kills_the_invocation(lam: Any) -> None:
    name = make(lam, MemorySize=128, Timeout=20)
    resp, out = invoke(lam, name, {"action": "hog", "mb": 300})
    assert resp["FunctionError"] == "Unhandled"
    assert out["errorType"] == "Runtime.OutOfMemory" and "128 MB" in out["errorMessage"]


def test_dry_run(lam: Any) -> None:
    name = make(lam)
    resp = lam.invoke(FunctionName=name, InvocationType="DryRun")
    assert resp["StatusCode"] == 204


def test_event_returns_at_once_and_the_handler_writes_to_s3(lam: Any, s3: Any) -> None:
    name = make(lam, Timeout=30)
    resp = lam.invoke(FunctionName=name, InvocationType="Event", Payload=json.dumps(
        {"action": "put", "bucket": "emu-bucket", "key": f"{name}/out"}).encode())
    assert resp["StatusCode"] == 202
    assert wait_for(lambda: "Contents" in s3.list_objects_v2(Bucket="emu-bucket",
                                                            Prefix=f"{name}/out"))


def test_event_accepted_before_the_function_runs(
    lam: Any, emulator: ThreadedEmulatorServer, tmp_path: Path
) -> None:
    name = make(lam, Timeout=90)
    gate = Gate()
    resp = wait_at_gate(lam, name, gate)
    assert resp["StatusCode"] == 202
    request_id = resp["ResponseMetadata"]["RequestId"]
    # The 202 came back while the invocation cannot have finished: its gate is still shut.
    assert emulator.registry._active >= 1
    assert emulator.registry.invocation(request_id).status in ("queued", "running")
    gate.touch()
    assert emulator.registry.wait_idle(60)
    record = emulator.registry.invocation(request_id)
    assert (record.status, record.attempts, record.kind) == ("succeeded", 1, "Event")
    assert [b"hello from the handler" in log
            for log in invocation_logs(Path(record.log_path), request_id)] == [True]


def test_async_retries_follow_the_invoke_config(
    lam: Any, s3: Any, emulator: ThreadedEmulatorServer
) -> None:
    counts: dict[int, str] = {}
    requests: dict[int, str] = {}
    for retries in (0, 2):
        name = make(lam)
        lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=retries)
        resp = lam.invoke(FunctionName=name, InvocationType="Event", Payload=json.dumps(
            {"action": "fail-and-count", "bucket": "emu-bucket", "key": name}).encode())
        counts[retries] = name
        requests[retries] = resp["ResponseMetadata"]["RequestId"]

    def attempts(name: str) -> int:
        found = s3.list_objects_v2(Bucket="emu-bucket", Prefix=name + "/")
        return len(found.get("Contents", []))

    for retries, name in counts.items():
        assert wait_for(partial(lambda n, r: attempts(n) >= r + 1, name, retries))
    assert emulator.registry.wait_idle(120)
    # Exactly one first attempt plus MaximumRetryAttempts retries, never more.
    assert {r: attempts(n) for r, n in counts.items()} == {0: 1, 2: 3}
    for retries, request_id in requests.items():
        record = emulator.registry.invocation(request_id)
        assert (record.status, record.attempts) == ("failed", retries + 1)
        assert record.error is not None and record.error["errorMessage"] == "counted failure"
        # Every attempt is in the one log of the request, in order, each with its END.
        assert Path(record.log_path) == log_file(emulator.state_dir, counts[retries])
        [logged] = invocation_logs(Path(record.log_path), request_id)
        log = logged.decode()
        assert log.count(f"START RequestId: {request_id}") == retries + 1
        assert log.count(f"END RequestId: {request_id}") == retries + 1


def test_hundred_concurrent_events_each_run_once(
    lam: Any, s3: Any, emulator: ThreadedEmulatorServer
) -> None:
    name = make(lam, Timeout=60)
    keys = [f"{name}/{i}" for i in range(100)]

    def fire(key: str) -> None:
        lam.invoke(FunctionName=name, InvocationType="Event", Payload=json.dumps(
            {"action": "put", "bucket": "emu-bucket", "key": key}).encode())

    threads = [threading.Thread(target=fire, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert emulator.registry.wait_idle(120)
    found = s3.list_objects_v2(Bucket="emu-bucket", Prefix=name + "/", MaxKeys=1000)
    assert sorted(o["Key"] for o in found["Contents"]) == sorted(keys)
    pids = {json.loads(s3.get_object(Bucket="emu-bucket", Key=k)["Body"].read())["pid"]
            for k in keys}
    # Warm starts: no more environments than the concurrency limit (50) ever ran at once.
    assert len(pids) <= 50


@contextlib.contextmanager
def one_slot_taken(
    s3_server: S3Server, tmp_path: Path
) -> Iterator[tuple[ThreadedEmulatorServer, Any, str, Gate]]:
    """An emulator with a concurrency limit of 1, its one slot held by an invocation
    waiting at a gate: (server, client, function name, gate)."""
    server = ThreadedEmulatorServer(state_dir=tmp_path, s3_endpoint_url=s3_server.url,
                                    concurrency_limit=1)
    server.start()
    try:
        client = boto3.client("lambda", endpoint_url=server.url,
                              config=Config(retries={"max_attempts": 1}), **CREDS)
        name = make(client, Timeout=90)
        gate = Gate()
        wait_at_gate(client, name, gate)
        yield server, client, name, gate
    finally:
        server.stop()


def test_concurrency_limit_refuses_sync_and_queues_events(
    s3_server: S3Server, tmp_path: Path
) -> None:
    with one_slot_taken(s3_server, tmp_path) as (server, client, name, gate):
        assert server.registry._active == 1  # held until the gate opens
        with pytest.raises(client.exceptions.TooManyRequestsException) as info:
            client.invoke(FunctionName=name, Payload=b"{}")
        assert info.value.response["Reason"] == "ConcurrentInvocationLimitExceeded"
        # Events beyond the limit wait in the queue, and run (once each) when the slot frees.
        queued = [client.invoke(FunctionName=name, InvocationType="Event", Payload=b"{}")
                  ["ResponseMetadata"]["RequestId"] for _ in range(3)]
        assert [server.registry.invocation(r).status for r in queued] == ["queued"] * 3
        gate.touch()
        assert server.registry.wait_idle(60)
        assert [(server.registry.invocation(r).status, server.registry.invocation(r).attempts)
                for r in queued] == [("succeeded", 1)] * 3


def test_events_queued_for_a_deleted_function_are_dropped(
    s3_server: S3Server, tmp_path: Path
) -> None:
    with one_slot_taken(s3_server, tmp_path) as (server, client, name, gate):
        # More queued events than Python's recursion limit: dropping them is a loop.
        queued = [server.registry.invoke(name, b"{}", "Event", False).request_id
                  for _ in range(3000)]
        client.delete_function(FunctionName=name)
        gate.touch()
        assert server.registry.wait_idle(60)
        assert {server.registry.invocation(r).status for r in queued} == {"dropped"}


@pytest.mark.parametrize("fork_server", [True, False], ids=["fork-server", "spawn"])
def test_stopping_leaves_no_process_behind(
    s3_server: S3Server, tmp_path: Path, fork_server: bool
) -> None:
    before = set(descendants(os.getpid()))  # e.g. other emulators' fork servers
    server = ThreadedEmulatorServer(state_dir=tmp_path, s3_endpoint_url=s3_server.endpoint_url,
                                    fork_server=fork_server)
    server.start()
    try:
        client = boto3.client("lambda", endpoint_url=server.endpoint_url, **CREDS)
        name = make(client, Timeout=60)
        for _ in range(3):
            client.invoke(FunctionName=name, InvocationType="Event",
                          Payload=json.dumps({"action": "sleep", "seconds": 60}).encode())
        assert wait_for(lambda: server.registry._active == 3)
        assert wait_for(lambda: len(server.runner.pids()) == 3)
        pids = list(server.runner.pids().values())
        forks = [z.proc.pid for z in server.runner._zygotes.values()]
        assert len(forks) == (1 if fork_server else 0)
        spares = [p for fork in forks for p in descendants(fork) if p not in pids]
    finally:
        server.stop()
    for pid in pids + forks + spares:
        assert wait_for(partial(gone, pid), timeout=10), pid
    # Nothing of this emulator's is left under us (processes of other fixtures may be).
    assert wait_for(lambda: set(descendants(os.getpid())) <= before, timeout=10)


def gone(pid: int) -> bool:
    """The process has exited (a zombie awaiting its reaper counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_logs_command(lam: Any, emulator: ThreadedEmulatorServer) -> None:
    name = make(lam)
    _, out = invoke(lam, name, {})
    request = out["request"]
    done = subprocess.run(
        [sys.executable, "-m", "emulator", "logs", name, request,
         "--state-dir", str(emulator.state_dir)],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0 and "hello from the handler" in done.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "emulator", "logs", "nobody", "--state-dir",
         str(emulator.state_dir)], capture_output=True, text=True, check=False)
    assert missing.returncode == 1 and "no logs" in missing.stderr


def test_logs_of_a_running_invocation(
    lam: Any, emulator: ThreadedEmulatorServer, tmp_path: Path
) -> None:
    name = make(lam, Timeout=60)
    gate = Gate()
    resp = wait_at_gate(lam, name, gate)
    request = resp["ResponseMetadata"]["RequestId"]

    def logs() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "emulator", "logs", name, request,
             "--state-dir", str(emulator.state_dir)], capture_output=True, text=True,
            check=False)

    # While it runs, its lines are in CloudWatch Logs already (the file comes at its end).
    logs_api = boto3.client("logs", endpoint_url=emulator.s3_endpoint_url, **CREDS)

    def streamed() -> str:
        emulator.runner.logs.flush()
        with contextlib.suppress(logs_api.exceptions.ResourceNotFoundException):
            found = logs_api.filter_log_events(logGroupName=f"/aws/lambda/{name}")
            return "\n".join(e["message"] for e in found["events"])
        return ""

    assert wait_for(lambda: f"START RequestId: {request}" in streamed()
                    and "waiting at the gate" in streamed())
    gate.touch()
    assert emulator.registry.wait_idle(60)
    done = logs()
    assert done.returncode == 0
    assert done.stdout.count("waiting at the gate") == 1 and f"END RequestId: {request}" in done.stdout
    assert len(invocation_logs(log_file(emulator.state_dir, name), request)) == 1


def test_http_framing_edges(emulator: ThreadedEmulatorServer) -> None:
    import socket

    host, port = emulator.address

    def exchange(raw: bytes) -> bytes:
        """Send ``raw``; everything the server answers until it closes the connection."""
        with socket.create_connection((host, port), timeout=60) as sock:
            sock.sendall(raw)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data

    assert exchange(b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert exchange(b"GET / HTTP/9\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert exchange(b"GET /x HTTP/1.1\r\nno colon here\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    chunked = exchange(b"POST /2015-03-31/functions/f/invocations HTTP/1.1\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 411 ")
    # HTTP/1.0 and "Connection: close" end the connection after the answer.
    listing = b"GET /2015-03-31/functions/ HTTP/1.0\r\n\r\n"
    assert exchange(listing).startswith(b"HTTP/1.1 200 OK\r\n")
    closing = b"GET /2015-03-31/functions/ HTTP/1.1\r\nConnection: close\r\n\r\n"
    assert exchange(closing).count(b"HTTP/1.1 200 OK") == 1
    # A client that waits for "100 Continue" before its body gets it.
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.sendall(b"POST /2015-03-31/functions/nobody/invocations HTTP/1.1\r\n"
                     b"Content-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"{}")
        assert sock.recv(65536).startswith(b"HTTP/1.1 404 ")


def test_unknown_route_names_the_path(emulator: ThreadedEmulatorServer) -> None:
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(emulator.url + "/2015-03-31/layers", timeout=10)
    body = info.value.read().decode()
    info.value.close()
    assert info.value.code == 404 and "/2015-03-31/layers" in body


def test_mu_emulator_serves_in_the_foreground_and_stops_on_sigterm(tmp_path: Path) -> None:
    import signal

    with mu_emulator("--state-dir", str(tmp_path)) as proc:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]  # readiness: both endpoints
        assert lines[0].startswith("Lambda API: http://127.0.0.1:")
        assert lines[1].startswith("S3:         http://127.0.0.1:")
        url = lines[0].split()[-1]
        client = boto3.client("lambda", endpoint_url=url, **CREDS)
        name = make(client, Timeout=60)
        client.invoke(FunctionName=name, InvocationType="Event",
                      Payload=json.dumps({"action": "sleep", "seconds": 60}).encode())
        exports = "".join(proc.stdout.readline() for _ in range(8))
        s3_url = lines[1].split()[-1]
        assert f"export AWS_ENDPOINT_URL_LAMBDA={url}" in exports
        assert f"Logs:       {s3_url}" in exports  # moto serves CloudWatch Logs too
        assert f"export AWS_ENDPOINT_URL_LOGS={s3_url}" in exports
        # The zygote and the environment it forked are both running.
        assert wait_for(lambda: len(descendants(proc.pid)) >= 2)
        kids = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        for pid in kids:
            assert wait_for(partial(gone, pid), timeout=10), pid


def test_a_functions_zygote_starts_when_its_code_is_set(tmp_path: Path) -> None:
    """As Lambda prepares a function while it is Pending: the zygote (the runtime's
    interpreter with boto3 and awslambdaric imported, no handler code) is ready before the
    first invocation, which then waits only for its own environment."""

    def zygotes(pid: int) -> list[int]:
        found = []
        for child in descendants(pid):
            with contextlib.suppress(OSError):
                if b"\0zygote\0" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(child)
        return found

    with mu_emulator("--state-dir", str(tmp_path)) as proc:
        assert proc.stdout is not None
        client = boto3.client("lambda", endpoint_url=proc.stdout.readline().split()[-1],
                              **CREDS)
        make(client)
        assert wait_for(lambda: bool(zygotes(proc.pid)))  # nothing invoked


def test_out_of_descriptors_the_emulator_waits_and_serves_again(tmp_path: Path) -> None:
    import resource
    import socket

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    proc = subprocess.Popen(
        [sys.executable, "-m", "emulator", "--state-dir", str(tmp_path), "--no-fork-server"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        preexec_fn=few_descriptors,
    )
    held: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        host, port = proc.stdout.readline().split()[-1].removeprefix("http://").split(":")
        listing = b"GET /2015-03-31/functions/ HTTP/1.1\r\nHost: x\r\n\r\n"
        for _ in range(80):  # more than it can accept: the rest wait in its backlog
            held.append(socket.create_connection((host, int(port)), timeout=60))
        for sock in held[:40]:
            sock.close()
        # Connections it accepted after descriptors freed up are served.
        last = held[-1]
        last.sendall(listing)
        assert last.recv(65536).startswith(b"HTTP/1.1 200 OK")
        assert proc.poll() is None
    finally:
        for sock in held:
            sock.close()
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children are listed per thread that started them)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = _children(todo.pop())
        found.extend(kids)
        todo.extend(kids)
    return found


def test_an_emulator_bug_is_a_500_service_exception_not_a_hang_up() -> None:
    from emulator.responses import Request, handle

    class Broken:
        def invoke(self, *args: Any) -> Any:
            raise RuntimeError("oops")

    resp = handle(Broken(), Request("POST", "/2015-03-31/functions/f/invocations", {}, b"{}"))  # type: ignore[arg-type]
    assert resp.status == 500 and resp.headers["x-amzn-ErrorType"] == "ServiceException"
    assert "oops" in json.loads(resp.body)["Message"]


def test_s3_server_on_a_taken_port_raises_at_once(s3_server: S3Server) -> None:
    taken = S3Server(port=s3_server.address[1])
    with pytest.raises(OSError):
        taken.start()
    taken.stop()  # nothing started: a no-op
    with S3Server() as other:
        assert other.address[0] == "127.0.0.1" and other.address[1] != s3_server.address[1]


def test_pipelined_requests_on_one_keep_alive_connection(
    lam: Any, emulator: ThreadedEmulatorServer
) -> None:
    import socket

    name = make(lam)
    host, port = emulator.address
    body = b"{}"
    request = (
        f"POST /2015-03-31/functions/{name}/invocations HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"X-Amz-Invocation-Type: Event\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.sendall(request * 5)  # all five before reading any answer
        data = b""
        while data.count(b"HTTP/1.1 202") < 5:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert emulator.registry.wait_idle(60)


def read_answers(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """The next ``count`` HTTP answers on ``sock``: (status, body) each."""
    buf, answers = b"", list[tuple[int, bytes]]()
    while len(answers) < count:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {answers}"
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                       if line.lower().startswith("content-length:")), 0)
        while len(buf) < length:
            chunk = sock.recv(65536)
            assert chunk, "closed inside an answer"
            buf += chunk
        answers.append((int(lines[0].split()[1]), buf[:length]))
        buf = buf[length:]
    return answers


def test_synchronous_invokes_wait_without_a_thread_and_answer_in_order(
    lam: Any, emulator: ThreadedEmulatorServer
) -> None:
    name = make(lam, Timeout=60)
    host, port = emulator.address
    gate = Gate()

    def invoke_request(kind: str, event: dict[str, Any]) -> bytes:
        body = json.dumps(event).encode()
        return (f"POST /2015-03-31/functions/{name}/invocations HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\nX-Amz-Invocation-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    get = f"GET /2015-03-31/functions/{name} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    try:
        with contextlib.ExitStack() as stack:
            socks = [stack.enter_context(socket.create_connection((host, port), timeout=60))
                     for _ in range(3)]
            for sock in socks:  # a synchronous invoke, and two requests pipelined behind it
                sock.sendall(invoke_request("RequestResponse", {"action": "wait",
                                                                "gate": gate.port})
                             + invoke_request("DryRun", {}) + get)
            assert wait_for(lambda: len(emulator.runner.pids()) == 3)
            # No thread waits for them (one that handled an earlier request may be ending),
            # and other clients are served meanwhile.
            assert wait_for(lambda: not any(t.name == "mu-emulator-request"
                                            for t in threading.enumerate()))
            assert lam.invoke(FunctionName=name, InvocationType="DryRun")["StatusCode"] == 204
            assert lam.get_function(FunctionName=name)["Configuration"]["FunctionName"] == name
            gate.touch()
            for sock in socks:
                answers = read_answers(sock, 3)
                assert [status for status, _ in answers] == [200, 204, 200]
                assert json.loads(answers[0][1])["name"] == name
                assert json.loads(answers[2][1])["Configuration"]["FunctionName"] == name
    finally:
        gate.close()


def test_aws_cli_lists_functions(lam: Any, emulator: ThreadedEmulatorServer) -> None:
    aws = shutil.which("aws")
    if aws is None:
        pytest.skip("the aws CLI is not installed")
    name = make(lam)
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1", AWS_PAGER="")
    done = subprocess.run(
        [aws, "lambda", "list-functions", "--endpoint-url", emulator.endpoint_url,
         "--output", "json"], capture_output=True, text=True, env=env, timeout=120,
        check=False)
    assert done.returncode == 0, done.stderr
    assert name in [f["FunctionName"] for f in json.loads(done.stdout)["Functions"]]
    missing = subprocess.run(
        [aws, "lambda", "get-function", "--function-name", "nothing-here",
         "--endpoint-url", emulator.endpoint_url], capture_output=True, text=True, env=env,
        timeout=120, check=False)
    assert missing.returncode != 0 and "ResourceNotFoundException" in missing.stderr


PROBE = b'''
import os, stat, sys, tempfile
def handler(event, context):
    if event.get("fail"):
        raise KeyError("missing")
    tmp = os.environ["TMPDIR"]
    with tempfile.NamedTemporaryFile(dir=None) as f:
        in_tmp = os.path.dirname(f.name) == tmp
    print("probe", event)
    return {
        "event": event, "name": context.function_name, "version": context.function_version,
        "memory": context.memory_limit_in_mb, "arn": context.invoked_function_arn,
        "log_group": context.log_group_name, "cwd_is_root": os.getcwd() == os.environ["LAMBDA_TASK_ROOT"],
        "path0_is_root": sys.path[0] == os.environ["LAMBDA_TASK_ROOT"],
        "own_group": os.getpgid(0) == os.getpid(), "tmp_private": tmp == "/tmp" or stat.S_IMODE(os.stat(tmp).st_mode) == 0o700,
        "tempfile_in_tmpdir": in_tmp, "stdin_empty": sys.stdin.read() == "",
        "env": {k: v for k, v in os.environ.items() if k not in (
            "TMPDIR", "AWS_LAMBDA_RUNTIME_API", "AWS_LAMBDA_LOG_STREAM_NAME", "_X_AMZN_TRACE_ID")},
    }
'''


def test_fork_server_and_plain_spawn_give_identical_results(tmp_path: Path) -> None:
    from emulator.runner import Code, Runner

    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / "probe.py").write_bytes(PROBE)
    code = Code(name="probe", version="$LATEST",
                arn="arn:aws:lambda:us-east-1:123456789012:function:probe",
                code_dir=str(code_dir), handler="probe.handler", memory=512, timeout=30.0,
                environment={"GREETING": "hi"}, sha="x")
    outcomes = {}
    for fork in (True, False):
        runner = Runner(tmp_path / f"state-{fork}", "http://127.0.0.1:9", fork_server=fork)
        try:
            ok = runner.run(code, b'{"n": 1}', f"req-ok-{fork}")
            bad = runner.run(code, b'{"fail": true}', f"req-bad-{fork}")
        finally:
            runner.close()
        assert ok.ok, ok.error
        assert b"probe {'n': 1}" in ok.log_tail()
        assert [b"probe {'n': 1}" in log for log in invocation_logs(Path(ok.log_path))] == [
            True, False]
        assert bad.error is not None
        outcomes[fork] = (ok.payload, bad.ok, bad.error["errorType"], bad.error["errorMessage"])
    assert outcomes[True] == outcomes[False]
    payload = outcomes[True][0]
    assert all(payload[k] for k in ("cwd_is_root", "path0_is_root", "own_group",
                                    "tmp_private", "tempfile_in_tmpdir", "stdin_empty"))
    assert payload["env"]["GREETING"] == "hi"
    assert payload["env"]["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:9"
    assert payload["env"]["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "512"
    assert outcomes[True][1:] == (False, "KeyError", "'missing'")


def test_command_line_forms() -> None:
    import argparse

    from emulator.cli import add_arguments

    parser = argparse.ArgumentParser(prog="mu emulator")
    add_arguments(parser)
    serve = parser.parse_args(["--port", "0", "--no-fork-server"])
    assert serve.action in (None, "serve") and serve.no_fork_server
    explicit = parser.parse_args(["--state-dir", "/s", "serve", "--concurrency", "5"])
    assert (explicit.action, explicit.state_dir, explicit.concurrency) == ("serve", "/s", 5)
    logs = parser.parse_args(["logs", "f", "r", "--state-dir", "/s"])
    assert (logs.action, logs.function, logs.request_id, logs.state_dir) == ("logs", "f", "r", "/s")
    assert parser.parse_args(["logs", "f"]).request_id is None


def test_launches_from_many_threads_at_once_all_end_in_warm_environments(
    tmp_path: Path
) -> None:
    """Invocations handed to the runner's loop from many threads at once each end once;
    a second wave runs in the environments the first made (no more are made)."""
    from emulator.runner import Code, Runner

    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / "probe.py").write_bytes(PROBE)
    code = Code(name="probe", version="$LATEST",
                arn="arn:aws:lambda:us-east-1:123456789012:function:probe",
                code_dir=str(code_dir), handler="probe.handler", memory=512, timeout=30.0)
    runner = Runner(tmp_path / "state", fork_server=True)
    ended: dict[str, list[Any]] = {}
    lock = threading.Lock()

    def record(request_id: str, result: Any) -> None:
        with lock:
            ended.setdefault(request_id, []).append(result)

    try:
        for wave in range(2):
            ids = [f"w{wave}-{i}" for i in range(8)]
            threads = [threading.Thread(target=runner.launch, args=(
                code, b"{}", rid, partial(record, rid))) for rid in ids]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert wait_for(lambda ids=ids: set(ids) <= ended.keys(), timeout=60)
            if wave == 0:
                made = set(runner.environments())
            assert all(len(ended[r]) == 1 and ended[r][0].ok for r in ids)
        assert wait_for(lambda: len(runner.environments()) == len(made))
        assert set(runner.environments()) == made  # the second wave ran warm
    finally:
        runner.close()


def test_hundreds_of_cold_starts_at_once_all_end(tmp_path: Path) -> None:
    """Regression: the runner's fork requests and the zygote's pid answers once filled the
    socket pair both ways when about 300 cold starts were asked for at once, and nothing
    started. Every one of 300 simultaneous cold starts ends, within a bounded wait."""
    from emulator.runner import Code, Runner

    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / "trivial.py").write_text("def handler(event, context):\n    return 1\n")
    code = Code(name="trivial", version="$LATEST",
                arn="arn:aws:lambda:us-east-1:123456789012:function:trivial",
                code_dir=str(code_dir), handler="trivial.handler", memory=128, timeout=120.0)
    runner = Runner(tmp_path / "state", fork_server=True, sandbox=False)
    results: list[Any] = []
    lock = threading.Lock()
    count = 300
    done = threading.Event()

    def record(result: Any) -> None:
        with lock:
            results.append(result)
            if len(results) == count:
                done.set()

    try:
        for i in range(count):
            runner.launch(code, b"{}", f"cold-{i}", record)
        assert done.wait(180), f"{len(results)} of {count} cold starts ended"
        assert all(r.ok and r.payload == 1 for r in results)
    finally:
        runner.close()
