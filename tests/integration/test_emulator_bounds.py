"""The emulator's resources are bounded: hostile or malformed clients, over real HTTP.

Raw sockets play the clients that misbehave at the HTTP level (idle, half-sent, oversized);
error answers are parsed by botocore's own parser, so each assertion is what boto3 sees.
Limits are configured small so that each bound shows in a few connections; the big
figures are measured by ``bench/emulator_bounds.py``.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.awsrequest import HeadersDict
from botocore.config import Config
from botocore.parsers import create_parser

from emulator.models import UNZIPPED_LIMIT
from emulator.s3 import S3Server
from emulator.server import Limits, ThreadedEmulatorServer
from tests.integration.test_emulator import (
    CREDS,
    ROLE,
    Gate,
    bundle,
    gone,
    invoke,
    make,
    wait_at_gate,
    wait_for,
)

_LAMBDA = botocore.session.get_session().get_service_model("lambda")


@contextlib.contextmanager
def emulator_at(tmp_path: Path, s3_url: str | None = None, **options: Any
                ) -> Iterator[tuple[ThreadedEmulatorServer, Any]]:
    """A private emulator and a boto3 client for it (one attempt per call)."""
    server = ThreadedEmulatorServer(state_dir=tmp_path / "state", s3_endpoint_url=s3_url,
                                    **options)
    server.start()
    try:
        client = boto3.client("lambda", endpoint_url=server.url, **CREDS, config=Config(
            retries={"max_attempts": 1}, read_timeout=120))
        yield server, client
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedEmulatorServer]:
    """One emulator for the tests that only send requests."""
    with emulator_at(tmp_path_factory.mktemp("shared")) as (server, _):
        yield server


def raw(server: ThreadedEmulatorServer, method: str, path: str, body: bytes = b"",
        operation: str = "CreateFunction", headers: dict[str, str] | None = None
        ) -> tuple[int, str, str]:
    """Send one request as bytes; (status, error code, message) as boto3 parses them."""
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={
            "Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    parsed = create_parser("rest-json").parse(
        {"status_code": resp.status, "headers": HeadersDict(resp.getheaders()), "body": data},
        _LAMBDA.operation_model(operation).output_shape)
    error = parsed.get("Error", {})
    return resp.status, error.get("Code", ""), error.get("Message", "")


def create_body(**overrides: Any) -> dict[str, Any]:
    import base64

    params: dict[str, Any] = {
        "FunctionName": "bounded", "Runtime": "python3.12", "Role": ROLE,
        "Handler": "handler.handler", "Code": {"ZipFile": base64.b64encode(bundle()).decode()}}
    params.update(overrides)
    return params


# ------------------------------------------------------------------- malformed parameters


@pytest.mark.parametrize(("body", "field"), [
    (json.dumps(create_body(MemorySize="abc")).encode(), "MemorySize 'abc'"),
    (json.dumps(create_body(Timeout=float("nan"))).encode(), "Timeout nan"),
    (json.dumps(create_body(Timeout=True)).encode(), "Timeout True"),
    (json.dumps(create_body(Code="s")).encode(), "Code 's'"),
    (json.dumps(create_body(FunctionName="trailing\n")).encode(), "FunctionName 'trailing\\n'"),
    (json.dumps(create_body(Runtime=["python3.12"])).encode(), "Runtime ['python3.12']"),
    (json.dumps(create_body(Architectures="x86_64")).encode(), "Architectures 'x86_64'"),
    (json.dumps(create_body(Description=5)).encode(), "Description 5"),
    (json.dumps(create_body(Publish="yes")).encode(), "Publish 'yes'"),
    (json.dumps(create_body(Handler=5)).encode(), "Handler 5"),
    (json.dumps(create_body(Handler="a b")).encode(), "Handler 'a b'"),
    (json.dumps(create_body(Environment={"Variables": {"A1": 1}})).encode(),
     "environment variable A1 has the value 1"),
    (json.dumps(create_body(Environment={"Variables": {"A=B": "x"}})).encode(), "'A=B'"),
    (json.dumps(create_body(Environment="x")).encode(), "Environment 'x'"),
    (json.dumps(create_body(Environment={"Variables": ["A"]})).encode(), "Environment"),
    (json.dumps(create_body(Environment={"Variables": {"BIG": "x" * 5000}})).encode(), "4096"),
    (b'{"FunctionName": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
])
def test_malformed_create_parameters_get_invalid_parameter_value(
    shared: ThreadedEmulatorServer, body: bytes, field: str
) -> None:
    status, code, message = raw(shared, "POST", "/2015-03-31/functions", body)
    assert (status, code) == (400, "InvalidParameterValueException"), message
    assert field in message
    assert "Traceback" not in message and "Error(" not in message
    assert not (shared.state_dir / "functions" / "bounded").exists()


@pytest.mark.parametrize(("params", "field"), [
    ({"MemorySize": "abc"}, "MemorySize 'abc'"),
    ({"Handler": 5}, "Handler 5"),
    ({"Environment": {"Variables": {"A1": 1}}}, "environment variable A1"),
    ({"Runtime": {}}, "Runtime {}"),
])
def test_malformed_configuration_updates_get_invalid_parameter_value(
    shared: ThreadedEmulatorServer, params: dict[str, Any], field: str
) -> None:
    client = boto3.client("lambda", endpoint_url=shared.url, **CREDS)
    name = make(client)
    status, code, message = raw(shared, "PUT", f"/2015-03-31/functions/{name}/configuration",
                                json.dumps(params).encode(), "UpdateFunctionConfiguration")
    assert (status, code) == (400, "InvalidParameterValueException") and field in message
    conf = client.get_function_configuration(FunctionName=name)
    assert conf["Handler"] == "handler.handler" and conf["MemorySize"] == 512  # unchanged


def test_names_ending_in_a_newline_and_deep_payloads_are_refused(
    shared: ThreadedEmulatorServer
) -> None:
    status, code, message = raw(shared, "GET", "/2015-03-31/functions/fn%0A", b"",
                                "GetFunction")
    assert (status, code) == (400, "InvalidParameterValueException") and "'fn\\n'" in message
    client = boto3.client("lambda", endpoint_url=shared.url, **CREDS)
    name = make(client)
    deep = b"[" * 100_000 + b"]" * 100_000
    status, code, message = raw(shared, "POST", f"/2015-03-31/functions/{name}/invocations",
                                deep, "Invoke")
    assert (status, code) == (400, "InvalidRequestContentException"), message


def test_boto3_sees_the_error_code_and_message(shared: ThreadedEmulatorServer) -> None:
    """boto3 without its own parameter checks sends what a raw client would."""
    client = boto3.client("lambda", endpoint_url=shared.url, **CREDS,
                          config=Config(parameter_validation=False))
    with pytest.raises(client.exceptions.InvalidParameterValueException) as info:
        client.create_function(FunctionName="bounded", Runtime="python3.12", Role=ROLE,
                               Handler="handler.handler", MemorySize="abc",
                               Code={"ZipFile": bundle()})
    assert info.value.response["Error"]["Message"] == (
        "MemorySize 'abc' is not an integer in 128-10240")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


# --------------------------------------------------------------- environments that cannot start


@pytest.mark.parametrize("fork_server", [True, False], ids=["fork-server", "spawn"])
def test_an_environment_that_cannot_start_fails_its_invocation_and_frees_its_slot(
    tmp_path: Path, fork_server: bool
) -> None:
    with emulator_at(tmp_path, fork_server=fork_server, concurrency_limit=2) as (server, lam):
        # AWS takes any string as a value; this one (a NUL byte) no process can be given.
        name = make(lam, Environment={"Variables": {"BROKEN": "a\x00b"}})
        events = [lam.invoke(FunctionName=name, InvocationType="Event", Payload=b"{}")
                  ["ResponseMetadata"]["RequestId"] for _ in range(3)]
        assert server.registry.wait_idle(60)  # every attempt ended: no slot kept
        for request_id in events:
            record = server.registry.invocation(request_id)
            assert record.status == "failed" and record.error is not None
            assert record.error["errorType"] == "Runtime.StartError"
        resp, out = invoke(lam, name, {})
        assert resp["StatusCode"] == 200 and resp["FunctionError"] == "Unhandled"
        assert out["errorType"] == "Runtime.StartError" and "null" in out["errorMessage"]
        good = make(lam)
        assert invoke(lam, good, {"x": 1})[1]["event"] == {"x": 1}


@pytest.mark.parametrize("fork_server", [True, False], ids=["fork-server", "spawn"])
@pytest.mark.parametrize("bad", [{"environment": {"NUMBER": 1}}, {"handler": 5}],
                         ids=["non-string-environment", "non-string-handler"])
def test_the_runner_ends_an_invocation_it_cannot_start(
    tmp_path: Path, fork_server: bool, bad: dict[str, Any]
) -> None:
    """Below the API's checks, the runner itself: whatever a process cannot be started
    with, the invocation ends (its ``on_done`` comes), failed."""
    from emulator.runner import Code, Runner

    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / "handler.py").write_bytes(bundle_source())
    code = Code(**{"name": "raw", "version": "$LATEST", "arn": "arn:raw",
                   "code_dir": str(code_dir), "handler": "handler.handler", "memory": 512,
                   "timeout": 30.0, **bad})
    runner = Runner(tmp_path / "state", fork_server=fork_server)
    try:
        result = runner.run(code, b"{}", "cannot-start")
    finally:
        runner.close()
    assert not result.ok and result.error is not None
    if "environment" in bad or fork_server:
        assert result.error["errorType"] == "Runtime.StartError"


def test_a_damaged_configuration_on_disk_is_skipped(tmp_path: Path) -> None:
    with emulator_at(tmp_path) as (_, lam):
        name = make(lam)
    conf_path = tmp_path / "state" / "functions" / name / "config.json"
    conf = json.loads(conf_path.read_text())
    conf["Environment"] = {"NUMBER": 1}
    conf_path.write_text(json.dumps(conf))
    with emulator_at(tmp_path) as (_, lam):
        with pytest.raises(lam.exceptions.ResourceNotFoundException):
            lam.get_function(FunctionName=name)
        assert invoke(lam, make(lam), {"y": 2})[1]["event"] == {"y": 2}


# ------------------------------------------------------------------------------ code zips


def zip_of(entries: list[tuple[str, bytes | int]]) -> bytes:
    """A zip of (name, bytes) entries, or (name, N) for N zero bytes written in chunks."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            if isinstance(data, bytes):
                z.writestr(name, data)
                continue
            with z.open(name, "w") as f:
                chunk = bytes(1 << 20)
                for _ in range(data // len(chunk)):
                    f.write(chunk)
    return buf.getvalue()


def nothing_left(state: Path, name: str) -> bool:
    unpacking = state / "unpacking"
    return not (state / "functions" / name).exists() and not (
        unpacking.exists() and any(unpacking.iterdir()))


def test_a_zip_above_250_mib_unzipped_is_refused_before_it_is_unpacked(tmp_path: Path) -> None:
    bomb = zip_of([("handler.py", b"def handler(e, c): return 1\n"),
                   ("zeros", UNZIPPED_LIMIT + (1 << 20))])
    assert len(bomb) < 1 << 20  # a small zip of a large file
    with emulator_at(tmp_path) as (server, lam):
        with pytest.raises(lam.exceptions.InvalidParameterValueException) as info:
            make(lam, FunctionName="bomb", zip=bomb)
        assert "Unzipped size must be smaller than 262144000 bytes" in str(info.value)
        assert nothing_left(server.state_dir, "bomb")
        with pytest.raises(lam.exceptions.ResourceNotFoundException):
            lam.get_function(FunctionName="bomb")
        # The same name can be created with a good zip afterwards.
        make(lam, FunctionName="bomb")
        assert invoke(lam, "bomb", {"z": 3})[1]["event"] == {"z": 3}


def test_a_zip_whose_headers_lie_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    honest = zip_of([("handler.py", b"x" * 1000), ("data", 8 << 20)])
    # Make the directory claim the 8 MiB entry holds 10 bytes: reading it past that is
    # refused (checksum), so no more than the sizes listed is ever written.
    lying = bytearray(honest)
    central = lying.rfind(b"PK\x01\x02")
    assert central > 0
    lying[central + 24:central + 28] = (10).to_bytes(4, "little")
    with emulator_at(tmp_path) as (server, lam):
        with pytest.raises(lam.exceptions.InvalidParameterValueException) as info:
            make(lam, FunctionName="liar", zip=bytes(lying))
        assert "Could not unzip uploaded file" in str(info.value)
        assert nothing_left(server.state_dir, "liar")


@pytest.mark.parametrize("bad", [
    ("../escape.py", b"x"),
    ("/abs/path.py", b"x"),
])
def test_a_zip_refused_halfway_leaves_nothing_behind(
    tmp_path: Path, bad: tuple[str, bytes]
) -> None:
    partial = zip_of([("handler.py", bundle_source()), ("lib/a.py", b"a = 1\n"), bad])
    with emulator_at(tmp_path) as (server, lam):
        with pytest.raises(lam.exceptions.InvalidParameterValueException) as info:
            make(lam, FunctionName="half", zip=partial)
        assert "escapes" in str(info.value)
        assert nothing_left(server.state_dir, "half")
        name = make(lam)
        with pytest.raises(lam.exceptions.InvalidParameterValueException):
            lam.update_function_code(FunctionName=name, ZipFile=partial)
        code_dirs = list((server.state_dir / "functions" / name).glob("code-*"))
        assert len(code_dirs) == 1  # the first code only
        assert invoke(lam, name, {"w": 4})[1]["event"] == {"w": 4}
    assert not (tmp_path / "state" / "unpacking").exists() or not any(
        (tmp_path / "state" / "unpacking").iterdir())


def bundle_source() -> bytes:
    with zipfile.ZipFile(io.BytesIO(bundle())) as z:
        return z.read("handler.py")


# -------------------------------------------------------------------------- HTTP connections


def closed_by_server(sock: socket.socket, timeout: float = 30) -> bytes:
    """Everything the server sends until it closes ``sock`` (bounded wait)."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


LISTING = b"GET /2015-03-31/functions/ HTTP/1.1\r\nHost: x\r\n\r\n"


def test_idle_and_half_sent_connections_are_closed(tmp_path: Path) -> None:
    limits = Limits(header_timeout=1, idle_timeout=1, request_timeout=2)
    with emulator_at(tmp_path, limits=limits) as (server, _):
        address = server.address
        with socket.create_connection(address) as idle, \
                socket.create_connection(address) as half, \
                socket.create_connection(address) as slow_body, \
                socket.create_connection(address) as served:
            half.sendall(b"GET /2015-03-31/functions/ HTTP/1.1\r\nHost:")
            slow_body.sendall(b"POST /2015-03-31/functions HTTP/1.1\r\nContent-Length: 100"
                              b"\r\n\r\n{")
            served.sendall(LISTING)
            assert closed_by_server(idle) == b""
            assert closed_by_server(half).startswith(b"HTTP/1.1 408 ")
            assert closed_by_server(slow_body) == b""
            # A keep-alive connection is answered, then closed once idle.
            assert closed_by_server(served).startswith(b"HTTP/1.1 200 OK")
        assert server._httpd is not None and server._httpd.timed_out == 4


def test_the_connection_cap_holds_and_the_emulator_keeps_answering(tmp_path: Path) -> None:
    with emulator_at(tmp_path, limits=Limits(connections=8)) as (server, lam):
        held = [socket.create_connection(server.address) for _ in range(60)]
        try:
            with socket.create_connection(server.address, timeout=60) as fresh:
                fresh.sendall(LISTING)
                assert fresh.recv(65536).startswith(b"HTTP/1.1 200 OK")
            assert lam.list_functions()["Functions"] == []  # boto3's own connection too
            closed = sum(closed_by_server(sock, timeout=30) == b"" for sock in held[:50])
            assert closed == 50  # the quiet ones went first, to make room
            assert server._httpd is not None and len(server._httpd._connections) <= 8
        finally:
            for sock in held:
                sock.close()


def test_a_body_above_the_operations_limit_is_refused_before_it_is_read(
    shared: ThreadedEmulatorServer
) -> None:
    with socket.create_connection(shared.address, timeout=60) as sock:
        # 7 MB declared, not one byte of it sent: the answer comes at once.
        sock.sendall(b"POST /2015-03-31/functions/any/invocations HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 7000000\r\n\r\n")
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 413 ")
        assert b"x-amzn-ErrorType: RequestTooLargeException" in head
        assert b"7000000 byte request body is above the limit of 6291456" in head
    # boto3 sending such a payload whole reads the same answer, not a reset.
    client = boto3.client("lambda", endpoint_url=shared.url, **CREDS,
                          config=Config(retries={"max_attempts": 1}))
    name = make(client)
    with pytest.raises(client.exceptions.RequestTooLargeException):
        client.invoke(FunctionName=name, Payload=b'"' + b"a" * 7_000_000 + b'"')
    with pytest.raises(client.exceptions.RequestTooLargeException):
        client.invoke(FunctionName=name, InvocationType="Event",
                      Payload=b'"' + b"a" * 2_000_000 + b'"')


def test_bodies_in_flight_share_one_budget(tmp_path: Path) -> None:
    head = (b"POST /2015-03-31/functions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 8000000\r\n\r\n")
    with emulator_at(tmp_path, limits=Limits(body_budget=10_000_000)) as (server, _):
        first = socket.create_connection(server.address, timeout=60)
        try:
            first.sendall(head + b"{")  # holds 8 MB of the budget while its body comes
            with socket.create_connection(server.address, timeout=60) as second:
                second.sendall(head)  # and no body: it is refused at once all the same
                answer = second.recv(65536)
            assert answer.startswith(b"HTTP/1.1 429 ")
            assert b"TooManyRequestsException" in answer and b"10000000" in answer
        finally:
            first.close()
        # Its budget is back once it is gone: a whole 8 MB body is read (and refused as
        # not JSON, which shows it was parsed).
        assert wait_for(lambda: server._httpd is not None and server._httpd.reserved == 0)
        status, code, _ = raw(server, "POST", "/2015-03-31/functions",
                              b"{" + b" " * 7_999_999)
        assert (status, code) == (400, "InvalidParameterValueException")


# ------------------------------------------------------------------------------ processes


def test_processes_kept_per_function_and_in_all_are_capped(
    s3_server: S3Server, tmp_path: Path
) -> None:
    with emulator_at(tmp_path, s3_server.url, kept=2) as (server, lam):
        names = [make(lam) for _ in range(5)]
        made: dict[str, set[int]] = {}  # each function's environments
        for name in names:
            assert invoke(lam, name, {"n": name})[1]["event"] == {"n": name}
            made[name] = {pid for pid in server.runner.environments().values() if pid} - set(
                pid for pids in made.values() for pid in pids)
        # Two zygotes, for the two functions invoked last; two idle environments in all,
        # those used last; the others' zygotes and environments have exited.
        assert [key[0] for key in server.runner._zygotes] == names[-2:]
        assert wait_for(lambda: len(server.runner.environments()) == 2)
        for name in names[:-2]:
            for pid in made[name]:
                assert wait_for(partial(gone, pid), timeout=30), (name, pid)
        # A function whose zygote was stopped starts a new one when invoked again.
        assert invoke(lam, names[0], {"again": 1})[1]["event"] == {"again": 1}
        assert [key[0] for key in server.runner._zygotes] == [names[-1], names[0]]


def test_making_room_never_fails_an_environment_being_forked(
    s3_server: S3Server, tmp_path: Path
) -> None:
    # One zygote kept: the first function's environment may still wait for its fork when
    # the second function asks for a zygote of its own. Stopping the first zygote then
    # would fail that invocation ("the zygote exited").
    with emulator_at(tmp_path, s3_server.url) as (server, lam):
        server.runner.kept_zygotes = 1
        names = [make(lam) for _ in range(2)]
        ids = [lam.invoke(FunctionName=name, InvocationType="Event",
                          Payload=json.dumps({"n": name}).encode())
               ["ResponseMetadata"]["RequestId"] for name in names]
        assert server.registry.wait_idle(60)
        assert [server.registry.invocation(i).status for i in ids] == ["succeeded"] * 2
        assert wait_for(lambda: len(server.runner._zygotes) == 1)  # room made once idle


def test_default_caps_and_negative_ones(tmp_path: Path) -> None:
    from emulator.runner import KEPT, KEPT_ZYGOTES, Runner

    runner = Runner(tmp_path)
    try:
        assert runner.kept_zygotes == KEPT_ZYGOTES == 2 and runner.kept == KEPT
    finally:
        runner.close()
    for kwargs, says in (({"kept": -1}, "kept environments -1"),
                         ({"warm_pool": -1}, "warm pool -1"),
                         ({"idle_timeout": -1.0}, "idle timeout -1")):
        with pytest.raises(ValueError, match=says):
            Runner(tmp_path, **kwargs)


@pytest.mark.parametrize("fork_server", [True, False], ids=["fork-server", "spawn"])
def test_a_function_deleted_while_it_runs_fails_that_invocation(
    s3_server: S3Server, tmp_path: Path, fork_server: bool
) -> None:
    with emulator_at(tmp_path, s3_server.url, fork_server=fork_server) as (server, lam):
        name = make(lam, Timeout=90)
        gate = Gate()  # never opened: the handler waits (60 s at most)
        outcome: list[Any] = []
        event = json.dumps({"action": "wait", "gate": gate.port})
        caller = threading.Thread(target=lambda: outcome.append(
            invoke(lam, name, json.loads(event))))
        caller.start()
        queued = wait_at_gate(lam, name, gate)["ResponseMetadata"]["RequestId"]
        assert wait_for(lambda: len(server.runner.pids()) == 2)
        lam.delete_function(FunctionName=name)
        caller.join(timeout=60)
        assert outcome, "the synchronous invoke did not end"
        resp, out = outcome[0]
        assert resp["FunctionError"] == "Unhandled"
        assert out == {"errorType": "Runtime.FunctionDeleted",
                       "errorMessage": f"function {name} was deleted while this invocation ran"}
        assert server.registry.wait_idle(30)
        assert server.registry.invocation(queued).status in ("failed", "dropped")
        assert not server.runner.pids()


# ------------------------------------------------------------------------- command line


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "mu.cli", "emulator"],
    [sys.executable, "-m", "emulator"],
], ids=["mu-emulator", "python-m-emulator"])
@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--concurrency", "0", "argument --concurrency: 0 is below the minimum of 1"),
    ("--port", "99999", "argument --port: 99999 is not a port number (0-65535)"),
    ("--warm-pool", "-1", "argument --warm-pool: -1 is below the minimum of 0"),
    ("--spares", "-2", "argument --spares: -2 is below the minimum of 0"),
    ("--idle-timeout", "x", "argument --idle-timeout: 'x' is not a number of seconds"),
    ("--s3-port", "70000", "argument --s3-port: 70000 is not a port number (0-65535)"),
])
def test_bad_emulator_flags_are_refused_with_one_line(
    tmp_path: Path, command: list[str], flag: str, value: str, says: str
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    done = subprocess.run([*command, "--state-dir", str(tmp_path / "state"), flag, value],
                          capture_output=True, text=True, timeout=120, check=False,
                          env=dict(os.environ, TMPDIR=str(tmp)))
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].endswith(says), done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert list(tmp.iterdir()) == []


def test_a_port_taken_is_one_line_and_leaves_no_temp_folder(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        for flag in ("--port", "--s3-port"):
            done = subprocess.run(
                [sys.executable, "-m", "emulator", "--state-dir", str(tmp_path / "state"),
                 flag, str(port)], capture_output=True, text=True, timeout=120, check=False,
                env=dict(os.environ, TMPDIR=str(tmp)))
            assert done.returncode == 1, done.stderr
            # (where no sandbox can be had, a warning says so first: not this test's subject)
            lines = [line for line in done.stderr.strip().splitlines()
                     if "handlers run without a sandbox" not in line]
            assert len(lines) == 1 and lines[0].startswith("python -m emulator: cannot start ")
            assert "Address already in use" in lines[0]
            assert list(tmp.iterdir()) == []
