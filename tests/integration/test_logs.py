"""``mu logs`` (and its older spelling ``mu emulator logs``) against a real moto server.

The events are put with boto3 exactly as Lambda writes them (log group
``/aws/lambda/FUNCTION``, stream ``YYYY/MM/DD/[$LATEST]<environment id>``, Lambda's
``START``/``END``/``REPORT`` lines around the handler's output), then ``mu logs`` runs as a
subprocess, as a user runs it. A running emulator is found through the registry every
serving emulator writes (:mod:`emulator.running`): the test writes such a record, in a
private ``XDG_CACHE_HOME``, pointing at the moto server. ``--follow`` is read line by line
with bounded waits and ended with SIGINT, as Ctrl-C ends it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from emulator import running
from emulator.s3 import S3Server

ROOT = Path(__file__).resolve().parents[2]
CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
WAIT = 60.0  # bound on any single wait (never reached when things work)
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def logs(s3_server: S3Server) -> Iterator[Any]:
    client = boto3.client("logs", endpoint_url=s3_server.endpoint_url, region_name="us-east-1",
                          **CREDS)
    yield client
    client.close()


def function_name() -> str:
    return f"fn-{next(_ids)}-{uuid.uuid4().hex[:6]}"


def stream_of(environment: str, when_ms: int) -> str:
    day = time.strftime("%Y/%m/%d", time.gmtime(when_ms / 1000))
    return f"{day}/[$LATEST]{environment}"


def put(logs: Any, function: str, stream: str, events: list[tuple[int, str]]) -> None:
    """Put ``(timestamp ms, message)`` events, creating the group and stream if needed."""
    group = f"/aws/lambda/{function}"
    for make, kwargs in ((logs.create_log_group, {}), (logs.create_log_stream,
                                                        {"logStreamName": stream})):
        with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
            make(logGroupName=group, **kwargs)
    logs.put_log_events(logGroupName=group, logStreamName=stream,
                        logEvents=[{"timestamp": t, "message": m} for t, m in events])


def invocation(request: str, t0: int, lines: list[str], cold: bool = False) -> list[tuple[int, str]]:
    """Lambda's lines for one invocation starting at ``t0`` ms, the handler's ``lines``
    between START and END."""
    init = "\tInit Duration: 100.00 ms" if cold else ""
    out = [(t0, f"START RequestId: {request} Version: $LATEST\n")]
    out += [(t0 + 1 + i, f"{line}\n") for i, line in enumerate(lines)]
    t = t0 + 1 + len(lines)
    out += [(t, f"END RequestId: {request}\n"),
            (t, f"REPORT RequestId: {request}\tDuration: 12.34 ms\tBilled Duration: 13 ms\t"
                f"Memory Size: 1536 MB\tMax Memory Used: 60 MB{init}\t\n")]
    return out


def mu(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mu.cli", *args], cwd=ROOT,
                          env=env or os.environ.copy(), capture_output=True, text=True,
                          timeout=120)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def now_ms() -> int:
    return int(time.time() * 1000)


def test_invocations_print_one_by_one_oldest_first(logs: Any, s3_server: S3Server) -> None:
    """Two environments ran at once: their lines interleave in time, not in the output."""
    fn, t = function_name(), now_ms() - 60_000
    a, b = stream_of("aaaa", t), stream_of("bbbb", t)
    put(logs, fn, a, [(t - 5, "init output of a\n"),
                      *invocation("r-1", t, ["one", "two"], cold=True),
                      *invocation("r-3", t + 20, ["warm again"])])
    put(logs, fn, b, invocation("r-2", t + 1, ["other env"], cold=True))
    done = mu(["logs", fn, "--endpoint-url", s3_server.endpoint_url])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "init output of a"
    starts = [line.split()[2] for line in lines if line.startswith("START")]
    assert starts == ["r-1", "r-2", "r-3"]
    first = lines.index("START RequestId: r-1 Version: $LATEST")
    assert lines[first:first + 5] == [
        "START RequestId: r-1 Version: $LATEST", "one", "two", "END RequestId: r-1",
        "REPORT RequestId: r-1\tDuration: 12.34 ms\tBilled Duration: 13 ms\tMemory Size: "
        "1536 MB\tMax Memory Used: 60 MB\tInit Duration: 100.00 ms\t"]
    assert lines[first + 5] == "START RequestId: r-2 Version: $LATEST"
    assert len(lines) == 1 + 5 + 4 + 4


def test_request_id_selects_that_invocation_from_start_to_report(
    logs: Any, s3_server: S3Server
) -> None:
    fn, t = function_name(), now_ms() - 60_000
    put(logs, fn, stream_of("e1", t), invocation("before", t, ["not mine"])
        + invocation("mine", t + 10, ["[INFO]\t2026-12-02T17:00:00.000Z\tmine\tlogged", "out"])
        + [(t + 20, "a thread printing after REPORT\n")]
        + invocation("after", t + 30, ["not mine either"]))
    # An asynchronous retry of the same request, in another environment.
    put(logs, fn, stream_of("e2", t), invocation("mine", t + 40, ["second attempt"]))
    done = mu(["logs", fn, "--request-id", "mine", "--endpoint-url", s3_server.endpoint_url])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "START RequestId: mine Version: $LATEST",
        "[INFO]\t2026-12-02T17:00:00.000Z\tmine\tlogged", "out", "END RequestId: mine",
        "REPORT RequestId: mine\tDuration: 12.34 ms\tBilled Duration: 13 ms\tMemory Size: "
        "1536 MB\tMax Memory Used: 60 MB\t",
        "START RequestId: mine Version: $LATEST", "second attempt", "END RequestId: mine",
        "REPORT RequestId: mine\tDuration: 12.34 ms\tBilled Duration: 13 ms\tMemory Size: "
        "1536 MB\tMax Memory Used: 60 MB\t",
    ]
    missing = mu(["logs", fn, "--request-id", "nope", "--endpoint-url", s3_server.endpoint_url])
    assert one_line_error(missing) == (
        f"mu: error: no invocation nope in /aws/lambda/{fn} at {s3_server.endpoint_url} "
        "(region us-east-1)")


def test_since_leaves_out_older_events(logs: Any, s3_server: S3Server) -> None:
    fn, t = function_name(), now_ms()
    put(logs, fn, stream_of("old", t), invocation("old", t - 3 * 3600_000, ["three hours ago"])
        + invocation("new", t - 60_000, ["a minute ago"]))
    done = mu(["logs", fn, "--since", "1h", "--endpoint-url", s3_server.endpoint_url])
    assert done.returncode == 0, done.stderr
    assert "a minute ago" in done.stdout and "three hours ago" not in done.stdout
    everything = mu(["logs", fn, "--endpoint-url", s3_server.endpoint_url])
    assert "three hours ago" in everything.stdout


@pytest.fixture
def registered(s3_server: S3Server, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A user's environment whose emulator registry names the moto server as a running
    emulator (this test's process, alive), with state dir ``tmp_path/state``."""
    cache = tmp_path / "cache"
    record = running.register(tmp_path / "state", "http://127.0.0.1:1", s3_server.endpoint_url,
                              registry=cache / "mu" / "emulators")
    assert record is not None
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        env.pop(var, None)  # a local read needs no credentials of the user's
    yield env
    running.unregister(record)


