"""Execution environments under AWS's runtime client, checked with boto3 (the referee).

Handlers run under ``awslambdaric`` through the emulator's Runtime API: what a handler that
prints, returns, raises, times out, exceeds memory or fails at import gets is what AWS's
client makes of it; warm environments keep globals and ``/tmp``; the logs are read back
through the CloudWatch Logs API; a handler cannot write outside its ``/tmp``.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from emulator.runner import sandbox_problem
from emulator.s3 import S3Server
from emulator.server import ThreadedEmulatorServer
from tests.integration.test_emulator import CREDS, ROLE, bundle, wait_for

HANDLER = b'''
import json, os, sys, time
COUNT = 0
def handler(event, context):
    global COUNT
    COUNT += 1
    action = event.get("action")
    print("printed", COUNT)
    print("to stderr", file=sys.stderr)
    if action == "raise":
        raise ValueError("no good")
    if action == "sleep":
        time.sleep(event["seconds"])
    if action == "hog":
        block = bytearray(event["mb"] * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(5)
    if action == "write":
        try:
            with open(event["path"], "w") as f:
                f.write("x")
            return "written"
        except OSError as exc:
            return "refused: " + exc.strerror
    if action == "delete":
        try:
            os.unlink(event["path"])
            return "deleted"
        except OSError as exc:
            return "refused: " + exc.strerror
    if action == "tmp":
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "mark")
        seen = os.path.exists(path)
        open(path, "w").close()
        return {"seen": seen}
    if action == "exit":
        os._exit(3)
    return {"count": COUNT, "pid": os.getpid(), "request": context.aws_request_id,
            "remaining": context.get_remaining_time_in_millis(),
            "group": context.log_group_name, "stream": context.log_stream_name,
            "version": context.function_version, "memory": context.memory_limit_in_mb,
            "env": {k: os.environ.get(k) for k in (
                "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION",
                "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME", "_HANDLER",
                "AWS_EXECUTION_ENV", "LAMBDA_TASK_ROOT", "AWS_LAMBDA_RUNTIME_API",
                "AWS_REGION", "AWS_ACCESS_KEY_ID")}}
'''

_names = iter(range(10_000))


@pytest.fixture(scope="module")
def emulator(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[ThreadedEmulatorServer]:
    server = ThreadedEmulatorServer(state_dir=tmp_path_factory.mktemp("state"),
                                    s3_endpoint_url=s3_server.url)
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
def logs(emulator: ThreadedEmulatorServer) -> Any:
    return boto3.client("logs", endpoint_url=emulator.s3_endpoint_url, **CREDS)


def make(lam: Any, source: bytes = HANDLER, **kw: Any) -> str:
    name = f"rt{next(_names)}"
    params: dict[str, Any] = {"Runtime": "python3.12", "Role": ROLE,
                              "Handler": "handler.handler", "MemorySize": 512, "Timeout": 30}
    params.update(kw)
    zip_bytes = params.pop("zip", bundle(source))
    lam.create_function(FunctionName=name, Code={"ZipFile": zip_bytes}, **params)
    return name


def call(lam: Any, name: str, event: Any) -> tuple[dict[str, Any], Any]:
    resp = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode())
    return resp, json.loads(resp["Payload"].read() or b"null")


def events(emulator: ThreadedEmulatorServer, logs: Any, name: str) -> dict[str, list[str]]:
    """Every log stream of ``name`` and its messages, read through the logs API."""
    assert emulator.runner.logs.flush()
    group = f"/aws/lambda/{name}"
    out: dict[str, list[str]] = {}
    for stream in logs.describe_log_streams(logGroupName=group)["logStreams"]:
        got = logs.get_log_events(logGroupName=group, logStreamName=stream["logStreamName"],
                                  startFromHead=True)
        out[stream["logStreamName"]] = [e["message"] for e in got["events"]]
    return out


# --------------------------------------------------------------------------- the referee


def test_a_return_value_the_context_and_the_environment_are_lambdas(
    lam: Any, emulator: ThreadedEmulatorServer
) -> None:
    name = make(lam, MemorySize=256, Timeout=20)
    resp, out = call(lam, name, {})
    assert resp["StatusCode"] == 200 and "FunctionError" not in resp
    assert out["request"] == resp["ResponseMetadata"]["RequestId"]
    assert 0 < out["remaining"] <= 20_000
    assert out["group"] == f"/aws/lambda/{name}" and out["memory"] == "256"
    assert out["version"] == "$LATEST"
    assert re.fullmatch(r"\d{4}/\d\d/\d\d/\[\$LATEST\][0-9a-f]{32}", out["stream"])
    env = out["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == name and env["_HANDLER"] == "handler.handler"
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"] == out["stream"]
    assert env["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.12"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", env["AWS_LAMBDA_RUNTIME_API"])
    assert env["AWS_ACCESS_KEY_ID"] and env["AWS_REGION"] == "us-east-1"


def test_a_raise_has_awslambdarics_error_shape(lam: Any) -> None:
    name = make(lam)
    resp, out = call(lam, name, {"action": "raise"})
    assert resp["FunctionError"] == "Unhandled"
    assert set(out) == {"errorMessage", "errorType", "requestId", "stackTrace"}
    assert (out["errorMessage"], out["errorType"]) == ("no good", "ValueError")
    assert out["requestId"] and any("handler.py" in line for line in out["stackTrace"])


def test_an_import_failure_is_an_init_error(lam: Any) -> None:
    name = make(lam, source=b"import no_such_module\ndef handler(e, c):\n    return 1\n")
    resp, out = call(lam, name, {})
    assert resp["FunctionError"] == "Unhandled"
    assert out["errorType"] == "Runtime.ImportModuleError"
    assert out["errorMessage"] == ("Unable to import module 'handler': No module named "
                                   "'no_such_module'")
    # The environment is gone; the next invocation tries Init again, and fails the same,
    # and awslambdaric's report of the failure is in the invocation's log.
    again = lam.invoke(FunctionName=name, Payload=b"{}", LogType="Tail")
    assert json.loads(again["Payload"].read())["errorType"] == "Runtime.ImportModuleError"
    tail = base64.b64decode(again["LogResult"]).decode()
    assert "[ERROR] Runtime.ImportModuleError: Unable to import module 'handler'" in tail


def test_a_zip_without_the_handler_and_a_missing_function_are_init_errors(lam: Any) -> None:
    name = make(lam, Handler="absent.handler")
    resp, out = call(lam, name, {})
    assert resp["FunctionError"] == "Unhandled"
    assert out["errorType"] == "Runtime.ImportModuleError" and "'absent'" in out["errorMessage"]
    other = make(lam, Handler="handler.nothing_here")
    assert call(lam, other, {})[1]["errorType"] == "Runtime.HandlerNotFound"


def test_an_unsupported_runtime_is_refused(lam: Any) -> None:
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as info:
        make(lam, Runtime="nodejs20.x")
    assert "runtime 'nodejs20.x' is not supported" in str(info.value)


def test_a_timeout_destroys_the_environment(lam: Any) -> None:
    name = make(lam, Timeout=1)
    first = call(lam, name, {})[1]
    resp, out = call(lam, name, {"action": "sleep", "seconds": 10})
    assert resp["FunctionError"] == "Unhandled"
    assert out["errorType"] == "Sandbox.Timedout"
    assert out["errorMessage"].endswith(" Task timed out after 1.00 seconds")
    after = call(lam, name, {})[1]
    assert after["count"] == 1 and after["pid"] != first["pid"]  # a cold start


def test_a_memory_kill_destroys_the_environment(lam: Any) -> None:
    name = make(lam, MemorySize=128)
    resp, out = call(lam, name, {"action": "hog", "mb": 300})
    assert resp["FunctionError"] == "Unhandled" and out["errorType"] == "Runtime.OutOfMemory"
    assert call(lam, name, {})[1]["count"] == 1


def test_an_environment_that_exits_mid_invocation_fails_it_and_the_next_is_cold(
    lam: Any
) -> None:
    name = make(lam)
    resp, out = call(lam, name, {"action": "exit"})
    assert resp["FunctionError"] == "Unhandled" and out["errorType"] == "Runtime.ExitError"
    assert call(lam, name, {})[1]["count"] == 1


# ------------------------------------------------------------------------- lifecycle


def test_warm_environments_keep_globals_and_tmp(lam: Any) -> None:
    name = make(lam)
    runs = [call(lam, name, {})[1] for _ in range(3)]
    assert [r["count"] for r in runs] == [1, 2, 3]
    assert len({r["pid"] for r in runs}) == 1
    assert call(lam, name, {"action": "tmp"})[1] == {"seen": False}
    assert call(lam, name, {"action": "tmp"})[1] == {"seen": True}


def test_idle_environments_are_reaped(s3_server: S3Server, tmp_path: Path) -> None:
    with ThreadedEmulatorServer(state_dir=tmp_path, s3_endpoint_url=s3_server.url,
                                idle_timeout=0.2) as server:
        client = boto3.client("lambda", endpoint_url=server.url, **CREDS)
        name = make(client)
        assert call(client, name, {})[1]["count"] == 1
        assert wait_for(lambda: not server.runner.environments())
        assert call(client, name, {})[1]["count"] == 1  # cold again


def test_a_warm_pool_is_made_ahead_and_its_first_invocation_has_no_init(
    s3_server: S3Server, tmp_path: Path
) -> None:
    with ThreadedEmulatorServer(state_dir=tmp_path, s3_endpoint_url=s3_server.url,
                                warm_pool=2) as server:
        client = boto3.client("lambda", endpoint_url=server.url, **CREDS)
        name = make(client)
        assert wait_for(lambda: len(server.runner._idle.get(
            next(iter(server.runner._idle), ("", "")), [])) == 2)
        made = set(server.runner.environments())
        resp = client.invoke(FunctionName=name, Payload=b"{}", LogType="Tail")
        assert json.loads(resp["Payload"].read())["count"] == 1
        assert set(server.runner.environments()) == made
        report = base64.b64decode(resp["LogResult"]).decode()
        assert "REPORT RequestId:" in report and "Init Duration" not in report


def test_spares_take_cold_starts_after_warm_ones_and_are_made_again(
    s3_server: S3Server, tmp_path: Path
) -> None:
    with ThreadedEmulatorServer(state_dir=tmp_path, s3_endpoint_url=s3_server.url,
                                spares=2) as server:
        client = boto3.client("lambda", endpoint_url=server.url, **CREDS)
        name = make(client)
        first = call(client, name, {})[1]
        runner = server.runner

        def spares() -> list[Any]:
            return [e for envs in runner._spare.values() for e in envs]

        assert wait_for(lambda: len(spares()) == 2)
        made = {e.pid for e in spares()}
        # A warm environment goes first: the spares wait for invocations that find none.
        resp = client.invoke(FunctionName=name, Payload=b"{}", LogType="Tail")
        warm = json.loads(resp["Payload"].read())
        assert (warm["pid"], warm["count"]) == (first["pid"], 2)
        assert "Init Duration" not in base64.b64decode(resp["LogResult"]).decode()
        # Two at once: one is warm, the other a spare's first invocation, which is a cold
        # start (fresh globals, Init Duration in its REPORT).
        def run(_: int) -> tuple[Any, str]:
            resp = client.invoke(FunctionName=name, LogType="Tail", Payload=json.dumps(
                {"action": "sleep", "seconds": 1}).encode())
            return (json.loads(resp["Payload"].read()),
                    base64.b64decode(resp["LogResult"]).decode())

        with ThreadPoolExecutor(2) as pool:
            runs = list(pool.map(run, range(2)))
        runs.sort(key=lambda r: r[0]["count"])
        (spare, spare_log), (warm, warm_log) = runs
        assert (warm["pid"], warm["count"]) == (first["pid"], 3)
        assert "Init Duration" not in warm_log
        assert spare["pid"] in made and spare["count"] == 1
        assert "Init Duration" in spare_log
        assert wait_for(lambda: len(spares()) == 2)  # made again after the burst


# ------------------------------------------------------------------------------ logs


def test_logs_are_lambdas_lines_in_cloudwatch_logs(
    lam: Any, emulator: ThreadedEmulatorServer, logs: Any
) -> None:
    name = make(lam)
    ids = [call(lam, name, {})[1]["request"] for _ in range(2)]
    streams = events(emulator, logs, name)
    assert len(streams) == 1  # one environment: one stream
    lines = next(iter(streams.values()))
    first, second = ids
    assert lines[0] == f"START RequestId: {first} Version: $LATEST"
    assert "printed 1" in lines and "to stderr" in lines
    report = [line for line in lines if line.startswith("REPORT")]
    assert len(report) == 2
    pattern = (r"REPORT RequestId: {}\tDuration: [\d.]+ ms\tBilled Duration: \d+ ms\t"
               r"Memory Size: 512 MB\tMax Memory Used: \d+ MB{}\s*")
    assert re.fullmatch(pattern.format(first, r"\tInit Duration: [\d.]+ ms"), report[0])
    assert re.fullmatch(pattern.format(second, ""), report[1])
    assert f"END RequestId: {second}" in lines


def test_an_errors_lines_are_in_the_log(
    lam: Any, emulator: ThreadedEmulatorServer, logs: Any
) -> None:
    name = make(lam)
    call(lam, name, {"action": "raise"})
    lines = [m for ms in events(emulator, logs, name).values() for m in ms]
    assert any(m.startswith("[ERROR] ValueError: no good") for m in lines)


def test_the_aws_cli_reads_the_logs_where_installed(
    lam: Any, emulator: ThreadedEmulatorServer
) -> None:
    aws = shutil.which("aws") or str(Path(sys.executable).parent / "aws")
    if not Path(aws).exists():
        pytest.skip("the aws CLI is not installed")
    name = make(lam)
    call(lam, name, {})
    assert emulator.runner.logs.flush()
    done = subprocess.run(
        [aws, "logs", "filter-log-events", "--log-group-name", f"/aws/lambda/{name}",
         "--endpoint-url", emulator.s3_endpoint_url, "--region", "us-east-1"],
        capture_output=True, text=True, timeout=120, check=False,
        env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
             "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "START RequestId" in done.stdout


# ---------------------------------------------------------------------------- sandbox


needs_sandbox = pytest.mark.skipif(sandbox_problem() is not None,
                                   reason=f"no sandbox here: {sandbox_problem()}")


@needs_sandbox
def test_a_handler_cannot_write_or_delete_outside_its_tmp(
    lam: Any, tmp_path: Path
) -> None:
    victim = Path.home() / ".cache" / "mu"  # a folder of the user's that exists
    victim.mkdir(parents=True, exist_ok=True)
    name = make(lam)
    for path in (str(victim / "written-by-a-handler"), "/etc/written-by-a-handler",
                 "/var/task/new.py"):
        assert call(lam, name, {"action": "write", "path": path})[1] == (
            "refused: Read-only file system")
        assert not Path(path).exists()
    assert call(lam, name, {"action": "write", "path": "/tmp/mine"})[1] == "written"
    assert not Path("/tmp/mine").exists()  # its /tmp is its own


SHOWN = b'''
import os
def handler(event, context):
    folder = event["folder"]
    seen = open(os.path.join(folder, "data.txt")).read()
    try:
        open(os.path.join(folder, "new.txt"), "w").close()
        wrote = "written"
    except OSError as exc:
        wrote = "refused: " + exc.strerror
    open("/tmp/mine", "w").close()
    return {"seen": seen, "wrote": wrote, "tmp": sorted(os.listdir("/tmp"))}
'''


@needs_sandbox
@pytest.mark.parametrize("fork_server", [True, False], ids=["zygote", "spawn"])
def test_a_checkout_under_tmp_stays_visible_and_read_only_in_the_sandbox(
    s3_server: S3Server, tmp_path: Path, fork_server: bool
) -> None:
    """The interpreter, packages and checkout found under /tmp (a checkout or a virtual
    environment made there) are bound back into the sandbox's private /tmp, read-only;
    here a folder of the test's stands for them."""
    folder = Path(tmp_path.resolve(), "checkout")
    folder.mkdir()
    (folder / "data.txt").write_text("from the host")
    if not str(folder).startswith("/tmp/"):
        pytest.skip(f"pytest's tmp_path {folder} is not under /tmp")
    with ThreadedEmulatorServer(state_dir=tmp_path / "state", s3_endpoint_url=s3_server.url,
                                sandbox=True, fork_server=fork_server) as server:
        server.runner._shown = [*server.runner._shown, str(folder)]
        client = boto3.client("lambda", endpoint_url=server.url, **CREDS)
        name = make(client, SHOWN)
        out = call(client, name, {"folder": str(folder)})[1]
    assert out["seen"] == "from the host"
    assert out["wrote"] == "refused: Read-only file system"
    assert "mine" in out["tmp"] and not (folder / "new.txt").exists()
    assert not Path("/tmp/mine").exists()