def test_local_finds_the_running_emulator(
    logs: Any, registered: dict[str, str], tmp_path: Path
) -> None:
    fn, t = function_name(), now_ms() - 60_000
    put(logs, fn, stream_of("env", t), invocation("req-a", t, ["from the handler"])
        + invocation("req-b", t + 10, ["again"]))
    done = mu(["logs", fn], registered)
    assert done.returncode == 0, done.stderr
    assert "from the handler" in done.stdout and "START RequestId: req-b" in done.stdout
    # The older spelling, with what users typed before: REQUEST_ID and --state-dir.
    old = mu(["emulator", "logs", fn, "req-a"], registered)
    assert old.returncode == 0, old.stderr
    assert "from the handler" in old.stdout and "req-b" not in old.stdout
    there = mu(["emulator", "logs", fn, "--state-dir", str(tmp_path / "state")], registered)
    assert there.returncode == 0 and "again" in there.stdout
    elsewhere = mu(["emulator", "logs", fn, "--state-dir", str(tmp_path / "other")], registered)
    assert one_line_error(elsewhere).startswith(
        f"mu: error: no emulator with state dir {tmp_path / 'other'} is running")
    unknown = mu(["logs", "never-invoked"], registered)
    assert one_line_error(unknown).startswith(
        "mu: error: no log group /aws/lambda/never-invoked at http://127.0.0.1:")