@needs_sandbox
def test_a_mode_0_delete_cannot_remove_a_users_file(lam: Any) -> None:
    keep = Path.home() / ".cache" / "mu" / "a-users-frame.png"
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_bytes(b"\x89PNG")
    try:
        out = call(lam, make(lam), {"action": "delete", "path": str(keep)})[1]
        assert out == "refused: Read-only file system" and keep.read_bytes() == b"\x89PNG"
    finally:
        keep.unlink()


# -------------------------------------------------------------------------- bad input


def test_the_runtime_api_refuses_an_unknown_request_id_and_keeps_serving(
    lam: Any, emulator: ThreadedEmulatorServer
) -> None:
    name = make(lam)
    port = int(call(lam, name, {})[1]["env"]["AWS_LAMBDA_RUNTIME_API"].split(":")[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for what in ("response", "error"):
        conn.request("POST", f"/2018-06-01/runtime/invocation/no-such-id/{what}", b"{}")
        answer = conn.getresponse()
        body = json.loads(answer.read())
        assert answer.status == 400 and body["errorType"] == "InvalidRequestID"
    conn.request("GET", "/2018-06-01/runtime/nothing")
    answer = conn.getresponse()
    assert answer.status == 404 and answer.read()
    conn.close()
    # A chunked body is refused, not taken for an empty response.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", "/2018-06-01/runtime/invocation/no-such-id/response")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    conn.send(b"2\r\n{}\r\n0\r\n\r\n")
    answer = conn.getresponse()
    assert answer.status == 411 and b"Content-Length" in answer.read()
    conn.close()
    assert call(lam, name, {})[1]["count"] == 2  # the environment serves on, warm


def test_an_environment_killed_between_next_and_response(
    lam: Any, emulator: ThreadedEmulatorServer
) -> None:
    import os
    import signal
    import threading

    name = make(lam, Timeout=60)
    other = make(lam)
    outcome: list[Any] = []
    caller = threading.Thread(target=lambda: outcome.append(
        call(lam, name, {"action": "sleep", "seconds": 50})))
    caller.start()
    assert wait_for(lambda: len(emulator.runner.pids()) == 1)
    pid = next(iter(emulator.runner.pids().values()))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    caller.join(timeout=60)
    resp, out = outcome[0]
    assert resp["FunctionError"] == "Unhandled" and out["errorType"] == "Runtime.ExitError"
    assert "Runtime exited" in out["errorMessage"]
    assert call(lam, other, {})[1]["count"] == 1  # every other function is served
    assert call(lam, name, {})[1]["count"] == 1