def test_problems_end_in_one_line(s3_server: S3Server, tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "empty-cache"),
           "HOME": str(tmp_path), "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_EC2_METADATA_DISABLED": "true"}
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION"):
        env.pop(var, None)
    nothing = mu(["logs", "f"], env)
    assert one_line_error(nothing).startswith("mu: error: no emulator is running")
    with_old_spelling = mu(["emulator", "logs", "f"], env)
    assert one_line_error(with_old_spelling).startswith("mu: error: no emulator is running")
    with socket_nobody_listens_on() as port:
        unreachable = mu(["logs", "f", "--endpoint-url", f"http://127.0.0.1:{port}"], env)
    assert f"cannot connect to http://127.0.0.1:{port}" in one_line_error(unreachable)
    no_creds = mu(["logs", "f", "--backend", "lambda", "--region", "us-east-1",
                   "--endpoint-url", s3_server.endpoint_url], env)
    assert "no usable AWS credentials" in one_line_error(no_creds)
    no_region = mu(["logs", "f", "--backend", "lambda"], env)
    assert one_line_error(no_region) == (
        "mu: error: no AWS region: pass --region or set AWS_DEFAULT_REGION")
    group = mu(["logs", "absent", "--backend", "lambda", "--region", "us-east-1",
                "--endpoint-url", s3_server.endpoint_url], {**env, **{
                    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}})
    assert one_line_error(group) == (
        f"mu: error: no log group /aws/lambda/absent at {s3_server.endpoint_url} (region "
        "us-east-1): the function has not been invoked there, or its name is wrong")
    bad_since = mu(["logs", "f", "--since", "ten minutes"], env)
    assert bad_since.returncode == 2 and "is not a duration" in bad_since.stderr


class socket_nobody_listens_on:
    """A loopback port bound but not listening: connecting to it is refused."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        port: int = self.sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


class Lines:
    """A subprocess's standard output, line by line, with bounded waits."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        self.thread = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def until(self, last: str) -> list[str]:
        """Lines up to and including ``last``."""
        got: list[str] = []
        while True:
            line = self.queue.get(timeout=WAIT)
            assert line is not None, f"output ended before {last!r}: {got}"
            got.append(line)
            if line == last:
                return got


@pytest.mark.parametrize("only", [None, "follow-me"], ids=["all", "request-id"])
def test_follow_prints_new_events_until_ctrl_c(
    logs: Any, s3_server: S3Server, only: str | None
) -> None:
    fn, t = function_name(), now_ms() - 30_000
    stream = stream_of("warm", t)
    put(logs, fn, stream, invocation("first", t, ["already there"]))
    args = ["logs", fn, "--follow", "--endpoint-url", s3_server.endpoint_url]
    if only:
        args += ["--request-id", only]
    proc = subprocess.Popen([sys.executable, "-m", "mu.cli", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = Lines(proc)
        if not only:
            assert lines.until("REPORT RequestId: first\tDuration: 12.34 ms\tBilled Duration: "
                               "13 ms\tMemory Size: 1536 MB\tMax Memory Used: 60 MB\t")[0] == (
                "START RequestId: first Version: $LATEST")
        later = now_ms()
        put(logs, fn, stream, invocation("other", later, ["not followed"])
            + invocation("follow-me", later + 10, ["new line"]))
        got = lines.until("new line")
        assert got[-2:] == ["START RequestId: follow-me Version: $LATEST", "new line"]
        assert ("not followed" in got) == (only is None)
        put(logs, fn, stream_of("cold", later), [
            (later + 20, "init of another env\n"),
            *invocation("follow-me", later + 30, ["retried elsewhere"])])
        got = lines.until("retried elsewhere")
        assert ("init of another env" in got) == (only is None)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and err == ""


def test_a_reader_that_stops_early_ends_it_quietly(logs: Any, s3_server: S3Server) -> None:
    """``mu logs f | head -1``: the pipe closes while mu writes; no traceback, status 0."""
    fn, t = function_name(), now_ms() - 60_000
    put(logs, fn, stream_of("long", t), [(t + i, f"line {i}\n") for i in range(3000)])
    done = subprocess.run(
        f"{sys.executable} -m mu.cli logs {fn} --endpoint-url {s3_server.endpoint_url}"
        " | head -1; echo \"status ${PIPESTATUS[0]}\"",
        shell=True, executable="/bin/bash", cwd=ROOT, capture_output=True, text=True,
        timeout=120)
    assert done.stdout == "line 0\nstatus 0\n" and done.stderr == "", done.stderr
